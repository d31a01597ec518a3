"""The paired bootstrap of A/B evaluations: sacreBLEU's p-value for BLEU, every metric
recomputed correctly on resamples, clear wins found, no difference found where there is none,
and the numbers in metrics.json and the table.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from llmkit import assets
from llmkit.commands.eval import run_eval
from llmkit.config.requests import EvalRequest
from llmkit.evaluation import metrics, significance

TESTED = ["bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum"]
TESTED += ["exact_match", "f1", "accuracy", "avg_length"]
# distinct-n and self-BLEU are not tested (significance.NOT_TESTED): not scored here
SCORED = ["bleu", "chrf", "rouge", "em", "f1", "accuracy", "length"]


def sentences(n: int) -> list[str]:
    """Real lines of verse, one per example."""
    text = assets.shakespeare_files()[1].read_text(encoding="utf-8")
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return [line for line in lines if len(line.split()) >= 6][100 : 100 + n]


def corrupt(text: str, rng: random.Random, changes: int) -> str:
    """Replace `changes` words with 'zzz' and drop one word per change."""
    words = text.split()
    for _ in range(changes):
        words[rng.randrange(len(words))] = "zzz"
        if len(words) > 2:
            del words[rng.randrange(len(words))]
    return " ".join(words)


def score(preds: list[str], refs: list[str]) -> tuple[dict[str, Any], dict[str, float]]:
    examples: dict[str, Any] = {}
    values: dict[str, float] = {}
    for result in metrics.score_texts(preds, refs, SCORED).values():
        examples |= result.examples
        values |= result.values
    return examples, values


def bootstrap(a: list[str], b: list[str], refs: list[str], **kwargs: Any) -> significance.Bootstrap:
    (ea, va), (eb, vb) = score(a, refs), score(b, refs)
    return significance.paired_bootstrap(ea, eb, va, vb, **kwargs)


@pytest.fixture(scope="module")
def close_systems() -> tuple[list[str], list[str], list[str]]:
    """A and B both imperfect and close to each other: p-values far from 0 and 1."""
    refs = sentences(120)
    rng = random.Random(0)
    a = [corrupt(r, rng, 1) for r in refs]
    b = [
        corrupt(r, rng, 1) if i % 4 == 0 else p
        for i, (r, p) in enumerate(zip(refs, a, strict=True))
    ]
    return a, b, refs


@pytest.mark.parametrize("seed", [12345, 7])
def test_bleu_and_chrf_p_values_are_sacrebleus_paired_bs(
    close_systems: tuple[list[str], list[str], list[str]],
    seed: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    a, b, refs = close_systems
    monkeypatch.setenv("SACREBLEU_SEED", str(seed))
    signatures, direct = PairedTest(
        [("A", a), ("B", b)], {"BLEU": BLEU(), "chrF": CHRF()}, [refs], test_type="bs"
    )()

    ours = bootstrap(a, b, refs, n_samples=1000, seed=seed)

    sacre_bleu, sacre_chrf = direct["BLEU"][1], direct["chrF2"][1]
    assert not isinstance(sacre_bleu, str) and not isinstance(sacre_chrf, str)
    assert 0.01 < ours.tests["bleu"].p_value < 0.9  # a p-value that could differ
    assert ours.tests["bleu"].p_value == sacre_bleu.p_value
    assert ours.tests["chrf"].p_value == sacre_chrf.p_value
    assert ours.bleu is not None
    assert (ours.bleu.mean_b, ours.bleu.ci_b) == (sacre_bleu.mean, sacre_bleu.ci)
    assert ours.bleu.signature == str(signatures["BLEU"])


def test_every_metric_on_a_resample_is_the_metric_of_the_resampled_texts(
    close_systems: tuple[list[str], list[str], list[str]],
) -> None:
    """The per-example statistics give what scoring the resampled texts from scratch gives."""
    a, _, refs = close_systems
    examples, _ = score(a, refs)
    indices = significance.draw_indices(len(refs), 3, seed=1)

    for draw in indices:
        texts, gold = [a[i] for i in draw], [refs[i] for i in draw]
        _, direct = score(texts, gold)
        for key in TESTED:
            sums = significance.resampled_sums(examples[key].rows, draw[None, :])
            # BLEU/chrF from float32 sums, as sacreBLEU's own bootstrap: agree to ~1e-6
            assert examples[key].from_sums(sums)[0] == pytest.approx(direct[key], rel=1e-5)


def test_a_clearly_better_system_wins_on_every_metric() -> None:
    refs = sentences(60)
    rng = random.Random(1)
    b = [corrupt(r, rng, 1) if i % 3 else r for i, r in enumerate(refs)]  # a few words off
    a = [corrupt(r, rng, 4) for r in refs]  # heavily corrupted

    result = bootstrap(a, b, refs)

    assert sorted(result.tests) == sorted(TESTED)
    for key in TESTED:
        test = result.tests[key]
        assert test.p_value < 0.05, key
        assert 0 < test.ci_low <= test.difference <= test.ci_high, key


def test_identical_systems_differ_by_zero_with_p_1() -> None:
    refs = sentences(40)
    rng = random.Random(2)
    a = [corrupt(r, rng, 1) for r in refs]

    result = bootstrap(a, list(a), refs)

    for key in TESTED:
        test = result.tests[key]
        assert (test.difference, test.ci_low, test.ci_high, test.p_value) == (0, 0, 0, 1.0)


def test_the_same_seed_repeats_and_another_seed_differs(
    close_systems: tuple[list[str], list[str], list[str]],
) -> None:
    a, b, refs = close_systems
    (ea, va), (eb, vb) = score(a, refs), score(b, refs)

    def run(seed: int) -> dict[str, significance.MetricTest]:
        return significance.paired_bootstrap(ea, eb, va, vb, n_samples=200, seed=seed).tests

    assert run(3) == run(3)
    assert run(3)["rouge1"].ci_low != run(4)["rouge1"].ci_low


def test_cli_writes_every_metrics_p_value_and_interval(tmp_path: Path) -> None:
    refs = sentences(50)
    rng = random.Random(3)
    lines = {
        "r.txt": refs,
        "a.txt": [corrupt(r, rng, 3) for r in refs],
        "b.txt": [corrupt(r, rng, 1) if i % 2 else r for i, r in enumerate(refs)],
    }
    for name, texts in lines.items():
        (tmp_path / name).write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    out = tmp_path / "ab"

    result = run_cli(
        "eval", "--preds", "a.txt", "--preds-b", "b.txt", "--refs", "r.txt",
        "--output-dir", str(out), cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "metrics.json").read_text())
    boot = saved["paired_bootstrap"]
    assert (boot["n_samples"], boot["seed"], boot["examples"]) == (1000, 12345, 50)
    tested = boot["metrics"]
    assert sorted(tested) == sorted(k for k in TESTED if k != "accuracy")  # not a default
    for key, test in tested.items():
        assert test["difference"] == pytest.approx(saved["difference"][key])
        assert test["p_value"] < 0.05 and test["ci_low"] > 0, key
    assert set(boot["not_tested"]) == {"distinct_1", "distinct_2", "self_bleu"}
    assert saved["paired_bootstrap_bleu"]["p_value"] == tested["bleu"]["p_value"]
    assert "95% CI of B - A" in result.stdout
    assert "1,000 resamples of 50 examples, seed 12345" in result.stdout


def test_bootstrap_0_turns_the_test_off(tmp_path: Path) -> None:
    refs = sentences(20)
    a = [corrupt(r, random.Random(4), 2) for r in refs]
    paths = {}
    for name, texts in {"r": refs, "a": a}.items():
        paths[name] = tmp_path / f"{name}.txt"
        paths[name].write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    off = tmp_path / "off"

    run_eval(
        EvalRequest(
            preds=paths["a"], preds_b=paths["r"], refs=paths["r"], metrics="bleu", bootstrap=0,
            output_dir=off,
        )
    )  # fmt: skip

    saved = json.loads((off / "metrics.json").read_text())
    assert "paired_bootstrap" not in saved and "paired_bootstrap_bleu" not in saved
    assert saved["difference"]["bleu"] > 0
