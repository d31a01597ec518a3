"""Recipes: every shipped one validates; bad ones fail with exit 2 and every problem named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from llmkit.config.base import apply_override
from llmkit.config.finetune import FinetuneRecipe
from llmkit.config.loader import list_recipes, load_recipe
from llmkit.config.pretrain import PretrainRecipe
from llmkit.config.recipe import TrainConfig
from llmkit.errors import UsageError

SHIPPED = [name for name, _ in list_recipes()]


def test_recipes_command_lists_every_shipped_recipe() -> None:
    out = run_cli("recipes", cwd=REPO)
    assert out.returncode == 0
    listed = [line.split()[0] for line in out.stdout.splitlines()]
    assert listed == SHIPPED
    assert "pretrain/gpt-shakespeare" in listed
    assert "pretrain/bert-mlm-shakespeare" in listed


def test_bare_llmkit_lists_every_command_with_its_whole_summary() -> None:
    out = run_cli(cwd=REPO)
    assert out.returncode == 2  # click's convention for a group run without a command
    commands = [
        "recipes",
        "pretrain",
        "finetune",
        "export",
        "generate",
        "chat",
        "serve",
        "classify",
        "embed",
        "eval",
        "plot",
        "prep",
    ]
    listing = out.stdout.split("Commands:")[1]
    assert re.findall(r"^  (\w+)", listing, flags=re.MULTILINE) == commands
    assert "default: small GPT on Shakespeare." in " ".join(listing.split())  # not cut to "..."
    assert run_cli("--help", cwd=REPO).stdout == out.stdout


@pytest.mark.parametrize("name", [n for n in SHIPPED if n.startswith("pretrain/")])
def test_pretrain_recipe_validates(name: str) -> None:
    recipe = load_recipe(PretrainRecipe, name, [])
    assert recipe.name == Path(name).name
    # The file opens with the command that runs it.
    first = (REPO / "recipes" / f"{name}.yaml").read_text().splitlines()[0]
    assert first.startswith("# llmkit pretrain")


def test_dry_run_prints_resolved_recipe_with_overrides() -> None:
    out = run_cli(
        "pretrain",
        "--dry-run",
        "--max-steps",
        "7",
        "--set",
        "train.lr=2e-5",
        "--set",
        "data.sources=[a.txt,b.txt]",
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert "max_steps: 7" in out.stdout
    assert "lr: 2.0e-05" in out.stdout  # YAML 1.1 reads 2e-5 as a string; we coerce it
    assert "- a.txt\n  - b.txt" in out.stdout


def test_override_parser_sets_nested_values() -> None:
    data: dict = {"train": {"lr": 1.0}}
    apply_override(data, "train.lr=3.0e-4")
    apply_override(data, "model.config_overrides.rope_theta=500000")
    apply_override(data, "data.sources=[x.txt]")
    assert data == {
        "train": {"lr": 3.0e-4},
        "model": {"config_overrides": {"rope_theta": 500000}},
        "data": {"sources": ["x.txt"]},
    }
    with pytest.raises(UsageError, match="expected PATH=VALUE"):
        apply_override(data, "train.lr")
    with pytest.raises(UsageError, match=r"lr is not a section"):
        apply_override(data, "train.lr.x=1")


def test_bad_recipe_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "task: causal_lm\n"
        "trian: {}\n"
        "train:\n  lr: fast\n  lr_schedule: sometimes\n"
        "model:\n  num_heads: 3\n"
    )
    out = run_cli("pretrain", str(bad), cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    err = out.stderr
    assert "4 problems" in err
    assert "trian: unknown key; did you mean 'train'?" in err
    assert "train.lr: Input should be a valid number" in err and "'fast'" in err
    assert "train.lr_schedule: Input should be 'cosine', 'linear', 'constant'" in err
    assert "model.num_heads: 3 does not divide hidden_size 256" in err


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("task: masked_lm\nmodel: {arch: gpt2}\n", "model.arch: 'gpt2' is not a masked LM"),
        (
            "data: {block_size: 2048}\n",
            "data.block_size: 2048 exceeds model.max_position_embeddings",
        ),
        ("data: {validation: 1.5}\n", "data.validation: a fraction must be between 0 and 1"),
        ("train: {lr: -1}\n", "train.lr: Input should be greater than 0"),
        ("train: [1, 2\n", "bad.yaml:2:1: invalid YAML"),
        ("- just\n- a list\n", "a recipe is a mapping of sections"),
    ],
)
def test_impossible_recipes_are_refused(tmp_path: Path, yaml_text: str, message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml_text)
    out = run_cli("pretrain", str(bad), "--dry-run", cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr


def test_unknown_recipe_name_suggests_the_close_one() -> None:
    out = run_cli("pretrain", "pretrain/gpt-shakespear", "--dry-run", cwd=REPO)
    assert out.returncode == 2
    assert "did you mean pretrain/gpt-shakespeare?" in out.stderr


# --- defaults per recipe kind, field by field ------------------------------------------------

TRAINING = [n for n in SHIPPED if n.startswith(("pretrain/", "finetune/"))]
# Values tried for a field, in order; the first that is valid and differs from the recipe's.
CANDIDATES = [
    "3",
    "7",
    "0.5",
    "0.25",
    "true",
    "false",
    "null",
    "runs/other",
    "linear",
    "fp32",
    "fsdp",
    "wandb",
]


def _schema(name: str) -> type[PretrainRecipe] | type[FinetuneRecipe]:
    return FinetuneRecipe if name.startswith("finetune/") else PretrainRecipe


# Recipes with no `train:` section: the kind's defaults alone (where issue 17's bug lived).
BARE = {
    f"finetune/bare-{task}": f"task: {task}\n" for task in ("sft", "text2text", "classification")
}


@pytest.mark.parametrize("name", [*TRAINING, *BARE])
def test_setting_one_train_field_leaves_every_other_resolved_value(
    name: str, tmp_path: Path
) -> None:
    """Issue 17: `--max-steps 10` once swapped every fine-tuning default for pretraining's."""
    schema = _schema(name)
    if name in BARE:
        (tmp_path / "bare.yaml").write_text(BARE[name])
        name = str(tmp_path / "bare.yaml")
    base = load_recipe(schema, name).model_dump()
    tried = 0
    for field in TrainConfig.model_fields:
        for raw in CANDIDATES:
            try:
                changed = load_recipe(schema, name, [f"train.{field}={raw}"]).model_dump()
            except UsageError:
                continue
            if changed["train"][field] == base["train"][field]:
                continue
            others = {k: v for k, v in changed["train"].items() if k != field}
            assert others == {k: v for k, v in base["train"].items() if k != field}, field
            assert {k: v for k, v in changed.items() if k != "train"} == {
                k: v for k, v in base.items() if k != "train"
            }
            tried += 1
            break
    assert tried == len(TrainConfig.model_fields)  # every field was changed once


def test_fine_tuning_keeps_its_defaults_when_a_train_section_is_given(tmp_path: Path) -> None:
    recipe = tmp_path / "t2t.yaml"
    recipe.write_text("task: text2text\ntrain:\n  max_steps: 10\n")
    t = load_recipe(FinetuneRecipe, recipe).train
    assert (t.lr, t.weight_decay, t.adam_beta2, t.eval_every, t.save_every) == (
        2.0e-4,
        0.0,
        0.999,
        50,
        50,
    )
    assert t.max_steps == 10
    pretrain = load_recipe(PretrainRecipe, None, ["train.max_steps=10"]).train
    assert (pretrain.weight_decay, pretrain.adam_beta2) == (0.1, 0.95)  # the recipe's own
