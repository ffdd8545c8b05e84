"""The head method and the classify, contrastive, fewshot and multitask objectives, on tiny models."""
from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import write_jsonl
from safetensors.torch import load_file

from domaintune import api
from domaintune.core.errors import DomaintuneError
from domaintune.data.token_labels import ListMismatch, bio_tags, spans_from_list, spans_from_tags

SPLIT = {"validation": 0.15, "test": 0.15}
TRAINING = {"batch_size": 8, "lr": 1e-3, "eval_every": 5, "save_every": 5, "log_every": 1, "threads": 1,
            "precision": "fp32", "warmup_ratio": 0.0, "early_stopping": None, "keep_checkpoints": 1}


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from domaintune.models.registry import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("minilm-l6"))


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, minilm_tokenizer):
    """A 2-layer random BERT (hidden 32) with the MiniLM tokenizer."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(minilm_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    return folder


def losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in run.metrics.read_text().splitlines() if '"loss"' in line]


def recipe(tmp_path, model, rows, objective, method, **training) -> dict:
    return {"name": "t", "output_dir": str(tmp_path / "runs"), "model": {"name": str(model)},
            "data": {"train": [str(write_jsonl(tmp_path / "train.jsonl", rows))], "max_tokens": 64, "split": SPLIT,
                     "near_dedup": {"enabled": False}},
            "method": method, "objective": objective, "training": {**TRAINING, **training},
            "evaluation": {"max_samples": 8, "max_new_tokens": 8, "forgetting": False, "bootstrap_resamples": 200},
            "export": {"dtype": "float32"}}


# --- token labels from NAME - TYPE lists ------------------------------------------------------------


def test_list_to_bio_tags_match_spans_exactly(minilm_tokenizer):
    text = "SILICON VALLEY BANK, a California bank, and Bank of California; California law."
    answer = ("[SILICON VALLEY BANK - ORGANIZATION, California - LOCATION, bank - ORGANIZATION, "
              "Bank of California - ORGANIZATION, California - LOCATION]")
    spans = spans_from_list(text, answer)
    assert [(text[s["start"]:s["end"]], s["start"]) for s in spans] == [
        ("SILICON VALLEY BANK", 0), ("California", 23), ("bank", 34), ("Bank of California", 44), ("California", 64)]
    encoded = minilm_tokenizer(text, return_offsets_mapping=True)
    tags = bio_tags(encoded["offset_mapping"], spans)
    tokens = minilm_tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert list(zip(tokens, tags))[1:4] == [("silicon", "B-ORGANIZATION"), ("valley", "I-ORGANIZATION"), ("bank", "I-ORGANIZATION")]
    assert [t for t in tags if t and t.startswith("B-")].count("B-LOCATION") == 2  # both Californias, the first and the last
    assert spans_from_tags(encoded["offset_mapping"], tags) == spans


@pytest.mark.parametrize("answer, reason", [
    ("[Paris - LOCATION]", "'Paris' does not occur in the text"),
    ("[Acme - ORGANIZATION, Acme - ORGANIZATION]", "'Acme' is listed 2 times but occurs fewer times"),
    ("[Acme]", "has no ' - TYPE'"),
])
def test_list_names_not_in_the_text_are_rejected_with_the_reason(answer, reason):
    with pytest.raises(ListMismatch, match=reason):
        spans_from_list("Acme Corp. lends to Bob.", answer)


def test_spans_format_checks_offsets():
    from domaintune.config import DataConfig
    from domaintune.data.formats import RowError, to_canonical

    row = to_canonical({"text": "Bob met Acme.", "entities": [{"start": 8, "end": 12, "label": "org"}]}, "spans", DataConfig())
    assert row["messages"][-1]["content"] == "[Acme - ORG]" and row["entities"][0]["start"] == 8
    with pytest.raises(RowError, match="not a span"):
        to_canonical({"text": "Bob", "entities": [{"start": 2, "end": 9, "label": "x"}]}, "spans", DataConfig())


# --- classify + head ----------------------------------------------------------------------------------


def sentiment_rows(n=72):
    words = {"positive": ["great", "superb", "lovely"], "negative": ["awful", "dreadful", "bad"]}
    rng = random.Random(0)
    return [{"text": f"item {i} was {rng.choice(words[label])}", "label": label}
            for i in range(n) for label in ["positive", "negative"][i % 2:i % 2 + 1]]


def test_head_only_trains_the_head_and_reloads(tmp_path, tiny_encoder_dir):
    from transformers import AutoModelForSequenceClassification, BertModel

    run = api.run(recipe(tmp_path, tiny_encoder_dir, sentiment_rows(), {"name": "classify"},
                         {"name": "head", "train": "head"}, max_steps=30, lr=5e-2))
    trained = losses(run)
    assert sum(trained[-5:]) / 5 < sum(trained[:5]) / 5
    saved = load_file(str(run.model / "model.safetensors"))
    base = BertModel.from_pretrained(tiny_encoder_dir).state_dict()
    body = {k.removeprefix("bert."): v for k, v in saved.items() if k.startswith("bert.")}
    assert body and all(torch.equal(body[k], base[k]) for k in body if k in base)  # the body stayed bit-identical
    merged = AutoModelForSequenceClassification.from_pretrained(run.export / "merged").eval()
    assert merged.config.id2label == {0: "negative", 1: "positive"}
    results = json.loads((run.eval / "results.json").read_text())
    assert results["models"]["base"]["model"].startswith("majority class")
    assert (run.root / "report.html").exists()
    from domaintune.objectives.classify import load_trained

    ids = torch.tensor([[101, 2307, 102]])
    assert torch.equal(load_trained(run.recipe(), run.model).eval()(input_ids=ids).logits, merged(input_ids=ids).logits)


def test_token_head_with_lora_on_a_causal_lm(tmp_path, tiny_model_dir):
    names = ["Acme", "Globex", "Initech", "Umbrella"]
    rows = [{"messages": [{"role": "user", "content": f"Loan {i} from {names[i % 4]} to Bob."},
                          {"role": "assistant", "content": f"[{names[i % 4]} - ORGANIZATION]"}]} for i in range(60)]
    rows.append({"messages": [{"role": "user", "content": "Loan from nobody."},
                              {"role": "assistant", "content": "[Zed - ORGANIZATION]"}]})
    run = api.run(recipe(tmp_path, tiny_model_dir, rows, {"name": "classify", "task": "token"},
                         {"name": "head", "train": "lora", "r": 4, "alpha": 8, "dropout": 0.0}, max_steps=20, lr=5e-3))
    trained = losses(run)
    assert trained[-1] < trained[0]
    rejected = [json.loads(line) for line in (run.data / "classify_rejected.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejected if "Zed" in json.dumps(r)] == ["entity 'Zed' does not occur in the text"] or \
        all("Zed" not in json.dumps(r) for r in rejected)  # the Zed row may have been split off to an unused part
    keys = load_file(str(run.model / "adapter_model.safetensors"))
    assert keys and all("lora_" in k or ".score." in k for k in keys)  # only LoRA and the head are saved: the rest is the base
    assert "entity_f1" in json.loads((run.eval / "results.json").read_text())["models"]["tuned"]["metrics"]
    assert (run.export / "adapter" / "labels.json").exists() and (run.export / "merged" / "labels.json").exists()


def test_head_needs_classify():
    with pytest.raises(DomaintuneError, match="method head works with objective classify only"):
        api.load({"method": {"name": "head"}})
    with pytest.raises(DomaintuneError, match="objective classify trains with method head"):
        api.load({"objective": {"name": "classify"}})


# --- contrastive -------------------------------------------------------------------------------------


def test_contrastive_trains_and_exports_an_embedding_model(tmp_path, tiny_encoder_dir):
    from sentence_transformers import SentenceTransformer

    topics = ["rates", "collateral", "covenants", "default", "interest", "fees"]
    rows = [{"anchor": f"question {i} about {topics[i % 6]}", "positive": f"answer on {topics[i % 6]} number {i}"}
            for i in range(60)]
    run = api.run(recipe(tmp_path, tiny_encoder_dir, rows, {"name": "contrastive"}, {"name": "full"}, max_steps=12, lr=1e-3))
    results = json.loads((run.eval / "results.json").read_text())
    assert set(results["models"]["tuned"]["metrics"]) == {"recall@1", "recall@5", "recall@10", "mrr@10"}
    first, last = json.loads(run.metrics.read_text().splitlines()[0]), losses(run)
    assert last[-1] < last[0], first
    exported = SentenceTransformer(str(run.export / "embedding"), device="cpu")
    again = SentenceTransformer(str(run.model), device="cpu")
    assert torch.equal(exported.encode(["rates"], convert_to_tensor=True), again.encode(["rates"], convert_to_tensor=True))


# --- fewshot -----------------------------------------------------------------------------------------


def test_fewshot_samples_shots_per_label():
    from domaintune.objectives.fewshot import sample_shots

    rows = [{"label": label, "i": i} for i in range(20) for label in ("a", "b", "c")] + [{"label": "d", "i": 0}]
    chosen, unused = sample_shots(rows, 4, seed=1)
    assert sorted(r["label"] for r in chosen) == ["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["d"]
    assert len(chosen) + len(unused) == len(rows)


def test_setfit_head_saves_as_safetensors_and_reloads(tmp_path):
    from domaintune.config import ModelConfig
    from domaintune.objectives.fewshot import load_setfit, save_setfit, setfit_model

    texts = ["great film", "loved it", "awful film", "hated it"]
    model = setfit_model(ModelConfig(name="minilm-l6"), ["neg", "pos"])
    model.model_head.fit(model.model_body.encode(texts), [1, 1, 0, 0])
    save_setfit(model, tmp_path, ["neg", "pos"])
    assert not list(tmp_path.glob("*.pkl"))
    again = load_setfit(tmp_path)
    assert list(again.predict(texts)) == list(model.predict(texts)) == ["pos", "pos", "neg", "neg"]


class OpensAFile:
    """Unpickling this creates `path`: proof that a pickle from the model folder was run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_pickled_setfit_head_in_the_model_folder_is_never_run(tmp_path, tiny_encoder_dir):
    import pickle
    import shutil

    model = tmp_path / "setfit-model"
    shutil.copytree(tiny_encoder_dir, model)
    ran = tmp_path / "the-pickle-ran"
    (model / "model_head.pkl").write_bytes(pickle.dumps(OpensAFile(ran)))
    rows = [{"text": f"note {i} about {word}", "label": label}
            for i in range(20) for word, label in [(("cash", "money"), ("city", "place"))[i % 2]]]
    data = recipe(tmp_path, model, rows, {"name": "fewshot", "mode": "setfit", "shots": 4}, {"name": "full"}, max_steps=2)
    with pytest.raises(DomaintuneError, match=r"model_head\.pkl.*pickle"):
        api.train(data)
    assert not ran.exists()


def test_the_setfit_encoder_is_loaded_with_the_model_section(monkeypatch, tiny_encoder_dir):
    import sentence_transformers

    from domaintune.config import ModelConfig
    from domaintune.objectives.fewshot import setfit_model

    seen = {}
    real = sentence_transformers.SentenceTransformer

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **{**kwargs, "revision": None})  # a local folder has no revisions to pick from

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", recording)
    model = setfit_model(ModelConfig(name=str(tiny_encoder_dir), revision="v1.0", trust_remote_code=True), ["a", "b"])
    assert seen["revision"] == "v1.0" and seen["trust_remote_code"] is True
    assert model.labels == ["a", "b"] and not hasattr(model.model_head, "coef_")  # a fresh, untrained head


def test_fewshot_sft_is_regularised_and_compared_with_kshot_prompting(tmp_path, tiny_model_dir):
    rows = [{"text": f"note {i} about {word}", "label": label}
            for i in range(30) for word, label in [(("cash", "money"), ("city", "place"))[i % 2]]]
    data = recipe(tmp_path, tiny_model_dir, rows, {"name": "fewshot", "shots": 4, "max_steps": 6, "eval_every": 3},
                  {"name": "lora", "r": 2, "alpha": 4, "dropout": 0.0}, lr=1e-2)
    run = api.run(data)
    assert len((run.data / "train.jsonl").read_text().splitlines()) == 8
    summary = json.loads((run.model / "training.json").read_text())
    assert summary["global_step"] <= 6
    results = json.loads((run.eval / "results.json").read_text())
    assert results["models"]["base"]["model"].endswith("8-shot prompt") and "accuracy" in results["models"]["tuned"]["metrics"]


# --- multitask ---------------------------------------------------------------------------------------


def test_multitask_mixes_by_weight_and_reports_each_task(tmp_path, tiny_model_dir, qa_rows):
    labelled = [{"text": f"word {i}", "label": ["x", "y"][i % 2]} for i in range(40)]
    data = recipe(tmp_path, tiny_model_dir, qa_rows, {"name": "multitask", "tasks": [
        {"name": "ner", "train": [str(tmp_path / "train.jsonl")], "weight": 2, "tag": "[NER]", "metrics": ["entity_f1"]},
        {"name": "label", "train": [str(write_jsonl(tmp_path / "labels.jsonl", labelled))], "weight": 0.5,
         "metrics": ["accuracy"]},
    ]}, {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0}, max_steps=8, lr=2e-2)
    run = api.run(data)
    train = [json.loads(line) for line in (run.data / "train.jsonl").read_text().splitlines()]
    tasks = {name: len(json.loads((run.data / "tasks" / name / "data_card.json").read_text())["splits"]) for name in ("ner", "label")}
    counts = {name: sum(r["task"] == name for r in train) for name in ("ner", "label")}
    card = json.loads((run.data / "data_card.json").read_text())
    assert counts["ner"] == 2 * card["tasks"]["ner"]["train"] and counts["label"] == round(card["tasks"]["label"]["train"] / 2), tasks
    assert all(r["messages"][-2]["content"].startswith("[NER] ") for r in train if r["task"] == "ner")
    results = json.loads((run.eval / "results.json").read_text())
    assert set(results["tasks"]) == {"ner", "label"}
    assert {"ner: entity_f1", "label: accuracy"} <= set(results["models"]["tuned"]["metrics"])
    assert "test · ner" in results["models"]["tuned"]["loss"]
    assert losses(run)[-1] < losses(run)[0]


def test_a_regression_head_gets_intervals_and_a_lower_mse_is_better():
    from types import SimpleNamespace

    from domaintune.evaluation.bootstrap import paired_comparison
    from domaintune.objectives.classify import scores

    references = [float(i % 5) for i in range(40)]
    base_metrics, base_stats = scores("regression", [2.0] * 40, references)  # the training mean
    tuned_metrics, tuned_stats = scores("regression", [r + (0.3 if i % 2 else -0.3) for i, r in enumerate(references)],
                                        references)
    recipe = SimpleNamespace(seed=0, evaluation=SimpleNamespace(confidence=0.95, bootstrap_resamples=500))
    comparison = paired_comparison(recipe, base_stats, tuned_stats)["comparison"]
    # The item statistics give back the reported values, and a fall of the error is an improvement.
    for key in ("r2", "mse"):
        assert comparison[key]["base"] == pytest.approx(base_metrics[key])
        assert comparison[key]["tuned"] == pytest.approx(tuned_metrics[key])
    assert comparison["mse"]["high"] < 0 and comparison["mse"]["verdict"] == "better"
    assert comparison["r2"]["low"] > 0 and comparison["r2"]["verdict"] == "better"
