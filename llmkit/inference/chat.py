"""A conversation with a causal LM: its messages, rendering them through the tokenizer's chat
template, dropping the oldest exchanges when they outgrow the context, the JSONL file a
conversation is saved to, and one streamed answer that Ctrl-C can stop.

The saved format is the OpenAI messages list, one message per line, so other tools read it:

    {"role": "system", "content": "Be brief."}
    {"role": "user", "content": "Hi"}
    {"role": "assistant", "content": "Hello! How can I help?"}

User messages are stored as typed; a run's text template (its task card) is applied only when
rendering, so a saved conversation reads the same whatever model continues it.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llmkit.errors import UsageError
from llmkit.inference.generate import context_size
from llmkit.inference.stops import (
    GeneratedStop,
    cut_at_stop,
    make_streamer,
    without_stop_strings,
)
from llmkit.io.files import read_text
from llmkit.io.write import write_jsonl
from llmkit.models.load import LoadedModel

ROLES = ("system", "user", "assistant")


@dataclass
class Conversation:
    """The system prompt and the exchanges so far: `turns` alternates user and assistant
    messages, starting with a user one (a pending question is its last element)."""

    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)
    template: str | None = None  # a run's "...{source}..." wrapped around each user message

    def messages(self) -> list[dict[str, str]]:
        """Every message as typed, the system prompt first: what a saved file holds."""
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return head + [dict(m) for m in self.turns]

    def ask(self, text: str) -> None:
        self.turns.append({"role": "user", "content": text})

    def answer(self, text: str) -> None:
        self.turns.append({"role": "assistant", "content": text})

    def retract(self) -> None:
        """Drop a question that got no answer (it failed, or was stopped before a word)."""
        if self.turns and self.turns[-1]["role"] == "user":
            self.turns.pop()


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer: Any, conversation: Conversation) -> list[int]:
    """Token ids of the conversation through the chat template, ending with the assistant's
    turn opening (the model writes the next answer from there)."""
    messages = conversation.messages()
    if conversation.template is not None:
        for m in messages:
            if m["role"] == "user":
                m["content"] = conversation.template.format(source=m["content"])
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # jinja2 TemplateError, e.g. a template that rejects system turns
        raise UsageError(f"the chat template failed: {e}") from None
    # The template already holds BOS and role markers (as `generate` encodes a chat prompt):
    # adding special tokens would double them.
    ids: list[int] = tokenizer(str(text), add_special_tokens=False)["input_ids"]
    return ids


def context_budget(model: Any, max_new_tokens: int | None) -> int | None:
    """Tokens the conversation may take so that an answer of max_new_tokens still fits in the
    model's positions; None when the model does not say how many it has."""
    limit = context_size(model)
    if limit is None or max_new_tokens is None:
        return None
    if max_new_tokens >= limit:
        raise UsageError(
            f"max_new_tokens={max_new_tokens} leaves no room for a conversation in the "
            f"model's context of {limit} tokens"
        )
    return limit - max_new_tokens


def fit(tokenizer: Any, conversation: Conversation, budget: int | None) -> tuple[list[int], int]:
    """The conversation's ids within `budget` tokens, and how many exchanges (a question and
    its answer) were dropped from the start to get there; the system prompt always stays.
    Dropped exchanges are gone from `conversation` too. A last question that does not fit
    even alone is an error (and stays in `conversation` for the caller to retract)."""
    ids = render(tokenizer, conversation)
    if budget is None or len(ids) <= budget:
        return ids, 0
    # Fewer exchanges never render longer, so the fewest to drop is found by bisection: a
    # history of n exchanges costs log2(n) renders, not n (dropping one at a time rendered
    # 10,000 loaded exchanges 10,000 times: the next message hung).
    turns = conversation.turns
    lo, hi = 1, (len(turns) - 1) // 2  # drop counts; `hi` leaves the last question alone
    fitting: list[int] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        trial = render(tokenizer, replace(conversation, turns=turns[2 * mid :]))
        if len(trial) <= budget:
            fitting, hi = trial, mid - 1
        else:
            lo = mid + 1
    if fitting is None:
        alone = render(tokenizer, replace(conversation, turns=turns[-1:]))
        raise UsageError(
            f"this message takes {len(alone)} tokens with the chat template and system "
            f"prompt; the model's context leaves {budget} for the conversation"
        )
    del turns[: 2 * lo]
    return fitting, lo


def newest_that_fit(
    tokenizer: Any, turns: list[dict[str, str]], budget: int
) -> tuple[list[dict[str, str]], int]:
    """The newest exchanges whose contents alone take at most `budget` tokens, and how many
    older ones were left out. Contents are tokenized from the newest back, stopping at the
    budget, so a long history costs time in what is kept, not in its length; the template's
    own tokens are counted later, by `fit`."""
    used, kept = 0, 0
    for end in range(len(turns), 0, -2):
        pair = [m["content"] for m in turns[max(0, end - 2) : end]]
        used += sum(len(row) for row in tokenizer(pair, add_special_tokens=False)["input_ids"])
        if used > budget:
            break
        kept += 1
    exchanges = (len(turns) + 1) // 2
    return turns[len(turns) - 2 * kept :] if kept else [], exchanges - kept


# --- saved conversations -------------------------------------------------------------------


def save_conversation(path: Path, conversation: Conversation) -> int:
    """Write the messages as JSONL (atomically); returns how many."""
    messages = conversation.messages()
    write_jsonl(path, messages)
    return len(messages)


def read_conversation(path: Path) -> tuple[str | None, list[dict[str, str]]]:
    """(system prompt, turns) from a JSONL file of messages, checked whole: one line naming
    the first problem (file:line) rather than a conversation the template then rejects."""
    if not path.exists() and not path.is_symlink():
        raise UsageError(f"{path} does not exist")
    lines = read_text(path).splitlines()  # one line for a folder, a FIFO, a bad byte...
    system: str | None = None
    turns: list[dict[str, str]] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        role, content = _message(line, f"{path}:{n}")
        if role == "system":
            if system is not None or turns:
                raise UsageError(f"{path}:{n}: a system message can only be the first one")
            system = content
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise UsageError(
                f"{path}:{n}: expected a {expected} message (user and assistant messages "
                f"alternate, starting with user), got {role}"
            )
        turns.append({"role": role, "content": content})
    if not turns:
        raise UsageError(f"{path} holds no user or assistant messages")
    if turns[-1]["role"] != "assistant":
        raise UsageError(f"{path}: the last user message has no answer")
    return system, turns


def _message(line: str, where: str) -> tuple[str, str]:
    try:
        data = json.loads(line)
    except ValueError:
        raise UsageError(f'{where}: not JSON; expected {{"role": ..., "content": ...}}') from None
    if not isinstance(data, dict):
        raise UsageError(f'{where}: expected an object {{"role": ..., "content": ...}}')
    role, content = data.get("role"), data.get("content")
    if role not in ROLES:
        raise UsageError(f"{where}: role must be one of {', '.join(ROLES)} (got {role!r})")
    if not isinstance(content, str):
        raise UsageError(f"{where}: content must be a string (got {type(content).__name__})")
    return role, content


# --- one answer ----------------------------------------------------------------------------


@dataclass
class Reply:
    text: str  # the answer as decoded (special tokens dropped, cut at the first stop string)
    new_tokens: int
    seconds: float
    stopped: bool  # Ctrl-C ended it early
    ended_at_once: bool = False  # the model's first new token was EOS


@contextmanager
def _ctrl_c_sets(event: threading.Event) -> Iterator[None]:
    """While the block runs, SIGINT sets `event` instead of raising KeyboardInterrupt: one
    raised inside Thread.join marks a thread that is still running as finished on Python 3.11
    (the cleanup added by bpo-45274), and the answer is then lost. Signal handlers can only be
    installed from the main thread; elsewhere Ctrl-C keeps its default meaning."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _StopOnEvent:
    """A stopping criterion: every row is done once the event is set (checked per token)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), device=input_ids.device)


def stream_reply(loaded: LoadedModel, ids: list[int], config: Any, stops: list[str]) -> Reply:
    """Generate one answer to `ids`, printing it on stdout as it comes (a stop string and what
    follows it are never shown). Ctrl-C stops the answer, not the caller: the model runs in a
    worker thread while this (main) thread, the one Python runs signal handlers in, waits; Ctrl-C
    sets an event that a stopping criterion checks after each token."""
    import torch
    from transformers import StoppingCriteriaList

    model, tokenizer = loaded.model, loaded.tokenizer
    input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)
    stop, done = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}
    config, own = without_stop_strings(config)
    stops = [*stops, *(s for s in own if s not in stops)]
    criteria = StoppingCriteriaList([_StopOnEvent(stop)])
    if stops:  # matched in the answer only, never across the conversation before it
        criteria.append(GeneratedStop(tokenizer, stops, len(ids)))

    def work() -> None:
        try:
            with torch.inference_mode():  # thread-local: entered in the thread that runs
                outcome["out"] = model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    generation_config=config,
                    streamer=make_streamer(tokenizer, stops),
                    stopping_criteria=criteria,
                )
        except BaseException as e:  # re-raised in the caller's thread
            outcome["error"] = e
        finally:
            done.set()

    started = time.perf_counter()
    worker = threading.Thread(target=work, name="llmkit-chat-answer", daemon=True)
    with _ctrl_c_sets(stop):
        worker.start()
        while not done.wait(0.1):
            pass
    worker.join()
    seconds = time.perf_counter() - started
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, ValueError):  # generate's own checks of an option combination
            raise UsageError(f"decoding options: {str(error).strip().splitlines()[0]}")
        raise error
    new = outcome["out"][0, len(ids) :]
    text = tokenizer.decode(new, skip_special_tokens=True)
    eos = config.eos_token_id
    at_once = len(new) > 0 and int(new[0]) in (eos if isinstance(eos, list) else [eos])
    return Reply(cut_at_stop(text, stops), int(new.shape[0]), seconds, stop.is_set(), at_once)
