"""Sentence-embedding fine-tuning with sentence-transformers: MultipleNegativesRankingLoss on
(anchor, positive) pairs, every other positive in the batch serving as a negative.

Pairs come from `pairs` rows (anchor, positive) or any conversation (the question and its answer),
or, for labelled rows, from rows sharing a label (each row paired with the next of its label).
Evaluation: retrieval on the held-out test pairs, each anchor ranking all test positives by cosine
similarity: recall@1/5/10 and MRR@10, base encoder vs tuned. The result is a sentence-transformers
model folder (export/embedding).
"""
from __future__ import annotations

import shutil
from collections import defaultdict

from rich.console import Console

from domaintune.config.objectives import ContrastiveConfig
from domaintune.config.runtime import configure_threads, use_bf16
from domaintune.core.chat import final_answer, last_user_turn
from domaintune.core.errors import DomaintuneError
from domaintune.evaluation.base_vs_tuned import write_results
from domaintune.evaluation.bootstrap import item_scores, mean_item_stats, paired_comparison
from domaintune.models.loading import load_sentence_transformer
from domaintune.storage.rundir import RunDir
from domaintune.training.checkpoints import atomic_trainer, save_final
from domaintune.training.trainer import count_parameters, trainer_callbacks, training_arguments

SUMMARY = "sentence embeddings (sentence-transformers, in-batch negatives) for search and retrieval; recall@k and MRR"
Config = ContrastiveConfig  # the registry and the recipe know an objective by its Config
K = (1, 5, 10)


def pairs(rows: list[dict], pairs_from: str) -> list[tuple[str, str]]:
    """(anchor, positive) pairs of a split."""
    labelled = any(row.get("label") is not None for row in rows)
    if pairs_from == "labels" or (pairs_from == "auto" and labelled):
        groups: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            if row.get("label") is not None:
                groups[row["label"]].append(last_user_turn(row["messages"]))
        # Each text with the next of its label (the last with the first): every text is an anchor once.
        return [(texts[i], texts[(i + 1) % len(texts)]) for texts in groups.values() if len(texts) > 1
                for i in range(len(texts))]
    return [(last_user_turn(row["messages"]), final_answer(row)) for row in rows]


def load_encoder(recipe, path: str | None = None):
    return load_sentence_transformer(recipe.model, path)


def split_pairs(run: RunDir, split: str, recipe) -> list[tuple[str, str]]:

    return pairs(run.read_split(split), recipe.objective.pairs_from)


def train(run: RunDir, resume: bool = False, callbacks: list | None = None, console: Console | None = None) -> dict:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers import PrinterCallback, set_seed

    console = console or Console(stderr=True)
    recipe = run.recipe()
    threads = configure_threads(recipe.training)
    set_seed(recipe.seed)
    train_pairs, validation_pairs = split_pairs(run, "train", recipe), split_pairs(run, "validation", recipe)
    if not train_pairs:
        raise DomaintuneError(f"{run.data / 'train.jsonl'}: no (anchor, positive) pairs (labelled rows need two of a label)")
    model = load_encoder(recipe)
    model.max_seq_length = min(model.max_seq_length or recipe.data.max_tokens, recipe.data.max_tokens)
    as_set = lambda found: Dataset.from_dict({"anchor": [a for a, _ in found], "positive": [p for _, p in found]})  # noqa: E731
    has_validation = bool(validation_pairs)
    args = training_arguments(
        recipe, run, has_validation, use_bf16(recipe), cls=SentenceTransformerTrainingArguments,
        # A duplicate text in a batch would be its own "negative"; rows are texts, not token ids.
        batch_sampler=BatchSamplers.NO_DUPLICATES, train_sampling_strategy="random",
        include_num_input_tokens_seen="no", label_names=[], neftune_noise_alpha=None,
    )
    parameters = count_parameters(model)
    console.print(f"[bold]contrastive[/] on {recipe.model.name}: {parameters['trainable']:,} parameters · "
                  f"{len(train_pairs)} train pairs · {threads} thread(s)")
    trainer = atomic_trainer(SentenceTransformerTrainer)(
        model=model, args=args, train_dataset=as_set(train_pairs),
        eval_dataset=as_set(validation_pairs) if has_validation else None,
        loss=MultipleNegativesRankingLoss(model),
        callbacks=trainer_callbacks(run, recipe, args, has_validation, console, callbacks),
    )
    trainer.remove_callback(PrinterCallback)
    checkpoint = run.last_checkpoint(console) if resume else None
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    save_final(trainer, run, lambda folder: model.save_pretrained(str(folder), safe_serialization=True))
    return run.write_training_summary({
        "method": recipe.method.name, "objective": "contrastive", "global_step": trainer.state.global_step,
        "train_loss": output.training_loss, "best_eval_loss": trainer.state.best_metric,
        "train_pairs": len(train_pairs), "validation_pairs": len(validation_pairs),
        "parameters": parameters, "threads": threads, "runtime_seconds": output.metrics.get("train_runtime"),
    })


def retrieval_ranks(model, test_pairs: list[tuple[str, str]]):
    """Per anchor: the rank (1 = first) of the best relevant text among all distinct test positives.
    A positive equal to the anchor's own text is not a candidate for that anchor."""
    import numpy as np

    corpus = list(dict.fromkeys(positive for _, positive in test_pairs))
    relevant: dict[str, set[int]] = defaultdict(set)
    index = {text: i for i, text in enumerate(corpus)}
    for anchor, positive in test_pairs:
        relevant[anchor].add(index[positive])
    anchors = list(relevant)
    scores = model.similarity(model.encode(anchors, convert_to_tensor=True), model.encode(corpus, convert_to_tensor=True)).numpy()
    ranks = []
    for row, anchor in zip(scores, anchors):
        if anchor in index and index[anchor] not in relevant[anchor]:
            row[index[anchor]] = -np.inf
        order = np.argsort(-row, kind="stable")
        ranks.append(1 + min(int(np.where(order == i)[0][0]) for i in relevant[anchor]))
    return np.array(ranks)


def retrieval_stats(ranks) -> dict:
    """recall@k and MRR@10 per anchor, as bootstrap item statistics."""
    stats = {f"recall@{k}": mean_item_stats((ranks <= k).astype(float)) for k in K}
    stats["mrr@10"] = mean_item_stats((ranks <= 10) / ranks)
    return stats


def evaluate(run: RunDir, console: Console | None = None, harness: bool | None = None) -> dict:
    import numpy as np

    console = console or Console(stderr=True)
    recipe = run.recipe()
    configure_threads(recipe.training)
    test_pairs = split_pairs(run, "test", recipe)
    if len(test_pairs) < 2:
        raise DomaintuneError(f"{run.data / 'test.jsonl'}: retrieval needs at least two test pairs")
    results: dict = {"n_test": len(test_pairs), "models": {}}
    stats = {}
    for name, model in (("base", load_encoder(recipe)), ("tuned", load_encoder(recipe, str(run.model)))):
        ranks = retrieval_ranks(model, test_pairs)
        stats[name] = retrieval_stats(ranks)
        metrics = {key: float(np.mean(item_scores(value))) for key, value in stats[name].items()}
        results["models"][name] = {"model": recipe.model.name if name == "base" else str(run.model),
                                   "metrics": metrics, "loss": {}}
        console.print(f"{name}: " + ", ".join(f"{key} {value:.3f}" for key, value in metrics.items()))
    results.update(paired_comparison(recipe, stats["base"], stats["tuned"]))
    samples = [{"prompt": anchor, "reference": positive, "base": None, "tuned": None} for anchor, positive in test_pairs]
    return write_results(run, results, samples, console)


def export(run: RunDir, console: Console | None = None) -> dict[str, str]:
    """export/embedding: the tuned sentence-transformers folder (safetensors), loadable with SentenceTransformer(path)."""
    console = console or Console(stderr=True)
    target = run.export / "embedding"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(run.model, target, ignore=shutil.ignore_patterns("training.json"))
    console.print(f"Exported embedding: {target}")
    return {"embedding": str(target)}
