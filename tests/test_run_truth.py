"""A run tells the truth about itself (issue 23): counts that add up, text without line
breaks split by size, and failures found before any work, each as one `error:` line.

CLI cases run as real subprocesses; the invariants of the piece stream are property-based
(hypothesis) over text in many scripts.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmkit.data import stream

TINY = str(REPO / "recipes/pretrain/tiny-cpu.yaml")
BLOCKS = re.compile(r"([\d,]+) train \+ ([\d,]+) validation blocks")


def _one_error(out: object) -> str:
    err = out.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert out.returncode == 2, out.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in out.stderr  # type: ignore[attr-defined]
    assert err[-1].startswith("error: ") and sum(x.startswith("error") for x in err) == 1
    return err[-1]


def _meta(out_stdout: str) -> dict:
    cached = out_stdout.split("prep: cached in ")[1].split()[0]
    return json.loads((Path(cached) / "meta.json").read_text())


# --- text without line breaks ------------------------------------------------------------


def test_a_corpus_on_one_line_is_split_by_size(tmp_path: Path) -> None:
    """A text8-style file (~100k GPT-2 tokens, no line break) was one piece, all of it in
    train: "too short for one validation block". Cut by size, ~10% goes to validation."""
    rng = random.Random(0)
    words = [
        "".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 8))) for _ in range(3000)
    ]
    (tmp_path / "text8.txt").write_text(" ".join(rng.choice(words) for _ in range(40_000)))
    out = run_cli("prep", TINY, "--set", "data.sources=[text8.txt]", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    train, val = (int(x.replace(",", "")) for x in BLOCKS.search(out.stdout).groups())
    assert 0.05 < val / (train + val) < 0.15  # data.validation 0.1 of ~300 pieces
    assert "1/1 lines kept" in out.stdout


SCRIPTS = st.characters(categories=["L", "M", "N", "P", "Zs"], exclude_characters="\r\x85")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    words=st.lists(st.text(SCRIPTS, min_size=1, max_size=30), min_size=0, max_size=600),
    sep=st.sampled_from([" ", "", "\n", "\u3000"]),
)
def test_cut_long_parts_join_back_and_are_bounded(words: list[str], sep: str) -> None:
    """Any text (Latin with spaces, Chinese with none, line breaks) is cut into parts of at
    most 4 pieces that join back to exactly the text."""
    text = sep.join(words)
    parts = stream.cut_long(text)
    assert "".join(part + joiner for part, joiner in parts[:-1]) + parts[-1][0] == text
    assert all(len(part) <= 4 * stream.PIECE_CHARS for part, _ in parts)
    if len(text) > 2 * stream.PIECE_CHARS:
        assert len(parts) >= 2


# --- counts that add up ------------------------------------------------------------------

ROW = st.one_of(
    st.none(),
    st.text(SCRIPTS, max_size=3),  # short: dropped under min_chars 3
    st.sampled_from(["同一行", "same row"]),  # repeated: deduplicated
    st.lists(st.text(SCRIPTS, min_size=3, max_size=40), min_size=1, max_size=4).map("\n".join),
    st.text(SCRIPTS, min_size=2500, max_size=3000),  # cut into parts
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(ROW, max_size=30), lines=st.lists(ROW.filter(lambda r: r is not None)))
def test_every_row_and_line_is_counted_once(
    rows: list[str | None], lines: list[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Rows read = kept + null + dropped, lines likewise; a row with line breaks, or cut in
    parts, is one row kept ("80/40 lines kept" came from counting its lines)."""
    folder = tmp_path_factory.mktemp("counts")
    table, text = folder / "rows.jsonl", folder / "lines.txt"
    table.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    flat = [x for line in lines for x in line.split("\n")]
    text.write_text("\n".join(flat) + ("\n" if flat else ""))
    seen = stream.SeenHashes()
    got = list(
        stream.pieces([str(table), str(text)], (0, 0), text_column="text", min_chars=3, seen=seen)
    )

    row_pieces = [p for p in got if p.rows]
    line_pieces = [p for p in got if not p.rows]
    present = [r.strip() for r in rows if r is not None]
    assert sum(p.n_read for p in row_pieces) == len(rows)
    assert sum(p.n_null for p in row_pieces) == rows.count(None)
    assert sum(p.kept for p in row_pieces) == len({r for r in present if len(r) >= 3})
    stripped = [x.strip() for x in flat]
    assert sum(p.n_read for p in line_pieces) == len(flat)
    kept_lines = {x for x in stripped if len(x) >= 3} - set(present)  # deduped across files
    assert sum(p.kept for p in line_pieces) == len(kept_lines)


def test_prep_shows_null_rows_and_counts_rows_as_rows(tmp_path: Path) -> None:
    rows = [None if i % 10 == 0 else f"第{i}行\nline two {i}" for i in range(40)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    out = run_cli(
        "prep",
        TINY,
        "--set",
        "data.sources=[rows.jsonl]",
        "--set",
        "data.validation=0.3",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "36/40 rows kept (4 null)" in out.stdout, out.stdout
    meta = _meta(out.stdout)
    assert (meta["n_rows_read"], meta["n_rows_kept"], meta["n_rows_null"]) == (40, 36, 4)
    # Characters are code points, joined lines included: "第1行" is 3, not 9 bytes.
    assert meta["n_chars"] == sum(len(r) for r in rows if r is not None)


# --- failures found before any work --------------------------------------------------------


def test_a_prep_cache_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    """Root ignores permission bits, so a file where the cache's parent folder should be
    stands in for a read-only parent: the same mkdir fails (it was a NotADirectoryError /
    PermissionError traceback)."""
    (tmp_path / "ro").write_text("not a folder")
    out = run_cli("prep", TINY, cwd=tmp_path, env={"LLMKIT_PREP_CACHE": str(tmp_path / "ro/cache")})
    assert _one_error(out).startswith(f"error: cannot write the prep cache {tmp_path}/ro/cache: ")
    assert "set LLMKIT_PREP_CACHE to a writable folder" in out.stderr
    assert (tmp_path / "ro").read_text() == "not a folder"


def test_an_output_folder_that_cannot_be_written_is_refused_before_prep(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("mine")
    cache = tmp_path / "cache"
    t0 = time.monotonic()
    out = run_cli(
        "pretrain",
        TINY,
        "--output-dir",
        "f/run",
        cwd=tmp_path,
        env={"LLMKIT_PREP_CACHE": str(cache)},
    )
    assert _one_error(out) == (
        "error: output dir f/run is not writable (cannot write under f: it is not a folder)"
    )
    assert "prep:" not in out.stdout and "model:" not in out.stdout
    assert not cache.exists()  # nothing prepared
    assert (tmp_path / "f").read_text() == "mine"
    assert time.monotonic() - t0 < 120


# --- temporaries a killed writer left ------------------------------------------------------


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_an_old_folder_set_aside_by_a_killed_writer_is_put_back(tmp_path: Path) -> None:
    """Killed between its two renames, replace_folder left the old export aside and no new
    one: the next writer puts the old one back before anything else."""
    from llmkit.io.write import clear_stale, mark_owned

    pid = _dead_pid()
    old = tmp_path / f".merged.{pid}.llmkit-old"
    mark_owned(old, "export")
    (old / "model.safetensors").write_text("weights")
    half = tmp_path / f".merged.{pid}.x1y2.llmkit-tmp"
    half.mkdir()
    mine = tmp_path / f".merged.{pid}.notes"  # not a name llmkit writes
    mine.mkdir()
    done = clear_stale(tmp_path / "merged")
    assert len(done) == 2
    assert (tmp_path / "merged" / "model.safetensors").read_text() == "weights"
    assert not half.exists() and not old.exists() and mine.exists()


# --- an empty answer says why ------------------------------------------------------------------


@pytest.fixture(scope="module")
def eos_first_dir(tiny_gpt2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GPT-2 made to put EOS first (as an undertrained model can): the final layer
    norm outputs the EOS embedding, scaled so its logit dominates."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("eos-first")
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    eos = model.config.eos_token_id
    with torch.no_grad():
        wte = model.transformer.wte.weight
        wte[eos] *= 10
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(wte[eos])
    model.save_pretrained(out)
    for f in tiny_gpt2_dir.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "special")):
            shutil.copy(f, out / f.name)
    return out


def test_an_empty_answer_says_the_model_ended_it_at_once(
    eos_first_dir: Path, tiny_gpt2_dir: Path
) -> None:
    out = run_cli(
        "generate", "--model", str(eos_first_dir), "The king said", "--max-new-tokens", "8"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == "\n"
    assert "note: the answer is empty: the model ended its answer at once" in out.stderr
    assert "0 new tokens" in out.stderr
    # A model that answers gets no such note.
    normal = run_cli(
        "generate", "--model", str(tiny_gpt2_dir), "The king said", "--max-new-tokens", "8"
    )
    assert normal.returncode == 0 and normal.stdout.strip()
    assert "ended its answer at once" not in normal.stderr


# --- the model before training is a candidate for the kept weights ------------------------------


def _worsening_finetune(tmp_path: Path, tiny: Path, *extra: str) -> object:
    """4 full fine-tuning steps at lr 1 (Adam moves every weight by ~1 a step) on the tiny
    GPT-2: every checkpoint's validation loss is far above the starting model's."""
    rows = tmp_path / "t.jsonl"
    rows.write_text(
        "".join(json.dumps({"text": f"line {i} of the story"}) + "\n" for i in range(40))
    )
    return run_cli(
        "finetune",
        "--set", f"model.init={tiny}",
        "--set", f"data.sources=[{rows}]",
        "--set", "data.format=text",
        "--set", "data.max_eval_examples=8",
        "--set", "train.max_steps=4",
        "--set", "lora.enabled=false",
        "--set", "train.lr=1.0",
        "--set", "train.warmup=0",
        "--output-dir", str(tmp_path / "run"),
        *extra,
        cwd=tmp_path,
    )  # fmt: skip


def test_training_that_only_hurts_keeps_the_weights_from_before(
    tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    from safetensors.torch import load_file

    out = _worsening_finetune(
        tmp_path, tiny_gpt2_dir, "--set", "train.eval_every=2", "--set", "train.save_every=2"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["eval_loss"] > 0 and metrics["eval_loss_before"] > 0
    assert metrics["kept"].startswith("the weights from before training (loss ")
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_loss_before"], rel=1e-6)
    assert "warning: training made loss worse" in out.stdout
    # The saved model is the one training started from, weight for weight.
    kept = load_file(tmp_path / "run" / "model.safetensors")
    start = load_file(tiny_gpt2_dir / "model.safetensors")
    assert kept.keys() == start.keys()
    assert all(bool((kept[k] == start[k]).all()) for k in start)


def test_final_weights_worse_than_the_start_are_reported(
    tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    out = _worsening_finetune(tmp_path, tiny_gpt2_dir, "--set", "train.eval_every=null")
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["eval_loss"] > metrics["eval_loss_before"]
    assert metrics["kept"] == "the final weights (step 4)"
    warning = [x for x in out.stdout.splitlines() if x.startswith("warning: ")]
    assert warning == [
        f"warning: the kept weights score below the model before training (loss "
        f"{metrics['eval_loss']:.4g} vs {metrics['eval_loss_before']:.4g} before): the model "
        "before training is better"
    ]


# --- a fine-tune's evaluation can be reproduced -------------------------------------------------


def _eval_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_eval_of_a_classifier_run_reproduces_its_own_evaluation(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    rng = random.Random(1)
    topics = {
        "food": "bread soup rice cake",
        "sport": "ball goal team race",
        "art": "paint song film",
    }
    rows = [
        {"text": " ".join(rng.choices(words.split(), k=5)), "label": label}
        for label, words in topics.items()
        for _ in range(30)
    ]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    out = run_cli(
        "finetune",
        "finetune/minilm-topics",
        "--set", f"model.init={tiny_bert_dir}",
        "--set", "data.sources=[c.jsonl]",
        "--set", "data.text_column=text",
        "--set", "data.label_column=label",
        "--set", "data.validation=0.3",
        "--set", "train.max_steps=6",
        "--set", "train.eval_every=3",
        "--set", "train.save_every=3",
        "--set", "train.lr=1.0e-3",
        "--output-dir", str(run),
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    scored = [json.loads(x) for x in (run / "validation.jsonl").read_text().splitlines()]
    assert scored and set(scored[0]) == {"text", "label"}

    ev = run_cli("eval", "--model", str(run), "--output-dir", str(tmp_path / "e"), cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert f"data: {run}/validation.jsonl (the validation examples the run scored)" in ev.stderr
    trained = json.loads((run / "metrics.json").read_text())
    scores = _eval_metrics(tmp_path / "e")
    assert scores["data"]["examples"] == len(scored)
    assert scores["metrics"]["accuracy"] == pytest.approx(100 * trained["accuracy"], abs=1e-9)
    assert scores["metrics"]["macro_f1"] == pytest.approx(100 * trained["macro_f1"], abs=1e-9)


def test_eval_of_a_text2text_run_reproduces_its_own_scores(
    tmp_path: Path, tiny_llama_dir: Path
) -> None:
    # Answers a 15-step tiny model learns in part ("yes" or "no"), so the scores compared
    # are not all 0.
    pairs = [{"source": f"is {i} even", "target": "no" if i % 2 else "yes"} for i in range(60)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    run = tmp_path / "run"
    out = run_cli(
        "finetune",
        "--set", "task=text2text",
        "--set", f"model.init={tiny_llama_dir}",
        "--set", "data.sources=[p.jsonl]",
        "--set", "data.template='{source} ='",
        "--set", "train.max_steps=15",
        "--set", "train.lr=3.0e-2",
        "--set", "eval.generate_examples=6",
        "--set", "eval.max_new_tokens=8",
        "--output-dir", str(run),
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    scored = [json.loads(x) for x in (run / "validation.jsonl").read_text().splitlines()]
    assert len(scored) == 6 and set(scored[0]) == {"source", "target"}

    ev = run_cli("eval", "--model", str(run), "--output-dir", str(tmp_path / "e"), cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-2000:]
    trained = json.loads((run / "metrics.json").read_text())
    scores = _eval_metrics(tmp_path / "e")
    assert scores["data"]["examples"] == 6
    assert trained["chrf"] > 0
    for name in ("bleu", "chrf", "rougeL"):
        # The run's scores are rounded to 3 decimals; eval's are not.
        assert scores["metrics"][name] == pytest.approx(trained[name], abs=5e-4), name


# --- words in every script ---------------------------------------------------------------------


def test_a_chinese_character_is_a_unit_of_answer_lengths() -> None:
    from llmkit.evaluation.metrics import avg_length

    assert avg_length(["巴黎是法国的首都"]) == 8  # was 1 whitespace token
    assert avg_length(["Paris 是 首都。"]) == 4  # "。" is no word
    assert avg_length(["用GPT写代码"]) == 5
    assert avg_length(["東京タワーへ行く"]) == 8


@given(st.lists(st.text(st.characters(codec="ascii"), max_size=20), min_size=1, max_size=5))
def test_lengths_without_cjk_are_whitespace_tokens(texts: list[str]) -> None:
    from llmkit.evaluation.metrics import avg_length

    expected = sum(len(t.split()) for t in texts) / len(texts)
    assert avg_length(texts) == pytest.approx(expected)


def test_an_empty_chat_answer_says_the_model_ended_it_at_once(
    eos_first_dir: Path, tmp_path: Path
) -> None:
    import shutil
    import subprocess
    import sys

    from transformers import AutoTokenizer

    model = tmp_path / "m"
    shutil.copytree(eos_first_dir, model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    tok.save_pretrained(model)
    out = subprocess.run(
        [sys.executable, "-m", "llmkit", "chat", str(model), "--max-new-tokens", "8"],
        input="Hi\n/exit\n",
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "note: the answer is empty: the model ended its answer at once" in out.stderr


# --- a resumed run's log --------------------------------------------------------------------


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(st.integers(0, 40), max_size=30).map(sorted),
    at=st.integers(0, 40),
    torn=st.booleans(),
)
def test_trim_metrics_keeps_exactly_the_rows_up_to_the_checkpoint(
    steps: list[int], at: int, torn: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """What a resume from checkpoint-`at` leaves of metrics.jsonl: every row logged at or
    before its step, in order, byte for byte; none after; a line cut short by the kill goes."""
    from llmkit.io.runs import RunDir

    run = RunDir(tmp_path_factory.mktemp("trim"))
    lines = [json.dumps({"step": s, "loss": s / 7, "text": "第一"}) for s in steps]
    run.metrics_jsonl.write_text("".join(x + "\n" for x in lines) + ('{"step": 4' if torn else ""))
    dropped = run.trim_metrics(at)
    kept = [x for x, s in zip(lines, steps, strict=True) if s <= at]
    assert run.metrics_jsonl.read_text().splitlines() == kept
    assert dropped == len(lines) - len(kept) + torn
