"""Generation speed of every installed engine and compute type, side by side in one run.

    .venv/bin/python bench/generate_throughput.py                    # bundled smollm2-135m-instruct, batches 1, 8, 16
    .venv/bin/python bench/generate_throughput.py --batches 1,8 --max-new-tokens 32   # a quick check

Each engine answers the same prompts greedily (`--max-new-tokens`, 128 by default), `--rounds` batches
per batch size. Prints generated tokens/s per engine and batch size, the speed-up over torch's
`generate` (fp32) at the same batch size, and the share of answers identical to torch fp32's (the
quality guard's measure). Conversion time is printed apart: it is paid once per model and cached.
Writes bench/results/generate_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

TOPICS = ["a loan agreement", "compound interest", "a credit default swap", "an escrow account", "a balance sheet",
          "inflation", "a mortgage", "diversification", "a bond coupon", "liquidity risk", "an amortisation table",
          "a margin call", "a covenant", "working capital", "a letter of credit", "a syndicated loan"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batches", default="1,8,16")
    parser.add_argument("--rounds", type=int, default=2, help="batches timed per batch size")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--compute-types", default=None, help="CTranslate2 types (default: all this CPU supports)")
    parser.add_argument("--openvino-types", default="int8,float16", help="OpenVINO weights ('' for none)")
    args = parser.parse_args()

    import torch

    from domaintune.config import ModelConfig
    from domaintune.config.inference import InferenceConfig
    from domaintune.config.runtime import cpu_description, thread_count
    from domaintune.config.training import TrainingConfig
    from domaintune.models.ctranslate2_library import ctranslate2
    from domaintune.models.generation import ctranslate2_installed, load_generator, weights_folders
    from domaintune.models.loading import load_causal_lm, load_tokenizer
    from domaintune.models.openvino_model import openvino_installed

    threads = thread_count(TrainingConfig())
    torch.set_num_threads(threads)
    config = ModelConfig(name=args.model)
    tokenizer, model = load_tokenizer(config), load_causal_lm(config)
    batches = [int(b) for b in args.batches.split(",")]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"Explain {topic} in detail."}],
                                             tokenize=False, add_generation_prompt=True)
               for topic in (TOPICS * 4)[: max(batches) * args.rounds]]
    engines = [("torch", "float32")]
    if ctranslate2_installed():
        supported = sorted(ctranslate2().get_supported_compute_types("cpu"))
        wanted = args.compute_types.split(",") if args.compute_types else supported
        engines += [("ctranslate2", kind) for kind in wanted if kind in supported]
    if openvino_installed():
        engines += [("openvino", kind) for kind in filter(None, args.openvino_types.split(","))]

    print(f"{args.model}, greedy, {args.max_new_tokens} new tokens, {threads} thread(s) on {cpu_description()}",
          flush=True)
    rows, reference = [], {}
    for engine, compute_type in engines:
        started = time.perf_counter()
        if engine == "openvino":
            generator = OpenVINOBatches(weights_folders(config), compute_type, tokenizer, threads, max(batches))
        else:
            generator = load_generator(lambda: model, tokenizer, InferenceConfig(engine=engine, compute_type=compute_type),
                                       folders=weights_folders(config), bf16=False, exact=True, threads=threads)
        ready = time.perf_counter() - started
        for batch in batches:
            chosen = prompts[: batch * args.rounds]
            generator.generate(chosen[:batch], 8, batch)  # warm-up
            started = time.perf_counter()
            answers = generator.generate(chosen, args.max_new_tokens, batch)
            seconds = time.perf_counter() - started
            tokens = sum(len(tokenizer(answer, add_special_tokens=False)["input_ids"]) for answer in answers)
            if engine == "torch":
                reference[batch] = answers
            same = sum(a == b for a, b in zip(answers, reference[batch])) / len(answers)
            rows.append({"engine": engine, "compute_type": compute_type, "batch": batch, "tokens": tokens,
                         "seconds": round(seconds, 2), "tokens_per_second": round(tokens / seconds, 1),
                         "identical_to_torch_fp32": round(same, 3), "load_or_convert_seconds": round(ready, 1)})
            print(f"  {engine:11} {compute_type:12} batch {batch:2}: {tokens / seconds:7.1f} tok/s, "
                  f"{same:.0%} answers as torch fp32", flush=True)

    base = {row["batch"]: row["tokens_per_second"] for row in rows if row["engine"] == "torch"}
    print(f"\n| engine | compute type | {' | '.join(f'batch {b}' for b in batches)} | identical to torch fp32 |")
    print("|---|---|" + "---|" * len(batches) + "---|")
    for engine, compute_type in engines:
        mine = [row for row in rows if (row["engine"], row["compute_type"]) == (engine, compute_type)]
        cells = [f"{row['tokens_per_second']:.1f} ({row['tokens_per_second'] / base[row['batch']]:.2f}×)" for row in mine]
        same = sum(row["identical_to_torch_fp32"] for row in mine) / len(mine)
        print(f"| {engine} | {compute_type} | {' | '.join(cells)} | {same:.0%} |")
    out = Path(__file__).parent / "results" / "generate_throughput.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": cpu_description(), "threads": threads, "model": args.model,
                               "max_new_tokens": args.max_new_tokens, "rows": rows}, indent=2))
    print(f"\nWrote {out}")


class OpenVINOBatches:
    """The server's OpenVINO pipeline (serving/openvino_engine.py) given the prompts `batch` at a time, as the
    other engines' `generate` takes them."""

    def __init__(self, folders, compute_type: str, tokenizer, threads: int, max_batch: int):
        from domaintune.models.openvino_model import openvino_gguf
        from domaintune.models.openvino_pipelines import continuous_batching_pipeline

        self.pipeline = continuous_batching_pipeline(openvino_gguf(folders, compute_type), threads, max_batch)
        self.tokenizer = tokenizer

    def generate(self, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
        import numpy
        import openvino
        import openvino_genai

        config = openvino_genai.GenerationConfig()
        config.max_new_tokens, config.do_sample = max_new_tokens, False
        config.stop_token_ids = {self.tokenizer.eos_token_id}
        answers = []
        for start in range(0, len(prompts), batch_size):
            ids = [openvino.Tensor(numpy.array([self.tokenizer(prompt, add_special_tokens=False)["input_ids"]],
                                               dtype=numpy.int64)) for prompt in prompts[start:start + batch_size]]
            results = self.pipeline.generate(ids, [config] * len(ids))
            answers += [self.tokenizer.decode(list(result.m_generation_ids[0]), skip_special_tokens=True)
                        for result in results]
        return answers


if __name__ == "__main__":
    sys.exit(main())
