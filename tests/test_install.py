"""A fresh machine: assets build from an empty cache, older builds are not reused, every
package and recipe ships in the wheel, and the lock pins what is installed."""

from __future__ import annotations

import json
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import REPO

from llmkit import assets


def test_gpt2_tokenizer_builds_in_an_empty_cache_and_ignores_older_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path))
    # What build v1 left on the developer's machine (and what once hid a broken build):
    # a folder under the old, unversioned name. It must never be picked up.
    stale = tmp_path / "assets" / "gpt2-tokenizer"
    stale.mkdir(parents=True)
    (stale / "tokenizer_config.json").write_text("{}")

    folder = assets.gpt2_tokenizer_dir()

    assert folder == tmp_path / "assets" / f"gpt2-tokenizer-v{assets.GPT2_TOKENIZER_VERSION}"
    stamp = json.loads((folder / assets.BUILD_STAMP).read_text())
    assert stamp["build_version"] == assets.GPT2_TOKENIZER_VERSION
    assert stamp["versions"]["tokenizers"] == version("tokenizers")
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert len(tok) == 50257 and tok.eos_token_id == 50256 and tok.pad_token is None
    assert tok.model_max_length == 1024
    text = "  ROMEO:\nBut, soft! what light through yonder window breaks?\n\n\tÀ l'été — 1603"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert assets.gpt2_tokenizer_dir() == folder  # built once, then reused


def test_a_wrong_gpt2_build_is_caught_where_it_is_built() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    src = assets.package_dir("gpt2") / "data"
    tok = Tokenizer(models.BPE.from_file(str(src / "encoder.json"), str(src / "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)  # GPT-2 has none
    with pytest.raises(RuntimeError, match=r"'Hello world' -> \[18435, 995\]"):
        assets.check_gpt2_tokenizer(tok)


def test_every_package_and_recipe_ships_in_the_wheel() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "llmkit").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert set(config["packages"]) == on_disk | {"llmkit.recipes"}
    assert config["package-dir"] == {"llmkit.recipes": "recipes"}
    from llmkit.config.loader import RECIPES_DIR, list_recipes

    assert RECIPES_DIR.resolve() == (REPO / "recipes").resolve()  # one lookup, checkout or wheel
    shipped = sorted(p.relative_to(REPO / "recipes") for p in (REPO / "recipes").rglob("*.yaml"))
    globs = config["package-data"]["llmkit.recipes"]
    assert all(any(p.match(g) for g in globs) for p in shipped)
    assert len(list_recipes()) == len(shipped) == 17


def test_the_lock_pins_every_installed_dependency_exactly() -> None:
    """What `make install` put here is what requirements/lock.txt says, package by package."""
    lines = (REPO / "requirements" / "lock.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert all(re.fullmatch(r"[0-9][0-9a-z.]*", v) for v in pins.values()), pins
    for name in ("torch", "transformers", "tokenizers", "datasets", "accelerate", "peft"):
        assert version(name).split("+")[0] == pins[name], name
    assets_txt = (REPO / "requirements" / "assets.txt").read_text()
    for line in assets_txt.splitlines():
        if "==" in line and not line.startswith("#"):
            name, pinned = line.split("==")
            assert version(name) == pinned
            assert name not in pins  # installed with --no-deps, never through the lock
