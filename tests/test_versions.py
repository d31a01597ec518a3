"""Installed libraries outside the tested set (issue 29): named on `llmkit --version` and
before a failing command's error, one line each, no traceback.

The installed version is read from package metadata, so a test shadows one library with a
dist-info folder of another version at the front of PYTHONPATH, as a forced upgrade would
leave it, and runs the real CLI.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmkit.versions import outside_tested
from tests.conftest import run_cli

REQUIRES = [
    "transformers<5.26,>=5.25",
    "peft<0.22,>=0.17",
    "numpy>=1.26",
    "pytest>=8; extra == 'dev'",
]


def test_versions_inside_the_ranges_say_nothing() -> None:
    assert outside_tested(REQUIRES, {"transformers": "5.25.3", "peft": "0.21.2"}) == []


def test_a_newer_minor_names_the_tested_one() -> None:
    assert outside_tested(REQUIRES, {"transformers": "5.26.0", "peft": "0.21.2"}) == [
        "transformers 5.26.0 is newer than the tested 5.25; run `make test-latest` "
        "(or install the tested set: pip install -c requirements/lock.txt llmkit)"
    ]


def test_an_older_release_is_outside_the_range() -> None:
    assert outside_tested(REQUIRES, {"peft": "0.16.0"}) == [
        "peft 0.16.0 is outside the tested range <0.22,>=0.17"
    ]


def test_untracked_libraries_and_extras_are_ignored() -> None:
    assert outside_tested(REQUIRES, {"numpy": "0.1", "pytest": "1.0"}) == []


def _shadow(tmp_path: Path, name: str, version: str) -> dict[str, str]:
    """PYTHONPATH with `name` VERSION's metadata first (its code is never imported here)."""
    info = tmp_path / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    path = os.pathsep.join(p for p in [str(tmp_path), os.environ.get("PYTHONPATH", "")] if p)
    return {"PYTHONPATH": path}


def test_version_and_a_failing_command_name_a_library_past_the_tested_minor(
    tmp_path: Path,
) -> None:
    env = _shadow(tmp_path, "peft", "0.99.0")
    out = run_cli("--version", env=env)
    assert out.returncode == 0
    assert out.stdout.splitlines()[1].startswith(
        "warning: peft 0.99.0 is newer than the tested 0.21; run `make test-latest`"
    )
    failed = run_cli("eval", "--preds", str(tmp_path / "missing.txt"), "--refs", "x", env=env)
    assert failed.returncode == 2
    first, second, *rest = failed.stderr.strip().splitlines()
    assert first.startswith("warning: peft 0.99.0 is newer than the tested 0.21")
    assert second.startswith("error: ") and not rest
