"""`llmkit eval --metric`: Hugging Face `evaluate` modules beside llmkit's own metrics.

Offline, a module loads from a local folder: tests/data/sacrebleu_module wraps sacreBLEU's
corpus BLEU as the hub's `sacrebleu` module does, so its score must equal llmkit's BLEU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from llmkit import assets
from llmkit.commands.eval import run_eval
from llmkit.config.requests import EvalRequest
from llmkit.errors import UsageError

MODULE = Path(__file__).parent / "data" / "sacrebleu_module"


def write_pairs(tmp_path: Path) -> tuple[Path, Path]:
    """Real answers as references; predictions that drop every third word of them."""
    _, held_out = assets.chatterbot_split()
    refs = [" ".join(p["answer"].split()) for p in held_out[:40]]
    preds = [" ".join(w for i, w in enumerate(r.split()) if i % 3 != 2) for r in refs]
    (tmp_path / "refs.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
    (tmp_path / "preds.txt").write_text("\n".join(preds) + "\n", encoding="utf-8")
    return tmp_path / "preds.txt", tmp_path / "refs.txt"


def test_a_local_evaluate_module_gives_llmkits_bleu(tmp_path: Path) -> None:
    preds, refs = write_pairs(tmp_path)
    out = tmp_path / "scored"
    proc = run_cli(
        "eval", "--preds", str(preds), "--refs", str(refs), "--metrics", "bleu,chrf",
        "--metric", str(MODULE), "--output-dir", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    values = metrics["metrics"]
    assert 10 < values["bleu"] < 90  # a real, partial match
    assert values["sacrebleu_module/score"] == pytest.approx(values["bleu"], abs=1e-9)
    assert metrics["details"]["evaluate"][str(MODULE)]["module"] == "sacrebleu_module"
    assert "sacrebleu_module/score" in proc.stdout  # in the same table as llmkit's metrics


def test_ab_with_a_module_scores_both_systems(tmp_path: Path) -> None:
    preds, refs = write_pairs(tmp_path)
    out = run_eval(
        EvalRequest(
            preds=preds, preds_b=refs, refs=refs, metrics="bleu", metric=[str(MODULE)],
            output_dir=tmp_path / "ab",
        )
    )  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["b"]["metrics"]["sacrebleu_module/score"] == pytest.approx(100.0)
    diff = metrics["difference"]["sacrebleu_module/score"]
    assert diff == pytest.approx(100.0 - metrics["metrics"]["sacrebleu_module/score"])


def test_a_module_that_cannot_load_fails_in_one_line_before_any_model(tmp_path: Path) -> None:
    """The model named does not exist: had it been loaded first, its error would show."""
    out = tmp_path / "never"
    request = EvalRequest(
        model="no/such-model", data="embedded:chatterbot", output_dir=out,
        metric=[str(tmp_path / "absent_module")],
    )  # fmt: skip
    with pytest.raises(UsageError) as caught:
        run_eval(request)
    message = str(caught.value)
    assert message.startswith("evaluate module ") and "absent_module.py" in message
    assert "\n" not in message and not out.exists()


def test_a_hub_module_offline_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^evaluate module 'bleurt' cannot be loaded: "):
        run_eval(EvalRequest(preds=tmp_path / "p.txt", metric=["bleurt"], output_dir=tmp_path))
