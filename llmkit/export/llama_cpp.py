"""llama.cpp's own tools: its converter (convert_hf_to_gguf.py) and its quantizer.

llmkit writes no GGUF converter of its own: the tensor names, tokenizer handling and metadata
that llama.cpp expects change with its releases, so the file is made by the converter that
ships with the llama.cpp the user runs. Both come from one source package, llama-cpp-python
(it vendors llama.cpp): `make gguf` builds it (the quantizer and runtime, a C++ build) and
copies its converter to `<venv>/share/llama.cpp`. LLMKIT_LLAMA_CPP names another llama.cpp
source folder (a checkout holding convert_hf_to_gguf.py).

The converter runs as a subprocess: it puts its own gguf-py first on sys.path (a newer copy
than the `gguf` package llmkit loads SmolLM2 with may be needed), and a Ctrl-C stops it with
us (same process group).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal, get_args

from llmkit.errors import UsageError

# What the converter writes itself, and what llama.cpp's quantizer makes from its f16 file
# (q8_0 too, though the converter can write it: the f16 file is needed anyway, for the
# perplexity every quantized export is compared with, so one converter run serves both).
# The k-quants pack 256 weights per block: a tensor whose rows are not a multiple of 256
# (SmolLM2's 576, a tiny model's 32) is stored in a fallback type llama.cpp picks (q5_0,
# q8_0...), as llama-quantize does; the file is still valid and says so in its metadata.
ConverterType = Literal["f32", "f16", "bf16"]
QuantizerType = Literal[
    "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_m", "q4_k_m", "q5_k_m", "q6_k"
]
GgufType = Literal[ConverterType, QuantizerType]
CONVERTER_TYPES: tuple[str, ...] = get_args(ConverterType)
QUANTIZER_TYPES: tuple[str, ...] = get_args(QuantizerType)

LLAMA_CPP_ENV = "LLMKIT_LLAMA_CPP"
SETUP = (
    "run `make gguf` in llmkit's checkout (builds llama-cpp-python from source: ~20 min on 2 busy "
    "cores), or `pip install llama-cpp-python` and set "
    f"{LLAMA_CPP_ENV} to a llama.cpp source folder"
)


def converter_dir() -> Path:
    """The folder holding llama.cpp's convert_hf_to_gguf.py."""
    named = os.environ.get(LLAMA_CPP_ENV)
    folder = Path(named) if named else Path(sys.prefix) / "share" / "llama.cpp"
    if not (folder / "convert_hf_to_gguf.py").is_file():
        where = f"{LLAMA_CPP_ENV}={named}" if named else str(folder)
        raise UsageError(f"GGUF export needs llama.cpp's converter (none in {where}): {SETUP}")
    return folder


def llama_cpp_module() -> Any:
    """llama-cpp-python (llama.cpp's quantizer and runtime), or a one-line setup error."""
    try:
        import llama_cpp
    except ImportError as e:
        raise UsageError(f"GGUF export needs llama-cpp-python ({e}): {SETUP}") from None
    return llama_cpp


def convert(hf_folder: Path, out: Path, outtype: ConverterType, name: str) -> None:
    """llama.cpp's converter on a Hugging Face folder -> one GGUF file (`general.name` =
    `name`). A model it cannot take (an architecture, a tokenizer) becomes one line with the
    converter's reason."""
    script = converter_dir() / "convert_hf_to_gguf.py"
    cmd = [sys.executable, str(script), str(hf_folder), "--outfile", str(out)]
    cmd += ["--outtype", outtype, "--model-name", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_converter_env())
    if proc.returncode != 0:
        reason = converter_reason(proc)
        if "pre-tokenizer was not recognized" in reason:
            # llama.cpp knows a BPE tokenizer by the hash of its output on a fixed text, so
            # a tokenizer trained here (llmkit prep tokenizer) is none it knows.
            reason = "llama.cpp does not know this BPE tokenizer (" + reason + ")"
        raise UsageError(f"llama.cpp's converter refused the model: {reason}")


def _converter_env() -> dict[str, str]:
    # The converter never needs a network; HF_HUB_OFFLINE keeps it from waiting on one.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def converter_reason(proc: subprocess.CompletedProcess[str]) -> str:
    """The converter's own words for a failure: its last error line (a log line such as
    'ERROR:hf-to-gguf:Model T5ForConditionalGeneration is not supported', or an exception's
    'NotImplementedError: BPE pre-tokenizer was not recognized ...'), without the prefix."""
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith("ERROR:") or "Error" in line.split(":", 1)[0]:
            reason = line.split(":", 2)[-1].strip() if line.startswith("ERROR:") else line
            return reason[:300]
    return (lines[-1] if lines else f"exit status {proc.returncode}")[:300]


def quantize(source: Path, out: Path, qtype: QuantizerType, threads: int | None = None) -> None:
    """llama.cpp's quantizer (`llama_model_quantize`, what `llama-quantize` calls) from an
    f16/f32 GGUF to `qtype`."""
    import logging

    llama_cpp = llama_cpp_module()
    # llama.cpp logs every tensor it quantizes (~20 lines a layer) through this logger.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}", None)
    if ftype is None:
        raise UsageError(f"this llama.cpp has no {qtype} quantization (llama-cpp-python too old?)")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if rc != 0:
        raise UsageError(f"llama.cpp's quantizer failed on {source.name} -> {qtype} (code {rc})")
