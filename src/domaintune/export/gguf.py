"""GGUF files for llama.cpp and Ollama, from the merged safetensors folder, checked by loading them back.

The HF -> GGUF conversion is llama.cpp's converter (models/gguf_converter.py, shared with the server's
OpenVINO engine). q4 types need llama.cpp's `llama-quantize` binary.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from domaintune.core.errors import DomaintuneError
from domaintune.models.gguf_converter import check_converter, convert

Q4_TYPES = ("q4_0", "q4_1", "q4_k_m")
Q4_WARNING = ("q4 quantisation can erase a small model's fine-tuning: measured here, q8_0 kept a fine-tuned "
              "135M model's behaviour and q4_1 lost it. Prefer q8_0, and compare the outputs (export reports them).")


def _llama_quantize(kind: str) -> str:
    binary = shutil.which("llama-quantize")
    if binary is None:
        raise DomaintuneError(f"export.gguf: {kind} needs llama.cpp's `llama-quantize` on PATH (build llama.cpp); "
                              "the converter writes f32, f16, bf16 and q8_0 only")
    return binary


def quantize_q4(f16_file: Path, out_file: Path, kind: str) -> None:
    result = subprocess.run([_llama_quantize(kind), str(f16_file), str(out_file), kind.upper()], capture_output=True, text=True)
    if result.returncode != 0:
        raise DomaintuneError(f"export.gguf: llama-quantize {kind} failed: {result.stderr.strip().splitlines()[-1:]}")


def export_gguf(merged_dir: Path, out_dir: Path, kinds: list[str], name: str, console) -> dict[str, str]:
    """Writes <name>-<kind>.gguf for each kind and a Modelfile; returns kind -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    q4 = [kind for kind in kinds if kind in Q4_TYPES]
    if q4:
        console.print(f"[yellow]Warning: {Q4_WARNING}", highlight=False)
        _llama_quantize(q4[0])  # before spending minutes on the conversions
    check_converter()  # before spending minutes on the conversions
    # q4 types are quantised from an f16 file of this model: the one written here, else one made for them and removed
    # after (an f16 file left by an earlier export may be of an earlier model).
    f16_for_q4 = out_dir / f".{name}-f16-for-q4.gguf"
    try:
        for kind in kinds:
            target = out_dir / f"{name}-{kind}.gguf"
            if kind in Q4_TYPES:
                source = written.get("f16") or f16_for_q4
                if not source.exists():
                    convert(merged_dir, source, "f16")
                quantize_q4(source, target, kind)
            else:
                convert(merged_dir, target, kind)
            written[kind] = target
    finally:
        f16_for_q4.unlink(missing_ok=True)
    modelfile = write_modelfile(merged_dir, out_dir, written[_preferred(list(written))].name)
    return {**{f"gguf-{kind}": str(path) for kind, path in written.items()}, "modelfile": str(modelfile)}


def _preferred(kinds: list[str]) -> str:
    """The file the Modelfile points at: the most faithful of those written."""
    return next((kind for kind in ("f32", "bf16", "f16", "q8_0") if kind in kinds), kinds[0])


def write_modelfile(merged_dir: Path, out_dir: Path, gguf_name: str) -> Path:
    """An Ollama Modelfile: FROM the GGUF, the chat template as a Go template (ChatML), stop tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    lines = [f"FROM ./{gguf_name}", ""]
    template = tokenizer.chat_template or ""
    stops = [token for token in {tokenizer.eos_token, *([] if "<|im_start|>" not in template else ["<|im_start|>"])} if token]
    if "<|im_start|>" in template:
        system = _default_system_prompt(tokenizer)
        if system:
            lines += [f'SYSTEM """{system}"""', ""]
        lines += ['TEMPLATE """' + CHATML_GO_TEMPLATE + '"""', ""]
    else:
        # Ollama falls back on the template stored in the GGUF's metadata (tokenizer.chat_template).
        lines += ["# The chat template is not ChatML; Ollama reads tokenizer.chat_template from the GGUF.", ""]
    lines += [f'PARAMETER stop "{token}"' for token in sorted(stops)]
    path = out_dir / "Modelfile"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# Ollama's Go-template form of ChatML; .System is the SYSTEM line or the request's system message.
CHATML_GO_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}{{- end }}<|im_start|>assistant
"""


def _default_system_prompt(tokenizer) -> str | None:
    """The system prompt the chat template adds when a conversation has none (SmolLM2's does)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    start = "<|im_start|>system\n"
    if start not in text:
        return None
    return text.split(start, 1)[1].split("<|im_end|>", 1)[0]


def verify_gguf(merged_dir: Path, gguf_files: dict[str, str], prompts: list[str], max_new_tokens: int = 16) -> dict[str, dict]:
    """Greedy output of each GGUF (loaded back by transformers) against the merged model, per prompt, in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
             if tokenizer.chat_template else prompt for prompt in prompts]

    def greedy(model) -> list[list[int]]:
        outputs = []
        for text in texts:
            batch = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            outputs.append(out[0, batch["input_ids"].shape[1]:].tolist())
        return outputs

    reference = greedy(AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval())
    report = {}
    for kind, path in gguf_files.items():
        path = Path(path)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
        same = sum(a == b for a, b in zip(greedy(model), reference))
        report[kind] = {"prompts": len(prompts), "same_greedy_output": same}
    return report
