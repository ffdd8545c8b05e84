"""The quality guard: does a faster engine change a run's answers or its verdict?

    .venv/bin/python bench/engine_quality.py runs/quickstart-ner-finance-...        # every CTranslate2 type
    .venv/bin/python bench/engine_quality.py RUN --compute-types float32,int8

On the run's test split (the rows its evaluation generates), the tuned model answers greedily with torch
fp32 (the reference) and with CTranslate2 at each compute type. Prints, per engine: the share of answers
identical to torch fp32's, each metric and its difference from torch's, and the generation time. The
guard: at least 90% identical and the headline metric within 0.02 (entity F1 on the quickstart).
Writes bench/results/engine_quality.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SAME_SHARE, METRIC_TOLERANCE = 0.90, 0.02


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--compute-types", default=None, help="CTranslate2 types (default: all this CPU supports)")
    args = parser.parse_args()

    from domaintune.config.inference import InferenceConfig
    from domaintune.config.runtime import configure_threads, cpu_description
    from domaintune.core.chat import final_answer, prompt_text
    from domaintune.evaluation.metric_choice import choose_metrics
    from domaintune.evaluation.metrics import compute_metrics
    from domaintune.models.ctranslate2_library import ctranslate2
    from domaintune.models.generation import load_generator, weights_folders
    from domaintune.models.loading import load_tokenizer, load_trained_model
    from domaintune.storage.rundir import RunDir

    run = RunDir.open(args.run)
    recipe = run.recipe()
    config = recipe.evaluation
    threads = configure_threads(recipe.training)
    tokenizer = load_tokenizer(recipe.model, path=str(run.model))
    model = load_trained_model(recipe.model, run.model)
    rows = [row for row in run.read_split("test") if "messages" in row][: config.max_samples]
    metrics, _ = choose_metrics(config.metrics, run.read_split("train"), rows)
    prompts = [prompt_text(tokenizer, row["messages"]) for row in rows]
    references = [final_answer(row) for row in rows]
    kinds = args.compute_types.split(",") if args.compute_types else sorted(ctranslate2().get_supported_compute_types("cpu"))
    print(f"{run.root.name}: {len(rows)} test prompts, {threads} thread(s) on {cpu_description()}", flush=True)

    results, reference = [], None
    for engine, compute_type in [("torch", "float32"), *(("ctranslate2", kind) for kind in kinds)]:
        generator = load_generator(lambda: model, tokenizer, InferenceConfig(engine=engine, compute_type=compute_type),
                                   folders=weights_folders(recipe.model, run.model), bf16=False, exact=True,
                                   threads=threads)
        started = time.perf_counter()
        answers = generator.generate(prompts, config.max_new_tokens, config.batch_size)
        seconds = time.perf_counter() - started
        values = compute_metrics(metrics, answers, references)
        reference = reference or {"answers": answers, "metrics": values}
        same = sum(a == b for a, b in zip(answers, reference["answers"])) / len(answers)
        change = {key: round(value - reference["metrics"][key], 4) for key, value in values.items()}
        headline = metrics[0] if metrics[0] in values else next(iter(values))
        passed = same >= SAME_SHARE and abs(change[headline]) <= METRIC_TOLERANCE
        results.append({"engine": engine, "compute_type": compute_type, "seconds": round(seconds, 1),
                        "identical_to_torch_fp32": round(same, 3), "metrics": values, "change": change,
                        "guard": "pass" if passed else "fail"})
        print(f"  {engine:11} {compute_type:12} {seconds:6.1f} s, {same:.0%} identical, {headline} "
              f"{values[headline]:.3f} ({change[headline]:+.3f}): {results[-1]['guard']}", flush=True)
    out = Path(__file__).parent / "results" / "engine_quality.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": cpu_description(), "run": str(run.root), "metrics": metrics,
                               "results": results}, indent=2))
    print(f"Wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
