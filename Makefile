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

.PHONY: install gguf assets demo test test-slow test-load test-latest canary lock lint typecheck check bench clean

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

# GGUF export (`llmkit export --format gguf`): llama.cpp's converter (Python, copied to
# $(VENV)/share/llama.cpp, where llmkit looks) and its quantizer and runtime (llama-cpp-python,
# a C++ build: 19.5 min wall / 6.2 min CPU on 2 cores shared with other jobs), from one source
# package, so the converter and the llama.cpp that checks its output are the same release.
# Only the library is built (no server, tools, tests or multimodal); a step of its own, so
# `make install` stays as fast. pip caches the built wheel: a second venv takes seconds.
GGUF_REQ := requirements/gguf.txt
LLAMA_CPP := $(shell sed -n 's/^llama-cpp-python==//p' $(GGUF_REQ))
LLAMA_SRC := llama_cpp_python-$(LLAMA_CPP)/vendor/llama.cpp
# GGML_NATIVE=OFF: -march=native on a Xeon with AMX compiles in ggml's AMX matmul, which
# crashed (SIGSEGV in ggml_backend_amx_mul_mat, llama.cpp issue 20824) on every quantized file
# here (q8_0, q4_k_m); the portable build (AVX2/FMA/F16C) runs them, and on other CPUs too.
GGUF_CMAKE := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF
gguf: $(VENV)/.gguf
$(VENV)/.gguf: $(VENV)/.installed $(GGUF_REQ)
	rm -rf $(VENV)/share/llama.cpp $(VENV)/src/llama-cpp
	mkdir -p $(VENV)/share/llama.cpp $(VENV)/src/llama-cpp
	$(BIN)/python -m pip download -q --no-deps --no-binary llama-cpp-python \
		-d $(VENV)/src/llama-cpp llama-cpp-python==$(LLAMA_CPP)
	tar -xzf $(VENV)/src/llama-cpp/llama_cpp_python-$(LLAMA_CPP).tar.gz \
		-C $(VENV)/share/llama.cpp --strip-components=3 $(LLAMA_SRC)/convert_hf_to_gguf.py \
		$(LLAMA_SRC)/conversion $(LLAMA_SRC)/gguf-py $(LLAMA_SRC)/LICENSE
	$(BIN)/python -m pip uninstall -q -y llama-cpp-python  # else an old build is kept
	CMAKE_ARGS="$(GGUF_CMAKE)" $(BIN)/python -m pip install -q -c $(LOCK) \
		--find-links $(VENV)/src/llama-cpp -r $(GGUF_REQ)
	$(BIN)/python -c 'import llama_cpp; print("llama.cpp", llama_cpp.__version__, "ready")'
	touch $@

# Pretrain the default GPT on Shakespeare (~11 min on 2 cores), then sample from it.
demo: install
	$(BIN)/llmkit pretrain --output-dir runs/demo --overwrite
	$(BIN)/llmkit generate --model runs/demo --sample --seed 0 --max-new-tokens 60 "ROMEO:"

test: install
	$(BIN)/python -m pytest

# End-to-end runs over a minute each; CI runs them too.
test-slow: install
	$(BIN)/python -m pytest -m slow || [ $$? -eq 5 ]

# The signal and concurrent-writer tests again, beside two CPU-burning processes (a busy
# machine: every wait in them is on an output line, a file or a lock, never on the clock).
# The burners are killed by PID however pytest ends; its exit status is make's. The hang guard
# is 1800 s, not 600: beside the burners and other jobs a test here took 10 min.
test-load: install
	@$(BIN)/python -c 'while 1: pass' & b1=$$!; \
	$(BIN)/python -c 'while 1: pass' & b2=$$!; \
	trap 'kill $$b1 $$b2' EXIT; \
	$(BIN)/python -m pytest -m 'signals and not slow' --timeout=1800 $(PYTEST_ARGS)

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
