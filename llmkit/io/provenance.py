"""What made an output: the versions of the libraries behind a built asset or a score."""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version


def versions(distributions: Iterable[str]) -> dict[str, str]:
    """{distribution: installed version}, skipping any that is not installed."""
    found = {}
    for dist in distributions:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return found
