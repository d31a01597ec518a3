"""Start-up: wall time of `llmkit --help` in a fresh process (median of 10).

    python benchmarks/bench_startup.py
    python benchmarks/bench_startup.py --tiny

For scale it also times `python -c pass` (the interpreter alone) and
`python -c "import transformers"` (what the CLI must not import before a command runs).
Check what is imported with `python -X importtime -m llmkit --help`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--tiny", action="store_true")
    a = p.parse_args()
    if a.tiny:
        a.repeats = 2
    load_before = common.header("startup")
    exe = shutil.which("llmkit")
    cli = [exe, "--help"] if exe else [sys.executable, "-m", "llmkit", "--help"]
    runs = {
        "llmkit_help": lambda: wall(cli),
        "python_bare": lambda: wall([sys.executable, "-c", "pass"]),
    }
    times = common.interleave(runs, a.repeats, verbose=False)
    transformers_import = common.median(
        [wall([sys.executable, "-c", "import transformers"]) for _ in range(3)]
    )
    med = {k: common.median(v) for k, v in times.items()}
    print(
        f"   llmkit --help {med['llmkit_help'] * 1000:.0f} ms (python alone "
        f"{med['python_bare'] * 1000:.0f} ms, import transformers {transformers_import:.2f} s)"
    )
    common.record(
        "startup",
        {
            "seconds_median": {k: round(v, 4) for k, v in med.items()},
            "seconds_all": {k: [round(x, 4) for x in v] for k, v in times.items()},
            "import_transformers_seconds": round(transformers_import, 3),
        },
        ratios={"startup_help_budget": 0.3 / med["llmkit_help"]},
        targets={"startup_help_budget": ">= 1.0 (<= 0.3 s)"},
        config={
            "repeats": a.repeats,
            "tiny": a.tiny,
            "command_timed": " ".join(cli),
        },
        load_before=load_before,
    )


if __name__ == "__main__":
    main()
