"""Write requirements/lock.txt from `pip freeze` of the canary venv (`make lock`).

Drops llmkit itself and the embedded assets (pinned in assets.txt, installed with --no-deps:
`pip install -r` would pull their wrong or huge declared dependencies), and local version
labels (`torch==2.13.0+cpu` -> `torch==2.13.0`) so the lock also resolves where only PyPI is.
"""

from __future__ import annotations

import platform
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def main() -> None:
    skip = {"llmkit"} | {
        normalized(line.split("==")[0])
        for line in (HERE / "assets.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    pins = []
    for line in sys.stdin.read().splitlines():
        name, sep, version = line.partition("==")
        if not sep:
            sys.exit(f"lock: not an exact pin: {line!r}")
        if normalized(name) not in skip:
            pins.append(f"{name}=={version.split('+')[0]}")
    header = [
        "# Exact versions of every package llmkit installs (direct and transitive), made by",
        f"# `make lock` on {time.strftime('%Y-%m-%d')} with Python {platform.python_version()} "
        f"({platform.system()} {platform.machine()}) from pyproject.toml's ranges + [dev].",
        "# Embedded assets are pinned in requirements/assets.txt (installed with --no-deps).",
    ]
    out = HERE / "lock.txt"
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join([*header, *sorted(pins, key=str.lower)]) + "\n")
    tmp.replace(out)
    print(f"wrote {out}: {len(pins)} packages")


if __name__ == "__main__":
    main()
