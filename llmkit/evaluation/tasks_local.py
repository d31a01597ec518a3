"""llmkit's shipped benchmark tasks: lm-evaluation-harness YAML over data that installs from
PyPI, so `llmkit eval` runs the `llmkit_chatterbot_mc` benchmark with no hub.

Each shipped task is a harness YAML in llmkit/evaluation/tasks/ naming a JSONL by file name.
`materialize` builds that JSONL from the installed corpus into llmkit's cache and copies the
YAML beside it with `data_files` made absolute: the copy is a plain harness task, so the
harness run directly on it (`simple_evaluate(tasks=[copy])`) scores exactly what llmkit did.

The data: 4-way multiple choice over chatterbot-corpus's held-out questions (the 10% hash
split that `llmkit finetune` never trains on): 94 distinct English questions and 60 Chinese
ones (60 pairs). The right answer is the question's first answer in the corpus; the 3 wrong ones are
answers to other held-out questions, picked and placed by a seeded shuffle keyed by the
question, so the file is the same on every machine and release.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import yaml

from llmkit.io.write import atomic_folder

TASKS_DIR = Path(__file__).parent / "tasks"
# Bump when what `_build` writes changes: the cache folder carries it, so stale data is rebuilt.
TASKS_VERSION = 1
CHOICES = 4
# Answers longer than this are left out (17 of 116 English held-out answers, up to 620
# characters): 160 characters are ~40 GPT-2 tokens, so question + answer fit the 128-token
# context of a tiny pretraining run, which the harness would otherwise refuse mid-run.
MAX_ANSWER_CHARS = 160
LANGUAGES = {"llmkit_chatterbot_mc": "english", "llmkit_chatterbot_mc_zh": "chinese"}


def shipped_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def materialize(name: str) -> Path:
    """The runnable YAML of shipped task `name` (built once into the cache)."""
    from llmkit.assets import cache_home

    folder = cache_home() / "assets" / f"lm-eval-tasks-v{TASKS_VERSION}"
    if not folder.exists():
        atomic_folder(folder, lambda tmp: _build(tmp, folder.resolve()))
    return folder / f"{name}.yaml"


def _build(tmp: Path, final: Path) -> None:
    """Write every task's JSONL and YAML into `tmp`, naming the data by its path once `tmp`
    is renamed to `final`."""
    for name in shipped_tasks():
        spec = yaml.safe_load((TASKS_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
        data_name = spec["dataset_kwargs"]["data_files"]["test"]
        rows = multiple_choice_rows(LANGUAGES[name])
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (tmp / data_name).write_text(text, encoding="utf-8")
        spec["dataset_kwargs"]["data_files"]["test"] = str(final / data_name)
        header = f"# built by llmkit from {TASKS_DIR / (name + '.yaml')}: {len(rows)} questions\n"
        dumped = yaml.safe_dump(spec, allow_unicode=True, sort_keys=False)
        (tmp / f"{name}.yaml").write_text(header + dumped, encoding="utf-8")


def multiple_choice_rows(language: str) -> list[dict[str, object]]:
    """[{"question", "choices", "label"}]: one per distinct held-out question."""
    from llmkit.assets import chatterbot_split

    _, held_out = chatterbot_split(language=language)
    answers: dict[str, list[str]] = {}
    for pair in held_out:
        if len(pair["answer"]) > MAX_ANSWER_CHARS:
            continue
        answers.setdefault(pair["question"], []).append(pair["answer"])
    pool = sorted({a for group in answers.values() for a in group})
    rows: list[dict[str, object]] = []
    for question, own in answers.items():
        seed = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big")
        rng = random.Random(seed)
        wrong = rng.sample([a for a in pool if a not in own], CHOICES - 1)
        choices = [own[0], *wrong]
        rng.shuffle(choices)
        rows.append({"question": question, "choices": choices, "label": choices.index(own[0])})
    return rows
