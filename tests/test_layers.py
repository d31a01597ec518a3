"""The layering rules that keep llmkit a library under thin commands (shared/DESIGN.md):
commands never import each other, nothing below them imports commands, no module reaches
into another's private names, library errors never name command-line flags, and no module
grows past ~400 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "llmkit"
LIBRARY = ("io", "models", "inference", "evaluation", "data", "train")


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under `root`."""
    out = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(p for p in parts if p != "__init__")] = path
    return out


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import in the file, at any depth (lazy imports count)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


MODULES = _modules(PACKAGE)
# The command line and the Python API (llmkit.api, and llmkit.model behind `llmkit.load`).
FRONT_DOORS = ("llmkit.cli", "llmkit.api", "llmkit.model")
SCRIPTS = {**MODULES, **_modules(REPO / "benchmarks")}


def test_commands_never_import_each_other() -> None:
    bad = [
        f"{name} imports {module}"
        for name, path in MODULES.items()
        if name.startswith("llmkit.commands.")
        for module, names in _imports(path)
        if module.startswith("llmkit.commands") or (module == "llmkit" and "commands" in names)
    ]
    assert bad == []


def test_only_the_cli_and_the_api_import_commands() -> None:
    bad = [
        f"{name} imports {module}"
        for name, path in MODULES.items()
        if not name.startswith("llmkit.commands") and name not in FRONT_DOORS
        for module, _ in _imports(path)
        if module.startswith("llmkit.commands")
    ]
    assert bad == []


def test_no_private_name_is_imported_from_another_module() -> None:
    bad = [
        f"{name}: from {module} import {imported}"
        for name, path in SCRIPTS.items()
        for module, names in _imports(path)
        if module.startswith("llmkit")
        for imported in names
        if imported.startswith("_") and not imported.startswith("__")
    ]
    assert bad == []


def test_library_layers_never_name_a_command_line_flag() -> None:
    """Errors below the command layer name recipe fields and files; the commands (and
    llmkit.flags.FIX_WORDING) word them for flags."""
    flag = re.compile(r"--[a-z]")
    bad = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for layer in LIBRARY
        for path in sorted((PACKAGE / layer).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if flag.search(line)
    ]
    assert bad == []


def test_no_module_is_over_400_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in sizes.items() if n > 400} == {}
