"""`llmkit chat`: a conversation through a pipe (answers on stdout, one per line typed) and on
a terminal (pexpect: prompt, streaming, Ctrl-C, Ctrl-D), with real tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run_cli

# 8 greedy tokens per answer, cut at a newline: every answer is exactly one stdout line.
ANSWER = ["--greedy", "--max-new-tokens", "8", "--stop", "\\n"]


def _tiny_chat_model(out: Path, tokenizer: Any, positions: int) -> Path:
    """A random 2-layer Llama with SmolLM2's tokenizer and chat template. Weights drawn wider
    than transformers' default (0.2, not 0.02) so that greedy answers are varied words that
    depend on the conversation, not one repeated newline."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=positions,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: Any) -> Path:
    return _tiny_chat_model(tmp_path_factory.mktemp("chat-llama"), smollm2_tokenizer, 4096)


@pytest.fixture(scope="module")
def short_model(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer: Any) -> Path:
    """48 positions: with 8 for the answer, the conversation gets 40 tokens, about one
    exchange with SmolLM2's template (which adds its own system prompt)."""
    return _tiny_chat_model(tmp_path_factory.mktemp("chat-short"), smollm2_tokenizer, 48)


def _chat(model: Path, lines: str, *flags: str, cwd: Path) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "llmkit", "chat", str(model), *ANSWER, *flags],
        input=lines,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LLMKIT_CACHE": str(cwd / "cache")},
    )


def test_piped_session_answers_each_line_and_saves_resets_and_loads(
    chat_model: Path, tmp_path: Path
) -> None:
    (tmp_path / "notes.jsonl").write_text("mine\n")
    (tmp_path / "bad.jsonl").write_text('{"role": "user", "content": "Hi"}\n{"role": "robot"}\n')
    lines = [
        "Hi",
        "How are you?",
        "/save talk.jsonl",
        "/save notes.jsonl",  # not written by llmkit: refused, left as it was
        "/reset",
        "Hi",  # a fresh conversation: the first answer again
        "/load talk.jsonl",
        "/load bad.jsonl",  # one error line; the loaded conversation stays
        "/frobnicate",
        "/save talk.jsonl",  # this session's own file: updated
        "/save copy.jsonl",
        "/exit",
        "Never answered",
    ]
    out = _chat(chat_model, "\n".join(lines) + "\n", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    answers = out.stdout.splitlines()
    assert len(answers) == 3, out.stdout
    assert answers[0] == answers[2] and answers[0] != answers[1], answers

    saved = [json.loads(line) for line in (tmp_path / "talk.jsonl").read_text().splitlines()]
    assert [m["role"] for m in saved] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in saved[::2]] == ["Hi", "How are you?"]
    assert saved[1]["content"] == answers[0].strip() and saved[3]["content"] == answers[1].strip()
    # /load then /save gives the same file back.
    assert (tmp_path / "copy.jsonl").read_text() == (tmp_path / "talk.jsonl").read_text()
    assert (tmp_path / "notes.jsonl").read_text() == "mine\n"

    err = out.stderr
    assert "error: output notes.jsonl already exists: /save FILE --overwrite replaces it" in err
    assert "conversation cleared" in err
    assert "loaded 4 messages from talk.jsonl" in err
    assert "error: bad.jsonl:2: role must be one of system, user, assistant (got 'robot')\n" in err
    assert "unknown command /frobnicate: /help lists them" in err
    assert "Traceback" not in err


def test_first_greedy_answer_equals_generate_chat(chat_model: Path, tmp_path: Path) -> None:
    question = "What is the capital of France?"
    chat = _chat(chat_model, question + "\n", "--system", "Be brief.", cwd=tmp_path)
    generate = run_cli(
        "generate",
        question,
        "--model",
        str(chat_model),
        "--chat",
        "--system",
        "Be brief.",
        *ANSWER,
    )
    assert chat.returncode == 0 and generate.returncode == 0, chat.stderr + generate.stderr
    assert chat.stdout.strip() and chat.stdout == generate.stdout


def test_a_long_conversation_drops_its_oldest_exchanges(short_model: Path, tmp_path: Path) -> None:
    lines = ["Hi", "How are you?", "And then?", "word " * 60, "Still there?", "/save s.jsonl"]
    out = _chat(short_model, "\n".join(lines) + "\n", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 4  # the 60 words cannot fit and get no answer
    assert "context: dropped the oldest exchange (question and answer)" in out.stderr
    assert "error: this message takes " in out.stderr
    saved = [
        json.loads(line)["content"] for line in (tmp_path / "s.jsonl").read_text().splitlines()
    ]
    assert saved[0] == "Still there?"  # every older exchange was dropped to make room


def test_a_model_without_chat_template_is_refused(tiny_gpt2_dir: Path) -> None:
    out = run_cli("chat", str(tiny_gpt2_dir))
    assert out.returncode == 2
    assert out.stderr.endswith(
        "has no chat template, so it cannot hold a conversation; "
        "continue raw text with `llmkit generate`\n"
    ), out.stderr
    assert out.stderr.count("\n") == 1


def _spawn(model: Path, tmp_path: Path, *flags: str) -> Any:
    import pexpect

    env = {**os.environ, "LLMKIT_CACHE": str(tmp_path / "cache"), "NO_COLOR": "1"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "llmkit", "chat", str(model), "--greedy", *flags],
        cwd=str(REPO),
        env=env,
        encoding="utf-8",
        timeout=600,  # every expect: generous for a busy machine (`make test-load`)
    )
    child.expect_exact("/help lists the commands")
    child.expect_exact("> ")
    return child


@pytest.mark.signals
def test_terminal_ctrl_c_stops_an_answer_and_the_session_goes_on(
    chat_model: Path, tmp_path: Path
) -> None:
    # 4,000 tokens take tens of seconds: Ctrl-C surely lands mid-answer.
    child = _spawn(chat_model, tmp_path, "--max-new-tokens", "4000")
    child.sendline("Tell me a long story")
    child.expect_exact("Tell me a long story\r\n")  # the terminal's echo
    child.expect(r"\w+ \w+")  # words are streaming
    started = time.monotonic()
    child.sendcontrol("c")
    child.expect_exact("stopped; the partial answer is kept")
    assert time.monotonic() - started < 60  # one token, not the 4,000 asked for
    child.expect_exact("> ")
    child.sendline("/help")
    child.expect_exact("/reset")
    child.expect_exact("> ")
    child.sendcontrol("c")  # at an empty prompt: the end
    child.expect(pexpect_eof())
    child.close()
    assert child.exitstatus == 0
    assert "Tell me a long story" in (tmp_path / "cache" / "chat_history").read_text()


def test_terminal_answer_streams_and_ctrl_d_exits_0(chat_model: Path, tmp_path: Path) -> None:
    child = _spawn(chat_model, tmp_path, "--max-new-tokens", "8")
    child.sendline("Hi")
    child.expect_exact("Hi\r\n")  # the terminal's echo
    child.expect(r"\w+")  # the answer
    child.expect_exact("> ")
    child.sendcontrol("d")
    child.expect(pexpect_eof())
    child.close()
    assert child.exitstatus == 0


def pexpect_eof() -> Any:
    import pexpect

    return pexpect.EOF


def test_the_embedded_default_answers_a_question(tmp_path: Path) -> None:
    """No MODEL: SmolLM2-135M-Instruct, the model `llmkit generate` defaults to."""
    out = subprocess.run(
        [sys.executable, "-m", "llmkit", "chat", "--greedy", "--max-new-tokens", "24"],
        input="What is 2+2?\n",
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 1 and "4" in out.stdout, out.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"role": "user", "content": "Hi"}\nnot json\n', "f.jsonl:2: not JSON"),
        ('["user", "Hi"]\n', 'f.jsonl:1: expected an object {"role": ..., "content": ...}'),
        ('{"role": "user", "content": ["Hi"]}\n', "f.jsonl:1: content must be a string (got list)"),
        (
            '{"role": "assistant", "content": "Hello"}\n',
            "f.jsonl:1: expected a user message (user and assistant messages alternate, "
            "starting with user), got assistant",
        ),
        (
            '{"role": "user", "content": "Hi"}\n{"role": "system", "content": "Be brief."}\n',
            "f.jsonl:2: a system message can only be the first one",
        ),
        ('{"role": "user", "content": "Hi"}\n', "f.jsonl: the last user message has no answer"),
        ('{"role": "system", "content": "Be brief."}\n', "f.jsonl holds no user or assistant"),
        (None, "f.jsonl does not exist"),
    ],
)
def test_a_bad_saved_conversation_is_named_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None, message: str
) -> None:
    from llmkit.errors import UsageError
    from llmkit.inference.chat import read_conversation

    monkeypatch.chdir(tmp_path)
    if content is not None:
        Path("f.jsonl").write_text(content)
    with pytest.raises(UsageError) as e:
        read_conversation(Path("f.jsonl"))
    assert e.value.message.startswith(message) and "\n" not in e.value.message


def test_a_runs_text_template_wraps_each_user_message_but_is_not_saved(
    smollm2_tokenizer: Any, tmp_path: Path
) -> None:
    from llmkit.inference.chat import Conversation, read_conversation, render, save_conversation

    talk = Conversation(system="Translate.", template="English: {source}\nItalian:")
    talk.ask("Good morning")
    talk.answer("Buongiorno")
    talk.ask("Thank you")
    text = smollm2_tokenizer.decode(render(smollm2_tokenizer, talk))
    assert text.count("English: ") == 2 and "English: Thank you\nItalian:" in text
    talk.answer("Grazie")
    save_conversation(tmp_path / "t.jsonl", talk)
    system, turns = read_conversation(tmp_path / "t.jsonl")
    assert system == "Translate." and [t["content"] for t in turns][::2] == [
        "Good morning",
        "Thank you",
    ]
