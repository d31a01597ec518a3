"""Issue 23, the request/input half, away from the server: stop strings match only what the
model generated and are bounded; a loaded chat history is trimmed to the context in linear
time; bytes that are not UTF-8 and files that are not what their suffix says get one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmkit.config.decoding import MAX_STOP_CHARS, MAX_STOPS, DecodingConfig
from llmkit.inference.generate import cut_at_stop, generate_texts, make_streamer
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
