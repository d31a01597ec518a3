"""Stop strings: where an answer ends, matched in the text the model generated (never across
the prompt), cut from what is returned, and held back from what is streamed until it is
clear they are not the start of one. `generate`, `chat` and `serve` all stop through here."""

from __future__ import annotations

import sys
from typing import Any


def without_stop_strings(config: Any) -> tuple[Any, list[str]]:
    """(a copy of `config` without stop strings, those stop strings): llmkit matches them
    with `GeneratedStop`, never with transformers' StopStringCriteria (see there)."""
    import copy

    stops = as_list(config.stop_strings)
    if not stops:
        return config, []
    config = copy.deepcopy(config)
    config.stop_strings = None
    return config, stops


class GeneratedStop:
    """A stopping criterion: a row is done once the text it *generated* holds a stop string.

    transformers' `stop_strings` (StopStringCriteria) has two faults that llmkit cannot let
    through: it matches over prompt + answer, so a stop string that begins inside the prompt
    ends the answer early with the rest of the stop string left in it; and it precomputes
    tables of vocabulary x stop length (49,152 tokens x 1,600 characters grew a process by
    350 MB; one 5,000-character stop string took `llmkit serve` from 1.2 to 3.5 GB at peak,
    2.5 GB after: both measured) and caches the last eight. Here each step decodes only the
    newest tokens of each row: a stop string of B UTF-8 bytes spans at most B tokens (every
    token is at least one byte), plus a few for special tokens, which decode to nothing."""

    def __init__(self, tokenizer: Any, stops: list[str], prompt_length: int) -> None:
        self.tokenizer, self.stops, self.start = tokenizer, stops, prompt_length
        self.window = max(len(s.encode()) for s in stops) + 8

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        begin = max(self.start, input_ids.shape[1] - self.window)
        texts = self.tokenizer.batch_decode(input_ids[:, begin:], skip_special_tokens=True)
        done = [any(s in t for s in self.stops) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class AnswerStop:
    """A stopping criterion: a row is done once its answer has begun (leading whitespace is
    not an answer) and then holds a stop string. transformers' stop_strings would end an
    answer at the newline a template's "Answer:" is often followed by, leaving it empty."""

    def __init__(self, tokenizer: Any, stops: list[str], prompt_length: int) -> None:
        self.tokenizer, self.stops, self.start = tokenizer, stops, prompt_length

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        done = [any(s in t.lstrip() for s in self.stops) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut_at_stop(text: str, stops: list[str]) -> str:
    """Text before the earliest stop string (the stop string itself is dropped)."""
    cut = min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def as_list(stops: str | list[str] | None) -> list[str]:
    if stops is None:
        return []
    return [stops] if isinstance(stops, str) else list(stops)


class StopCut:
    """An answer arriving in pieces, shown without any stop string or what follows it: text
    that could be the start of a stop string is held back until the next piece shows it is
    not (stop "\\n\\n": a lone "\\n" waits one token). Streamed generation and the
    server's streams both use it."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.text, self.shown, self.stopped = stops, "", 0, False

    def feed(self, text: str) -> str:
        """What can be shown now of the answer so far, beyond what was shown before."""
        if self.stopped:
            return ""
        self.text += text
        visible = cut_at_stop(self.text, self.stops)
        if len(visible) < len(self.text):
            self.stopped = True
        else:
            visible = visible[: len(visible) - partial_stop(visible, self.stops)]
        new, self.shown = visible[self.shown :], max(self.shown, len(visible))
        return new

    def flush(self) -> str:
        """The held-back tail, once the answer has ended without reaching a stop string."""
        return "" if self.stopped else self.text[self.shown :]


def make_streamer(tokenizer: Any, stops: list[str]) -> Any:
    """A TextStreamer that prints to stdout but never shows a stop string or what follows."""
    from transformers import TextStreamer

    class StopAwareStreamer(TextStreamer):
        def __init__(self) -> None:
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.cut = StopCut(stops)

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            sys.stdout.write(self.cut.feed(text))
            if stream_end:
                sys.stdout.write(self.cut.flush() + "\n")
            sys.stdout.flush()

    return StopAwareStreamer()


def partial_stop(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that begins some stop string."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
