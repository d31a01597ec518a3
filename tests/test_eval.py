"""`llmkit eval`: every mode writes metrics.json a user can trust; bad input is one line, exit 2.

Scoring files needs no torch, so those run as real CLI calls (~1-2 s each). Model modes use
the random tiny GPT-2; the default suite with SmolLM2 is marked slow.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from llmkit import assets
from llmkit.commands.eval import run_eval
from llmkit.config.requests import EvalRequest
from llmkit.errors import UsageError
from llmkit.evaluation import perplexity
from llmkit.evaluation.score import default_model_ref
from llmkit.models.load import load_generator


def answers(n: int) -> list[str]:
    """Real one-line answers from the held-out chatterbot pairs."""
    _, held_out = assets.chatterbot_split()
    return [" ".join(p["answer"].split()) for p in held_out[:n]]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    return write_lines(path, [json.dumps(r) for r in rows])


def read_metrics(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "metrics.json").read_text())


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    refs = answers(30)
    preds = [" ".join(r.split()[:-1]) or r for r in refs]  # each answer minus its last word
    return {
        "refs": write_lines(tmp_path / "refs.txt", refs),
        "preds": write_lines(tmp_path / "preds.txt", preds),
        "other": write_lines(tmp_path / "other.txt", list(reversed(preds))),
    }


def test_scoring_files_writes_the_sacrebleu_numbers(files: dict[str, Path], tmp_path: Path) -> None:
    import sacrebleu

    out = tmp_path / "eval"
    result = run_cli(
        "eval", "--preds", str(files["preds"]), "--refs", str(files["refs"]),
        "--output-dir", str(out),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    preds = files["preds"].read_text().splitlines()
    refs = files["refs"].read_text().splitlines()
    saved = read_metrics(out)
    assert saved["metrics"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    bleu = sacrebleu.BLEU()
    bleu.corpus_score(preds, [refs])
    assert saved["signatures"]["bleu"] == str(bleu.get_signature())
    assert set(saved["metrics"]) >= {"chrf", "rouge1", "rougeLsum", "f1", "exact_match"}
    assert saved["data"]["examples"] == 30
    assert "BLEU" in result.stdout and "wrote" in result.stdout


def test_a_jsonl_file_can_hold_predictions_and_references(tmp_path: Path) -> None:
    refs = answers(10)
    rows = [{"id": i, "output": r.upper(), "gold": r} for i, r in enumerate(refs)]
    data = write_jsonl(tmp_path / "preds.jsonl", rows)

    run_eval(
        EvalRequest(
            preds=data, pred_field="output", ref_field="gold", metrics="em,accuracy",
            output_dir=tmp_path / "out",
        )
    )  # fmt: skip

    saved = read_metrics(tmp_path / "out")
    assert saved["metrics"] == {"exact_match": 100.0, "accuracy": 0.0}  # EM ignores case


def test_ab_of_identical_predictions_shows_no_difference(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ab"
    result = run_cli(
        "eval", "--preds", str(files["preds"]), "--preds-b", str(files["preds"]),
        "--refs", str(files["refs"]), "--metrics", "bleu,rouge", "--output-dir", str(out),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    saved = read_metrics(out)
    assert set(saved["difference"].values()) == {0.0}
    assert saved["paired_bootstrap_bleu"]["p_value"] == 1.0
    assert (out / "ab.png").stat().st_size > 10_000
    assert saved["paired_bootstrap"]["metrics"]["rouge1"]["p_value"] == 1.0
    assert "95% CI of B - A" in result.stdout


def test_ab_of_different_predictions_reports_a_significant_bleu_gap(
    files: dict[str, Path], tmp_path: Path
) -> None:
    run_eval(
        EvalRequest(
            preds=files["preds"], preds_b=files["other"], refs=files["refs"], metrics="bleu",
            output_dir=tmp_path / "ab",
        )
    )  # fmt: skip

    saved = read_metrics(tmp_path / "ab")
    assert saved["difference"]["bleu"] < -50
    assert saved["paired_bootstrap_bleu"]["p_value"] < 0.05
    assert saved["b"]["metrics"]["bleu"] < saved["metrics"]["bleu"]


def test_generating_on_a_dataset_writes_predictions_for_both_models(
    tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    _, held_out = assets.chatterbot_split()
    rows = [{"question": p["question"], "answer": p["answer"]} for p in held_out[:4]]
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    out = tmp_path / "gen"

    run_eval(
        EvalRequest(
            model=str(tiny_gpt2_dir), model_b=str(tiny_gpt2_dir), data=str(data),
            max_new_tokens=4, metrics="bleu,f1,length", output_dir=out,
        )
    )  # fmt: skip

    predictions = [
        json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()
    ]
    assert [p["source"] for p in predictions] == [r["question"] for r in rows]
    assert [p["reference"] for p in predictions] == [r["answer"] for r in rows]
    assert all(p["prediction"] for p in predictions)
    assert (out / "predictions_b.jsonl").read_text() == (out / "predictions.jsonl").read_text()
    saved = read_metrics(out)
    assert saved["mode"] == "generate" and saved["data"]["examples"] == 4
    assert saved["settings"]["decoding"]["max_new_tokens"] == 4
    assert saved["paired_bootstrap_bleu"]["p_value"] == 1.0  # greedy twice: same answers
    assert (out / "ab.png").exists()

    # The predictions file can be scored again on its own and gives the same numbers.
    again = tmp_path / "again"
    run_eval(
        EvalRequest(preds=out / "predictions.jsonl", metrics="bleu,f1,length", output_dir=again)
    )
    assert read_metrics(again)["metrics"] == saved["metrics"]


def test_perplexity_of_text_files_matches_the_metric_functions(
    tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    plays = assets.shakespeare_files()
    texts = [plays[0].read_text()[:800], plays[1].read_text()[:400]]
    paths = [write_lines(tmp_path / f"t{i}.txt", [t]) for i, t in enumerate(texts)]

    run_eval(
        EvalRequest(
            model=str(tiny_gpt2_dir), text=paths, max_length=64, stride=32,
            output_dir=tmp_path / "ppl",
        )
    )  # fmt: skip

    saved = read_metrics(tmp_path / "ppl")
    loaded = load_generator(str(tiny_gpt2_dir))
    file_texts = [p.read_text() for p in paths]
    sliding = perplexity.perplexity_sliding(
        loaded.model, loaded.tokenizer, file_texts, max_length=64, stride=32
    )
    per_doc = perplexity.perplexity_per_document(
        loaded.model, loaded.tokenizer, file_texts, max_length=64
    )
    assert saved["metrics"]["perplexity_sliding"] == pytest.approx(sliding.ppl, rel=1e-6)
    assert saved["metrics"]["perplexity_per_document"] == pytest.approx(per_doc.ppl, rel=1e-6)
    assert saved["details"]["perplexity_sliding"]["tokens"] == sliding.tokens
    assert saved["details"]["perplexity_sliding"]["stride"] == 32


def test_an_existing_metrics_json_is_never_overwritten_silently(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    args = ["--preds", str(files["preds"]), "--refs", str(files["refs"]), "--metrics", "bleu"]
    run_eval(EvalRequest(preds=files["preds"], refs=files["refs"], metrics="bleu", output_dir=out))
    before = (out / "metrics.json").read_text()

    refused = run_cli("eval", *args, "--output-dir", str(out))
    assert refused.returncode == 2
    assert "already exists: pass --overwrite" in refused.stderr
    assert (out / "metrics.json").read_text() == before
    assert run_cli("eval", *args, "--output-dir", str(out), "--overwrite").returncode == 0


def test_the_default_model_is_the_latest_run_only_if_it_is_a_causal_lm(
    tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    assert default_model_ref(runs) == "embedded:smollm2"  # no runs at all

    shutil.copytree(tiny_gpt2_dir, runs / "gpt")
    (runs / "LATEST").write_text("gpt\n")
    assert default_model_ref(runs) == str(runs / "gpt")

    (runs / "bert").mkdir()
    (runs / "bert" / "config.json").write_text('{"architectures": ["BertForMaskedLM"]}')
    (runs / "LATEST").write_text("bert\n")
    assert default_model_ref(runs) == "embedded:smollm2"


# --- bad input: one line on stderr, exit 2 ------------------------------------------------


def bad_input(case: str, tmp: Path) -> list[str]:
    """CLI arguments for one kind of bad input, its files written under `tmp`."""
    refs = write_lines(tmp / "refs.txt", ["a b c", "d e f"])
    preds = write_lines(tmp / "preds.txt", ["a b c", "d e f", "g h i"])
    good, bad = json.dumps({"prediction": "x"}), json.dumps({"pred": "y"})
    if case == "counts":
        return ["--preds", str(preds), "--refs", str(refs)]
    if case == "empty":
        return ["--preds", str(write_lines(tmp / "empty.txt", [])), "--refs", str(refs)]
    if case == "metric":
        return ["--preds", str(refs), "--refs", str(refs), "--metrics", "bleu,rogue"]
    if case == "field":
        return ["--preds", str(write_lines(tmp / "p.jsonl", [good, bad])), "--refs", str(refs)]
    if case == "json":
        broken = write_lines(tmp / "p.jsonl", [good, "", "{oops"])
        return ["--preds", str(broken), "--refs", str(refs)]
    if case == "self-reference":  # `llmkit generate` output: its completion is no reference
        generated = write_jsonl(tmp / "gen.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
        return ["--preds", str(generated)]
    assert case == "data"
    return ["--data", str(write_jsonl(tmp / "d.jsonl", [{"input": "hi", "output": "yo"}]))]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("counts", "preds.txt has 3 predictions but {tmp}/refs.txt has 2 references"),
        ("empty", "error: {tmp}/empty.txt is empty"),
        ("metric", "--metrics: unknown metric rogue (valid: bleu, chrf, rouge, em, f1,"),
        ("field", "{tmp}/p.jsonl:2: no field 'prediction' (fields: pred); pick one"),
        ("json", "{tmp}/p.jsonl:3: malformed JSON (Expecting property name enclosed"),
        ("data", "{tmp}/d.jsonl:1: no source/target, prompt/completion or question/answer"),
        ("self-reference", "gen.jsonl:1: none of the fields reference, target, answer"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(case: str, message: str, tmp_path: Path) -> None:
    result = run_cli("eval", *bad_input(case, tmp_path), "--output-dir", str(tmp_path / "out"))

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message.format(tmp=tmp_path) in lines[0]
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_flags_that_mean_nothing_together_are_refused(files: dict[str, Path]) -> None:
    with pytest.raises(UsageError, match="--preds scores files: drop --model"):
        run_eval(EvalRequest(preds=files["preds"], model="embedded:smollm2"))
    with pytest.raises(UsageError, match="--refs and --preds-b go with --preds"):
        run_eval(EvalRequest(refs=files["refs"]))


# --- the default suite ---------------------------------------------------------------------


@pytest.mark.slow
def test_eval_with_no_arguments_scores_smollm2_on_held_out_data(tmp_path: Path) -> None:
    result = run_cli("eval", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    (folder,) = (p for p in (tmp_path / "runs" / "eval").iterdir() if p.is_dir())  # + .lock
    saved = read_metrics(folder)
    assert saved["system"].startswith("embedded:smollm2 (LlamaForCausalLM")
    assert 5 < saved["metrics"]["perplexity_sliding"] < saved["metrics"]["perplexity_per_document"]
    assert saved["details"]["perplexity_sliding"]["tokens"] > 900
    assert saved["data"]["examples"] == 64
    assert {"bleu", "chrf", "rougeL", "f1", "exact_match", "distinct_2"} <= set(saved["metrics"])
    assert "64 of 94 held-out chatterbot questions" in result.stdout
    assert len((folder / "predictions.jsonl").read_text().splitlines()) == 64


@pytest.mark.signals
def test_an_interrupted_evaluation_resumes_from_its_finished_answers(
    tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    """`eval --data` stopped by Ctrl-C after some batches of 2 answers: --resume answers the
    rest, and predictions and scores equal an uninterrupted run's; a resume with another
    --max-new-tokens is refused, naming it."""
    data = write_jsonl(
        tmp_path / "d.jsonl",
        [{"source": f"Line {i} of", "target": f"the play {i}"} for i in range(60)],
    )
    args = ["eval", "--model", str(tiny_gpt2_dir), "--data", str(data), "--batch-size", "2",
            "--max-new-tokens", "6", "--metrics", "bleu,length"]  # fmt: skip
    whole = run_cli(*args, "--output-dir", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    answers = (tmp_path / "whole" / "predictions.jsonl").read_text()

    again = tmp_path / "again"
    partial = again / "predictions.jsonl.partial"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmkit", *args, "--output-dir", "again"],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (partial.exists() and partial.read_text().count("\n") > 6):
        assert proc.poll() is None and time.monotonic() < deadline, "no answers to interrupt"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    refused = run_cli(*args, "--output-dir", "again", cwd=tmp_path)
    assert refused.returncode == 2 and "pass --resume to continue it" in refused.stderr
    seven = [*args[:-3], "7", *args[-2:]]  # --max-new-tokens 7
    other = run_cli(*seven, "--output-dir", "again", "--resume", cwd=tmp_path)
    assert other.returncode == 2, other.stderr[-2000:]
    assert "max_new_tokens 6 then, 7 now" in other.stderr.strip().splitlines()[-1]
    resumed = run_cli(*args, "--output-dir", "again", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (again / "predictions.jsonl").read_text() == answers
    assert not (again / "predictions.jsonl.partial").exists()
    first, second = (
        json.loads((tmp_path / d / "metrics.json").read_text())["metrics"]
        for d in ("whole", "again")
    )
    assert first == second
