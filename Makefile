# One way to set up and check everything. `make check` runs what CI runs (plus lint/types).
#
# Everything lives in a virtual environment ($(VENV), default .venv) built from the lock
# (requirements/lock.txt: exact versions of every package, direct and transitive), so a fresh
# machine gets the set the tests passed with, not whatever the registry serves that day.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements/lock.txt
ASSETS := requirements/assets.txt
# The canary's venv: the newest releases pyproject allows (`make test-latest`, `make lock`).
LATEST ?= .venv-latest
# torch is the one platform pin: 2.13.0 is the CPU wheel this workplace keeps on disk, and a
# bare `torch` (or a range 2.13.0 does not satisfy) pulls several GB of CUDA packages.
TORCH := torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= true

.PHONY: install assets demo test test-slow test-latest canary lock lint typecheck check bench clean

install: $(VENV)/.installed
# A venv this target made is rebuilt whole when the lock changes, so it holds exactly the lock
# (an upgrade in place keeps stale packages, and the assets' declared dependencies fail
# `pip check`); one it did not make (no .installed marker) is never deleted.
$(VENV)/.installed: pyproject.toml $(LOCK) $(ASSETS)
	if [ -e $(VENV)/.installed ]; then rm -rf $(VENV); fi
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip check
	$(BIN)/python -m pip install -q --no-deps -r $(ASSETS)
	touch $@

assets: install

# Pretrain the default GPT on Shakespeare (~11 min on 2 cores), then sample from it.
demo: install
	$(BIN)/llmkit pretrain --output-dir runs/demo --overwrite
	$(BIN)/llmkit generate --model runs/demo --sample --seed 0 --max-new-tokens 60 "ROMEO:"

test: install
	$(BIN)/python -m pytest

# End-to-end runs over a minute each; CI runs them too.
test-slow: install
	$(BIN)/python -m pytest -m slow || [ $$? -eq 5 ]

# The canary: a fresh venv with the newest releases pyproject allows (torch stays at its pin),
# then the tests. Run it before `make lock`; a failure here is a release that would break users.
$(LATEST)/.installed: pyproject.toml $(ASSETS)
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q $(TORCH)
	$(LATEST)/bin/python -m pip install -q -e ".[dev]"
	$(LATEST)/bin/python -m pip install -q --no-deps -r $(ASSETS)
	touch $@

# CI's canary: resolve the newest releases pyproject allows (no install) and, when any differs
# from the lock, run the fast tier on them (`test-latest`), so a release inside the ranges that
# breaks llmkit fails the next change instead of a user. ~1 min when nothing is new.
canary:
	rm -rf $(LATEST) && $(PY) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q $(TORCH)
	$(LATEST)/bin/python -m pip install -q --dry-run --report $(LATEST)/resolved.json -e ".[dev]"
	$(LATEST)/bin/python requirements/drift.py $(LATEST)/resolved.json || $(MAKE) test-latest

test-latest:
	rm -f $(LATEST)/.installed
	$(MAKE) $(LATEST)/.installed
	$(LATEST)/bin/python -m pip list --format=freeze | grep -iE '^(torch|transformers|datasets|accelerate|peft|tokenizers)=='
	$(LATEST)/bin/python -m pytest

# Refresh the lock from the newest releases pyproject allows: the canary's venv, built fresh
# unless `make test-latest` just built (and tested) it. See requirements/lock.py.
lock: $(LATEST)/.installed
	$(LATEST)/bin/python -m pip freeze --exclude-editable | $(PY) requirements/lock.py

lint: install
	$(BIN)/ruff check llmkit tests benchmarks requirements
	$(BIN)/ruff format --check llmkit tests benchmarks requirements

typecheck: install
	$(BIN)/mypy llmkit

check: lint typecheck test test-slow

# Benchmarks against the Hugging Face baselines (~20 min on 2 quiet cores; not part of `make test`).
bench: install
	$(BIN)/python benchmarks/bench_startup.py
	$(BIN)/python benchmarks/bench_prep.py
	$(BIN)/python benchmarks/bench_prep_scale.py
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_bootstrap.py
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_finetune.py
	$(BIN)/python benchmarks/bench_pretrain.py
	$(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) $(LATEST) build dist *.egg-info
