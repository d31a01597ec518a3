"""Compare what pip would install today from pyproject's ranges with requirements/lock.txt.

`make canary` resolves the newest releases pyproject.toml allows (`pip install --dry-run
--report`), then runs this on the report: exit 0 when every package resolves to its locked
version (nothing new to test), 1 with one line per difference otherwise, so that CI tests the
new releases (`make test-latest`) before a user installs them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from lock import normalized  # noqa: E402  # requirements/ is not a package

SKIP = {"llmkit", "torch"}  # ourselves, and the one platform pin (installed first, by hand)


def locked() -> dict[str, str]:
    pins = {}
    for line in (HERE / "lock.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[normalized(name)] = version.strip()
    return pins


def main(report_path: str) -> int:
    report = json.loads(Path(report_path).read_text())
    resolved = {
        normalized(item["metadata"]["name"]): item["metadata"]["version"]
        for item in report["install"]
    }
    pins = locked()
    drift = []
    for name, version in sorted(resolved.items()):
        if name in SKIP:
            continue
        if name not in pins:
            drift.append(f"  {name} {version}: new (not in the lock)")
        elif pins[name] != version:
            drift.append(f"  {name} {pins[name]} -> {version}")
    if not drift:
        print(f"canary: the newest releases pyproject allows are the lock's ({len(pins)} packages)")
        return 0
    print(f"canary: {len(drift)} packages differ from the lock:", *drift, sep="\n")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
