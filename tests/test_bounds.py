"""Issue 23, the request/input half, away from the server: stop strings match only what the
model generated and are bounded; a loaded chat history is trimmed to the context in linear
time; bytes that are not UTF-8 and files that are not what their suffix says get one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmkit.config.decoding import MAX_STOP_CHARS, MAX_STOPS, DecodingConfig
from llmkit.inference.generate import generate_texts
from llmkit.inference.stops import cut_at_stop, make_streamer
from llmkit.models.load import LoadedModel, load_generator

PROMPT = "The king said"


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_generator(str(tiny_gpt2_dir))


def greedy(n: int, stop: list[str] | None = None) -> DecodingConfig:
    return DecodingConfig(max_new_tokens=n, do_sample=False, stop=stop)


@settings(max_examples=15, deadline=None)
@given(tail=st.integers(1, len(PROMPT)), head=st.integers(1, 6))
def test_a_stop_string_that_begins_in_the_prompt_matches_only_the_answer(
    tiny: LoadedModel, tail: int, head: int
) -> None:
    """The stop string is the prompt's last `tail` characters + the answer's first `head`:
    the prompt and answer together hold it from the first tokens on, the answer alone
    (usually) not. The answer is the whole answer cut where the stop string is *in it*, never
    ended at its first tokens with part of the stop string left in."""
    answer = generate_texts(tiny, [PROMPT], greedy(12))[0][0]
    stop = PROMPT[-tail:] + answer[:head]
    got = generate_texts(tiny, [PROMPT], greedy(12, stop=[stop]))[0][0]
    assert got == cut_at_stop(answer, [stop])


def test_a_streamed_answer_ignores_a_stop_string_begun_in_the_prompt(
    tiny: LoadedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = generate_texts(tiny, [PROMPT], greedy(12))[0][0]
    stop = PROMPT[-3:] + answer[:3]
    assert stop not in answer
    streamer = make_streamer(tiny.tokenizer, [stop])
    got = generate_texts(tiny, [PROMPT], greedy(12, stop=[stop]), streamer=streamer)[0][0]
    assert got == answer and capsys.readouterr().out == answer + "\n"


def test_a_long_stop_string_costs_no_memory_tables(tiny: LoadedModel) -> None:
    """transformers' StopStringCriteria builds vocab x length tables (50k x 256 x 4 bytes =
    51 MB for this tokenizer, cached 8 deep); llmkit's criterion decodes a window of tokens."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stops = [chr(0x4E00 + i) * MAX_STOP_CHARS for i in range(MAX_STOPS)]
    generate_texts(tiny, [PROMPT], greedy(32, stop=stops))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 50


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--stop", "a", "--stop", "b", "--stop", "c", "--stop", "d", "--stop", "e"], "at most 4"),
        (["--stop", "x" * (MAX_STOP_CHARS + 1)], f"at most {MAX_STOP_CHARS} characters"),
        (["-n", "1000000", "--sample"], "less than or equal to 64"),
        (["--num-beams", "100000"], "less than or equal to 64"),
    ],
)
def test_decoding_options_are_bounded_before_the_model_loads(flags: list[str], words: str) -> None:
    from conftest import run_cli

    r = run_cli("generate", "--model", "no/such/model", *flags, "Hi", timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("error:") == 1 and words in r.stderr, r.stderr
    assert "no/such/model" not in r.stderr  # refused before the model was looked for


# --- a loaded chat history: trimmed to the context, in time linear in its size ---------------


def _reference_fit(tokenizer: object, conversation: object, budget: int) -> int:
    """The drop count the one-at-a-time loop found (before bisection): the fewest."""
    from dataclasses import replace

    from llmkit.inference.chat import render

    turns = conversation.turns  # type: ignore[attr-defined]
    for k in range((len(turns) - 1) // 2 + 1):
        if len(render(tokenizer, replace(conversation, turns=turns[2 * k :]))) <= budget:  # type: ignore[type-var]
            return k
    return -1


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=12),
    budget=st.integers(20, 200),
)
def test_fit_drops_the_fewest_oldest_exchanges(
    smollm2_tokenizer: object, lengths: list[int], budget: int
) -> None:
    from llmkit.errors import UsageError
    from llmkit.inference.chat import Conversation, fit

    talk = Conversation(system="Be brief.")
    for i, n in enumerate(lengths):
        talk.ask(f"question {i} " + "sea " * n)
        talk.answer(f"answer {i} " + "wave " * n)
    talk.ask("and now?")
    expected = _reference_fit(smollm2_tokenizer, talk, budget)
    before = list(talk.turns)
    if expected < 0:
        with pytest.raises(UsageError, match="this message takes"):
            fit(smollm2_tokenizer, talk, budget)
        return
    ids, dropped = fit(smollm2_tokenizer, talk, budget)
    assert dropped == expected and talk.turns == before[2 * expected :] and len(ids) <= budget


def test_loading_20000_exchanges_keeps_the_newest_and_answers_at_once(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """Before: the history was accepted whole and the next message hung (one render of all
    40,000 messages per exchange dropped). Now the load trims it, with a note."""
    import json
    import subprocess
    import sys
    import time

    history = tmp_path / "long.jsonl"
    with history.open("w") as f:
        for i in range(20_000):
            f.write(json.dumps({"role": "user", "content": f"What is {i} plus {i}?"}) + "\n")
            f.write(json.dumps({"role": "assistant", "content": f"It is {2 * i}."}) + "\n")
    start = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "llmkit", "chat", str(tiny_llama_dir), "--greedy",
         "--max-new-tokens", "4"],
        input=f"/load {history}\nHello\n/save {tmp_path / 'kept.jsonl'}\n",
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    seconds = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    assert "loaded 40000 messages" in r.stderr
    assert "do not fit the model's context (508 tokens" in r.stderr, r.stderr
    kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert kept[-2]["content"] == "Hello" and kept[-3]["content"] == "It is 39998."
    assert len(kept) < 200
    assert seconds < 120, seconds  # ~8 s on 2 busy cores (model load included)


# --- every boundary decodes what it reads --------------------------------------------------------

utf8_texts = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\r"), max_size=40
)


def run_in_process(argv: list[str], stdin: bytes = b"") -> tuple[int, str]:
    """`llmkit ARGV` in this process with `stdin` as its standard input: (exit code, stderr)."""
    import contextlib
    import io
    import sys

    from llmkit.cli import main

    err = io.StringIO()
    saved = sys.argv, sys.stdin
    sys.argv, sys.stdin = ["llmkit", *argv], io.TextIOWrapper(io.BytesIO(stdin))
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv, sys.stdin = saved
    return int(code or 0) if not isinstance(code, str) else 1, err.getvalue()


@settings(max_examples=30, deadline=None)
@given(
    before=utf8_texts,
    after=utf8_texts,
    bad=st.sampled_from([b"\xff", b"\xc3", b"\x80", b"\xed\xa0\x80"]),
)
def test_stdin_that_is_not_utf8_is_one_line_naming_the_byte(
    tiny_gpt2_dir: Path, before: str, after: str, bad: bytes
) -> None:
    head = before.encode()
    code, err = run_in_process(
        ["generate", "--model", str(tiny_gpt2_dir), "-"], head + bad + after.encode()
    )
    line = head.count(b"\n") + 1
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"error: stdin:{line}: not valid UTF-8 (byte 0x{bad[0]:02x} at offset {len(head)}); "
        "pipe UTF-8 text, e.g. through `iconv -f latin1 -t utf-8`"
    ]


def test_a_chat_line_that_is_not_utf8_is_named_and_the_session_goes_on(
    tiny_llama_dir: Path,
) -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "llmkit", "chat", str(tiny_llama_dir), "--greedy",
         "--max-new-tokens", "3", "--stop", "\\n"],
        input=b"Hi\n\xff\xfe there\nYes\n", capture_output=True, timeout=300,
    )  # fmt: skip
    err = r.stderr.decode()
    assert r.returncode == 0 and "Traceback" not in err, err
    assert "error: stdin:2: not valid UTF-8 (byte 0xff at offset 3)" in err
    assert len(r.stdout.decode().splitlines()) == 2  # "Hi" and "Yes" were answered


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        (
            "a.parquet",
            b"text\nhello\n",
            "a.parquet is not a readable Parquet file (it begins b'text'",
        ),
        ("a.jsonl", b"text,label\nhello,1\n", "a.jsonl does not hold JSON Lines: no line is JSON"),
        ("a.csv", b'{"text": "hello"}\n', "a.csv holds JSON, not CSV"),
        ("a.jsonl", b"PAR1\x00\x01binary", "a.jsonl holds Parquet data"),
        (
            "a.jsonl",
            b'{"text": "ok"}\n{"text": "caf\xe9"}\n',
            "a.jsonl:2: not valid UTF-8 (byte 0xe9 at offset 28)",
        ),
        ("a.csv", b"text\nna\xefve\n", "a.csv:2: not valid UTF-8 (byte 0xef at offset 7)"),
        ("a.txt", b"one\ntwo \xff\n", "a.txt:2: not valid UTF-8 (byte 0xff at offset 8)"),
    ],
)
def test_a_file_that_is_not_what_it_says_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, content: bytes, words: str
) -> None:
    """Through prep (the streaming reader) and generate --input (the whole-file reader)."""
    monkeypatch.chdir(tmp_path)
    Path(name).write_bytes(content)
    from conftest import REPO

    tiny = str(REPO / "recipes/pretrain/tiny-cpu.yaml")
    for argv in (["prep", tiny, "--set", f"data.sources=[{name}]"], ["generate", "--input", name]):
        if argv[0] == "generate" and name.endswith(".parquet"):
            continue  # prompts are .txt or tables
        code, err = run_in_process(argv)
        lines = err.strip().splitlines()
        assert code == 2 and "Traceback" not in err, (argv, err)
        assert [line for line in lines if line.startswith("error")] == [lines[-1]], err
        assert words in lines[-1], (argv, err)
        assert Path(name).read_bytes() == content
