"""Whether the installed libraries are the ones llmkit was tested with.

llmkit reaches into the internals of a few libraries (transformers' serving classes and
Trainer hooks, accelerate's launcher, peft's adapters, datasets' cache, sacreBLEU's sufficient
statistics), and their minor releases change those: transformers 5.25 changed the serving API
and broke `llmkit serve`. So pyproject.toml bounds each of them at the newest minor release the
canary (`make test-latest`) passed, and a library installed outside that range anyway (forced
by hand or by another package) is named on `llmkit --version` and before the error of a
failing command: one line each, no traceback.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable

# The libraries whose internals llmkit uses: each has an upper bound in pyproject.toml.
TRACKED = ("transformers", "accelerate", "peft", "datasets", "sacrebleu")


def outside_tested(requirements: Iterable[str], installed: dict[str, str]) -> list[str]:
    """One sentence per tracked library whose installed version is outside its requirement.

    `requirements` are llmkit's own (PEP 508 strings, as its metadata lists them);
    `installed` maps names to the installed versions.
    """
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    wanted = {}
    for text in requirements:
        req = Requirement(text)
        if req.marker is None and req.name.lower() in TRACKED:
            wanted[req.name.lower()] = req
    lines = []
    for name, req in wanted.items():
        have = installed.get(name)
        if have is None or req.specifier.contains(have, prereleases=True):
            continue
        uppers = [s.version for s in req.specifier if s.operator == "<"]
        try:
            newer = bool(uppers) and Version(have) >= Version(uppers[0])
        except InvalidVersion:
            newer = False
        if newer:
            tested = _previous_minor(uppers[0])
            lines.append(
                f"{name} {have} is newer than the tested {tested}; run `make test-latest` "
                f"(or install the tested set: pip install -c requirements/lock.txt llmkit)"
            )
        else:
            lines.append(f"{name} {have} is outside the tested range {req.specifier}")
    return lines


def _previous_minor(bound: str) -> str:
    """`5.26` -> `5.25`: an upper bound `<X.Y` says X.(Y-1) is the newest minor tested."""
    parts = bound.split(".")
    if len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) > 0:
        return f"{parts[0]}.{int(parts[1]) - 1}"
    return f"a release before {bound}"


@functools.cache
def untested_libraries() -> tuple[str, ...]:
    """`outside_tested` for this installation (metadata only: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, requires, version

    try:
        requirements = requires("llmkit") or []
    except PackageNotFoundError:  # run from a checkout that was never installed
        return ()
    installed = {}
    for name in TRACKED:
        with contextlib.suppress(PackageNotFoundError):
            installed[name] = version(name)
    return tuple(outside_tested(requirements, installed))
