"""Shared pieces of the benchmarks: thread pinning, timing, medians, hardware and versions,
and the append-only results log (benchmarks/results.json).

Every benchmark runs llmkit and its baseline in the same process, interleaved
(A B A B ...), so a change in machine load hits both sides alike; ratios are of medians.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

THREADS = 2  # the machine these targets were set on has 2 cores
RESULTS = Path(__file__).with_name("results.json")


def pin_threads(n: int = THREADS) -> None:
    import torch

    torch.set_num_threads(n)


def load_average() -> float:
    return os.getloadavg()[0]


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleave(
    runs: dict[str, Callable[[], float]], repeats: int, *, verbose: bool = True
) -> dict[str, list[float]]:
    """Call each function `repeats` times, A B C C B A A B C ...; each returns one figure.

    The order flips every repetition, so a load that rises or falls during the run (or a
    cache warmed by the previous variant) does not always favour the same side.
    """
    out: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(repeats):
        order = list(runs.items()) if r % 2 == 0 else list(reversed(runs.items()))
        for name, fn in order:
            value = fn()
            out[name].append(value)
            if verbose:
                print(f"  rep {r + 1}/{repeats} {name}: {value:,.3f}", flush=True)
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(
    wanted: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16"),
) -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []
    )
    return [f for f in wanted if f in flags]


def hardware() -> dict[str, Any]:
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "flags": cpu_flags(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("llmkit", "torch", "transformers", "datasets", "accelerate", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "-"
    return out


def header(name: str) -> float:
    """Print what runs where; return the 1-minute load average before the benchmark."""
    hw, v, load = hardware(), versions(), load_average()
    print(f"== {name} | {dt.datetime.now():%Y-%m-%d %H:%M} | load {load:.2f}")
    print(
        f"   {hw['cpu']}, {hw['cores']} cores, flags {' '.join(hw['flags'])}, "
        f"torch capability {hw['torch_cpu_capability']}, {hw['torch_threads']} threads"
    )
    print("   " + ", ".join(f"{k} {x}" for k, x in v.items()))
    return load


def record(
    benchmark: str,
    figures: dict[str, Any],
    *,
    ratios: dict[str, float] | None = None,
    targets: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
    load_before: float | None = None,
) -> dict[str, Any]:
    """Print the ratios and append one entry to results.json (a JSON list); the config
    records the command line that produced it."""
    command = " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    entry = {
        "benchmark": benchmark,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "load_average_1min_before": None if load_before is None else round(load_before, 2),
        "load_average_1min_after": round(load_average(), 2),
        "hardware": hardware(),
        "versions": versions(),
        "config": {**(config or {}), "command": command},
        "figures": figures,
        "ratios": ratios or {},
        "targets": targets or {},
    }
    for name, value in (ratios or {}).items():
        goal = (targets or {}).get(name, "")
        print(f"   {name}: {value:.2f}x {('(target ' + goal + ')') if goal else ''}")
    history = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    history.append(entry)
    RESULTS.write_text(json.dumps(history, indent=1) + "\n")
    print(f"   appended to {RESULTS}")
    return entry
