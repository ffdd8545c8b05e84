"""Training throughput: plain Hugging Face defaults vs domaintune's engine, measured in one run.

Fine-tunes smollm2-135m-instruct on the same instruction rows (financial NER, mixed lengths,
prompt tokens masked) with the same hyper-parameters, each configuration in its own process so
peak RSS is its own:

  hf-fp32        plain transformers Trainer + peft, CPU defaults: fp32, padding to the longest
  hf-bf16        the same with bf16=True (what a user who knows the flag gets)
  domaintune     domaintune.train with its defaults (bf16 autocast where the CPU has it,
                 padding-free packing, LM head on supervised positions only, threads from the machine,
                 LoRA layers fused into one autograd function when training in fp32)
  domaintune-peft-lora  (CPUs without bf16) the same with `training.fused_lora: false`: peft's forward

for LoRA (r=8, all linear layers) and for full fine-tuning. Prints real (non-padding) tokens/s,
seconds/step, peak RSS, first/last loss, threads, model FLOPs utilisation against a matmul peak
measured here, and the ratios to the baselines; writes bench/results/train_throughput.json.

With `--device cuda` the baselines run in bf16 on the GPU (hf-bf16 only: nobody trains there in fp32),
the memory column is the peak GPU memory allocated (torch.cuda.max_memory_allocated) instead of RSS,
the MFU is against the GPU's measured bf16 matmul peak, and the model has SmolLM2-135M's architecture
with random weights (speed does not depend on the weights; nothing comes from the hub).

    python bench/train_throughput.py [--device cpu|cuda] [--steps 24] [--batch 4] [--rows 400]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from domaintune.config.runtime import cpu_description, cpu_has_bf16

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"
MAX_TOKENS = 512
WARMUP_STEPS = 2  # first steps pay one-off costs (allocations, oneDNN kernel selection)


def matmul_peak_gflops(dtype_name: str, threads: int, size: int = 1024, seconds: float = 3.0, device: str = "cpu") -> float:
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype, device=device), torch.randn(size, size, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    synchronize(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
        if runs % 50 == 0:
            synchronize(device)  # a GPU queues matmuls far faster than it runs them
    synchronize(device)
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e9


def require_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device here")


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


class StepTimer(TrainerCallback):
    """Records the wall time at every step end. On a GPU the host runs ahead of the device, so the two
    marks the figures use (end of warm-up, last step) wait for it; the others do not, so the timer
    adds no synchronisation of its own to the steps it measures."""

    def __init__(self, device: str = "cpu"):
        self.marks: list[float] = []
        self.device = device

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (WARMUP_STEPS, state.max_steps):
            synchronize(self.device)
        self.marks.append(time.perf_counter())


def steady_state(marks: list[float], real_tokens_per_step: float) -> tuple[float, float]:
    """(real tokens per second, seconds per step) after the warm-up steps.

    Real tokens are counted the same way for every configuration: the mean non-padding length of
    the training rows times the rows per step (both samplers draw from the same rows)."""
    seconds_per_step = (marks[-1] - marks[WARMUP_STEPS - 1]) / (len(marks) - WARMUP_STEPS)
    return real_tokens_per_step / seconds_per_step, seconds_per_step


def losses(log_history: list[dict]) -> list[float]:
    return [entry["loss"] for entry in log_history if "loss" in entry]


def run_hf_baseline(run_dir: Path, method: str, steps: int, batch: int, lr: float, bf16: bool, device: str,
                    callbacks: tuple = ()) -> dict:
    """What a user gets from the Hugging Face docs: Trainer + peft, default settings for the device."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from domaintune.storage.rundir import RunDir
    from domaintune.training.trainer import encode_split

    model_dir = json.loads((run_dir / "bench.json").read_text())["model_path"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_set = encode_split(RunDir(run_dir).read_split("train"), tokenizer, MAX_TOKENS)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
    timer = StepTimer(device)
    args = TrainingArguments(
        output_dir=str(run_dir / "hf"), per_device_train_batch_size=batch, max_steps=steps, learning_rate=lr,
        logging_steps=log_every(device), save_strategy="no", report_to="none", bf16=bf16, use_cpu=device == "cpu",
        seed=0, disable_tqdm=True, lr_scheduler_type="constant",
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_set,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True), callbacks=[timer, *callbacks])
    trainer.train()
    return {"marks": timer.marks, "losses": losses(trainer.state.log_history), "threads": torch.get_num_threads(),
            "bf16": bf16}


def log_every(device: str) -> int:
    # Every step on a CPU (the loss curve for free); on a GPU logging reads the loss back, a sync per log.
    return 1 if device == "cpu" else 5


def run_domaintune(run_dir: Path, method: str, steps: int, batch: int, lr: float, device: str,
                   packing: bool = True, fused_lora: bool = True, callbacks: tuple = ()) -> dict:
    import torch

    import domaintune
    from domaintune.storage.rundir import RunDir

    recipe = RunDir(run_dir).recipe().model_dump(mode="json")
    recipe["method"] = {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0} if method == "lora" else {"name": "full"}
    recipe["training"].update(max_steps=steps, batch_size=batch, lr=lr, log_every=log_every(device),
                              lr_scheduler="constant", warmup_ratio=0.0, packing=packing,
                              fused_lora=fused_lora)
    (run_dir / "recipe.yaml").write_text(json.dumps(recipe))  # YAML is a superset of JSON
    timer = StepTimer(device)
    domaintune.train(run_dir, callbacks=[timer, *callbacks])
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # The precision it chose for this CPU (fp32 where there is no native bf16), for the MFU's peak.
    return {"marks": timer.marks, "losses": losses(history), "threads": torch.get_num_threads(),
            "bf16": RunDir(run_dir).training_summary()["bf16"]}


def mean_row_tokens(run_dir: Path) -> float:
    from transformers import AutoTokenizer

    from domaintune.storage.rundir import RunDir
    from domaintune.training.trainer import encode_split

    tokenizer = AutoTokenizer.from_pretrained(json.loads((run_dir / "bench.json").read_text())["model_path"])
    ids = encode_split(RunDir(run_dir).read_split("train"), tokenizer, MAX_TOKENS)["input_ids"]
    return sum(map(len, ids)) / len(ids)


def worker(args) -> None:
    """One configuration in this process; prints its result as JSON on the last line."""
    run_dir = Path(args.worker_dir)
    if args.config.startswith("domaintune"):
        result = run_domaintune(run_dir, args.method, args.steps, args.batch, args.lr, args.device,
                                fused_lora=args.config != "domaintune-peft-lora")
    else:
        result = run_hf_baseline(run_dir, args.method, args.steps, args.batch, args.lr, bf16=args.config == "hf-bf16",
                                 device=args.device)
    tokens_per_second, seconds_per_step = steady_state(result["marks"], mean_row_tokens(run_dir) * args.batch)
    print(json.dumps({
        "tokens_per_second": tokens_per_second, "seconds_per_step": seconds_per_step, **peak_memory(args.device),
        "first_loss": result["losses"][0], "last_loss": result["losses"][-1],
        "last_loss_mean5": statistics.mean(result["losses"][-5:]), "threads": result["threads"], "bf16": result["bf16"],
    }))


def peak_memory(device: str) -> dict:
    """This process's peak: GPU memory allocated on a GPU (host RSS says nothing there), else RSS."""
    import torch

    if device == "cuda":
        return {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def prepare(rows: int, workdir: Path, device: str, tiny: bool = False) -> Path:
    """A prepared run directory (data split and card) shared by every configuration: the bundled
    model on a CPU; on a GPU its architecture with random weights (speed is what is measured);
    with `tiny`, a 2-layer cut of it (what is left is the per-step work around the model)."""
    from rich.console import Console

    import domaintune
    from domaintune.models.registry import resolve_model_path
    from domaintune.workflows.quickstart import ner_finance_dataset

    source = ner_finance_dataset(Console(stderr=True)).read_text().splitlines()[:rows]
    data = workdir / "rows.jsonl"
    data.write_text("\n".join(source) + "\n")
    recipe = {
        "name": "bench", "output_dir": str(workdir / "runs"), "seed": 0,  # the baselines sample with seed 0 too
        "data": {"train": [str(data)], "max_tokens": MAX_TOKENS, "split": {"validation": 0.0, "test": 0.0}},
        "training": {"early_stopping": None, "save_every": 10_000, "eval_every": 10_000},
    }
    if device == "cuda" or tiny:
        from gpu_check import random_smollm2

        recipe["model"] = {"name": str(random_smollm2(workdir / "model", tiny=tiny))}
    run, _ = domaintune.prepare_data(recipe)
    model_path = recipe["model"]["name"] if "model" in recipe else resolve_model_path("smollm2-135m-instruct")
    (run.root / "bench.json").write_text(json.dumps({"model_path": model_path}))
    return run.root


def copy_run(template: Path, name: str) -> Path:
    import shutil

    target = template.parent / name
    shutil.copytree(template, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="default: 24 on cpu, 40 on cuda")
    parser.add_argument("--batch", type=int, default=None, help="default: 4 on cpu, 16 on cuda")
    parser.add_argument("--rows", type=int, default=None, help="default: 400 on cpu, 687 (all) on cuda")
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--worker-dir", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    require_device(args.device)
    cuda = args.device == "cuda"
    args.steps, args.batch, args.rows = (args.steps or (40 if cuda else 24), args.batch or (16 if cuda else 4),
                                         args.rows or (687 if cuda else 400))
    if args.worker_dir:
        return worker(args)

    workdir = Path(tempfile.mkdtemp(prefix="dt-bench-"))
    template = prepare(args.rows, workdir, args.device)
    # A CPU without native bf16 only emulates it (several times slower than fp32): no user trains that way,
    # so there the fp32 baseline is the only one.
    cpu_baselines = ["hf-fp32", "hf-bf16"] if cpu_has_bf16() else ["hf-fp32"]
    # Training in fp32, domaintune fuses each LoRA layer into one autograd function; its peft-forward
    # twin shows what that is worth (under bf16 both take peft's forward, so the row is left out).
    unfused = [] if cpu_has_bf16() else ["domaintune-peft-lora"]
    configs = ({"lora": ["hf-bf16", "domaintune"], "full": ["hf-bf16", "domaintune"]} if cuda
               else {"lora": [*cpu_baselines, *unfused, "domaintune"], "full": ["hf-fp32", "domaintune"]})
    learning_rates = {"lora": 1e-3, "full": 5e-5}
    results: dict = {}
    for method in args.methods.split(","):
        for config in configs[method]:
            run_dir = copy_run(template, f"{method}-{config}")
            command = [sys.executable, __file__, "--worker-dir", str(run_dir), "--config", config, "--method", method,
                       "--steps", str(args.steps), "--batch", str(args.batch), "--lr", str(learning_rates[method]),
                       "--device", args.device]
            print(f"· {method} / {config} ...", file=sys.stderr, flush=True)
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{method}/{config} failed:\n{done.stderr[-3000:]}")
            results[f"{method}/{config}"] = json.loads(done.stdout.strip().splitlines()[-1])

    threads = results[next(iter(results))]["threads"]
    # A GPU needs large matmuls to reach its peak; 1024² is already a CPU's.
    size = 8192 if cuda else 1024
    peaks = {name: matmul_peak_gflops(name, threads, size=size, device=args.device) for name in ("float32", "bfloat16")}
    report(results, peaks, parameter_count(template), args)


def parameter_count(run_dir: Path) -> int:
    from transformers import AutoModelForCausalLM

    model_path = json.loads((run_dir / "bench.json").read_text())["model_path"]
    return AutoModelForCausalLM.from_pretrained(model_path).num_parameters()  # tied embeddings counted once


def model_flops_utilisation(result: dict, method: str, n_parameters: int, peaks: dict) -> float:
    """Training FLOPs per second over the matmul peak of the precision the configuration ran in."""
    factor = 4 if method == "lora" else 6  # LoRA skips the base weights' gradient matmuls
    peak = peaks["bfloat16" if result["bf16"] else "float32"]
    return factor * n_parameters * result["tokens_per_second"] / 1e9 / peak


def report(results: dict, peaks: dict, n_parameters: int, args) -> None:
    # On a GPU the baselines are bf16 only and memory is the GPU's; on a CPU, fp32 and bf16 baselines and RSS.
    memory = "peak_gpu_mb" if args.device == "cuda" else "peak_rss_mb"
    first = "hf-bf16" if args.device == "cuda" else "hf-fp32"
    for name, result in results.items():
        method, _ = name.split("/")
        result["mfu"] = model_flops_utilisation(result, method, n_parameters, peaks)
        baseline = results[f"{method}/{first}"]
        if f"{method}/hf-fp32" in results:
            result["speedup_vs_hf_fp32"] = result["tokens_per_second"] / baseline["tokens_per_second"]
        if f"{method}/hf-bf16" in results:
            result["speedup_vs_hf_bf16"] = result["tokens_per_second"] / results[f"{method}/hf-bf16"]["tokens_per_second"]
        result[f"{memory.removeprefix('peak_').removesuffix('_mb')}_vs_{first.replace('-', '_')}"] = result[memory] / baseline[memory]

    label = "GPU MB" if args.device == "cuda" else "RSS MB"
    header = f"{'config':22} {'tok/s':>7} {'s/step':>7} {label:>7} {'loss first→last5':>17} {'thr':>3} {'prec':>4} {'MFU':>6} {'×fp32':>6} {'×bf16':>6} {label[:3] + '×':>5}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        vs_fp32 = f"{r['speedup_vs_hf_fp32']:.2f}" if "speedup_vs_hf_fp32" in r else "-"
        vs_bf16 = f"{r['speedup_vs_hf_bf16']:.2f}" if "speedup_vs_hf_bf16" in r else "-"
        memory_ratio = r[memory] / results[f"{name.split('/')[0]}/{first}"][memory]
        print(f"{name:22} {r['tokens_per_second']:7.0f} {r['seconds_per_step']:7.2f} {r[memory]:7.0f} "
              f"{r['first_loss']:7.3f}→{r['last_loss_mean5']:7.3f}  {r['threads']:3d} {'bf16' if r['bf16'] else 'fp32':>4} {r['mfu']:6.1%} "
              f"{vs_fp32:>6} {vs_bf16:>6} {memory_ratio:5.2f}")
    print(f"matmul peak here: fp32 {peaks['float32']:.0f} GFLOPS, bf16 {peaks['bfloat16']:.0f} GFLOPS")
    # One file per machine kind, so a run on one kind keeps the figures measured on the others.
    kind = "_cuda" if args.device == "cuda" else "" if cpu_has_bf16() else "_no_bf16"
    results_file = RESULTS.with_name(f"{RESULTS.stem}{kind}.json")
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": cpu_description(),
                    "device": args.device},
        "settings": {"steps": args.steps, "batch": args.batch, "rows": args.rows, "max_tokens": MAX_TOKENS,
                     "warmup_steps_excluded": WARMUP_STEPS},
        "matmul_peak_gflops": peaks,
        "parameters": n_parameters,
        "results": results,
    }, indent=2))
    print(f"written {results_file}")


if __name__ == "__main__":
    main()
