"""`llmkit chat [MODEL]`: a conversation through the model's chat template, answers streamed.

Setup checks everything cheap before the model loads (options, the model's kind, its
tokenizer's chat template); the session then reads lines until /exit, Ctrl-D or Ctrl-C at an
empty prompt (exit 0). Answers go to stdout, everything else to stderr, so
`printf 'Hi\\n' | llmkit chat` prints only the answer.

Decisions (README, `llmkit chat`):
- Ctrl-C during an answer stops it and keeps what was shown in the history (the model then
  knows what it said, and /save records what the user saw); an answer stopped before its
  first word is dropped with its question.
- /save never replaces a file this session did not write unless told `--overwrite`; a file it
  wrote itself is updated by a later /save.
- /load replaces the conversation; the file's system message, if any, replaces the system
  prompt, otherwise the current one stays.
- Encoder-decoder models (T5) are refused: they answer one input and have no chat template.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.config.decoding import DecodingConfig, layered
from llmkit.config.inference import ChatRequest
from llmkit.errors import Fix, UsageError
from llmkit.inference.chat import (
    Conversation,
    context_budget,
    fit,
    has_chat_template,
    newest_that_fit,
    read_conversation,
    save_conversation,
    stream_reply,
)
from llmkit.inference.generate import ENDED_AT_ONCE
from llmkit.io.console import note
from llmkit.io.terminal import LineInput
from llmkit.io.write import check_output
from llmkit.models.load import LoadedModel

HELP = """\
/reset          forget the conversation (the system prompt stays)
/system TEXT    set the system prompt (/system alone removes it)
/save FILE      write the conversation as JSONL, one {"role", "content"} message a line;
                add --overwrite to replace a file this session did not write
/load FILE      continue a saved conversation (replaces this one)
/exit           end the session (also Ctrl-D, or Ctrl-C at an empty prompt)
/help           this list
Ctrl-C while an answer streams stops it; //text sends a message that begins with /"""

NO_TEMPLATE = (
    "{ref}'s tokenizer has no chat template, so it cannot hold a conversation; continue "
    "raw text with `llmkit generate`"
)


def run_chat(req: ChatRequest) -> None:
    """Setup (options, model, format) -> the session (until the user ends it)."""
    session = _setup(req)
    reader = LineInput(history=_history_file())
    if reader.interactive:
        note("chat: /help lists the commands; Ctrl-D or /exit ends")
    try:
        while True:
            try:
                line = reader.read("> ")
            except UsageError as e:  # a line that is not UTF-8: said, and the session goes on
                print(e.render(WORDING), file=sys.stderr, flush=True)
                continue
            if line is None or not session.handle(line):
                break
    finally:
        reader.close()


def _setup(req: ChatRequest) -> Session:
    from llmkit.inference.generate import generation_config_for
    from llmkit.models.card import prompt_format_for, require_kind
    from llmkit.models.load import DEFAULT_CAUSAL_LM, folder_kind, load_generator, load_tokenizer

    options = layered(req.recipe, req.decoding())
    _check_options(options)
    ref = req.model or DEFAULT_CAUSAL_LM
    require_kind(ref, folder_kind(ref), ("causal",), "llmkit chat")
    # The tokenizer loads in a fraction of a second; refuse before the weights (seconds) load.
    if not has_chat_template(load_tokenizer(ref, trust_remote_code=req.trust_remote_code)):
        raise UsageError(NO_TEMPLATE.format(ref=ref))
    loaded = load_generator(ref, trust_remote_code=req.trust_remote_code, use="llmkit chat")
    if loaded.is_encoder_decoder:  # a hub name: its kind was only known once loaded
        require_kind(ref, "seq2seq", ("causal",), "llmkit chat")
    note(f"model: {loaded.description}")
    fmt = prompt_format_for(loaded.card, chat=True, template=req.template, system=req.system)
    if fmt.template is not None or fmt.system is not None:
        own = loaded.card is not None and fmt == loaded.card.prompt
        note(f"prompt format: {fmt.describe()}{' (as the run was trained)' if own else ''}")
    config = generation_config_for(loaded, options)
    if options.seed is not None:  # once: the same seed and the same lines give the same chat
        import torch

        torch.manual_seed(options.seed)
    return Session(
        loaded=loaded,
        conversation=Conversation(system=fmt.system, template=fmt.template),
        config=config,
        stops=options.stop or [],
        budget=context_budget(loaded.model, config.max_new_tokens),
    )


def _check_options(options: DecodingConfig) -> None:
    if (options.num_beams or 1) > 1 or (options.num_return_sequences or 1) > 1:
        raise UsageError(
            "chat streams one answer: the recipe's generate.num_beams and "
            "generate.num_return_sequences must be 1"
        )


def _history_file() -> Path:
    from llmkit.assets import cache_home

    return cache_home() / "chat_history"


# How the session words the fix an error carries (the command line's is llmkit.cli's).
WORDING = {Fix.OVERWRITE: "{message}: /save FILE --overwrite replaces it"}


@dataclass
class Session:
    loaded: LoadedModel
    conversation: Conversation
    config: Any  # transformers GenerationConfig
    stops: list[str]
    budget: int | None  # tokens the conversation may take, leaving room for an answer
    written: set[Path] = field(default_factory=set)  # files this session's /save wrote

    def handle(self, line: str) -> bool:
        """Act on one line; False ends the session. A bad command or file is one `error:`
        line and the session goes on."""
        try:
            if line.startswith("/") and not line.startswith("//"):
                return self.command(line)
            if line.strip():
                self.say(line[1:] if line.startswith("//") else line)
        except UsageError as e:
            print(e.render(WORDING), file=sys.stderr, flush=True)
        return True

    def say(self, text: str) -> None:
        conversation = self.conversation
        conversation.ask(text)
        try:
            ids, dropped = fit(self.loaded.tokenizer, conversation, self.budget)
        except UsageError:
            conversation.retract()
            raise
        if dropped:
            note(
                f"context: dropped the oldest {_exchanges(dropped)} to fit the model's "
                f"context ({self.budget} tokens for the conversation + "
                f"{self.config.max_new_tokens} for the answer)"
            )
        try:
            reply = stream_reply(self.loaded, ids, self.config, self.stops)
        except UsageError:
            conversation.retract()
            raise
        if reply.stopped:
            note("stopped" + ("; the partial answer is kept" if reply.text.strip() else ""))
        elif reply.ended_at_once and not reply.text.strip():
            note(f"note: the answer is empty: {ENDED_AT_ONCE}")
        if reply.stopped and not reply.text.strip():
            conversation.retract()
        else:
            conversation.answer(reply.text.strip())

    def command(self, line: str) -> bool:
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        if name == "/exit":
            return False
        if name == "/help":
            note(HELP)
        elif name == "/reset":
            self.conversation.turns.clear()
            kept = " (the system prompt stays)" if self.conversation.system is not None else ""
            note(f"conversation cleared{kept}")
        elif name == "/system":
            self.conversation.system = rest or None
            note(f"system prompt set: {rest}" if rest else "system prompt removed")
        elif name == "/save":
            self.save(rest)
        elif name == "/load":
            self.load(rest)
        else:
            note(f"unknown command {name}: /help lists them")
        return True

    def save(self, args: str) -> None:
        words = _words(args, "/save")
        overwrite = "--overwrite" in words
        words = [w for w in words if w != "--overwrite"]
        if len(words) != 1:
            raise UsageError("/save takes one FILE (and optionally --overwrite)")
        if not self.conversation.turns:
            raise UsageError("nothing to save yet: the conversation is empty")
        path = Path(words[0]).expanduser()
        check_output(path, overwrite=overwrite or path.resolve() in self.written)
        n = save_conversation(path, self.conversation)
        self.written.add(path.resolve())
        note(f"saved {n} messages to {path}")

    def load(self, args: str) -> None:
        words = _words(args, "/load")
        if len(words) != 1:
            raise UsageError("/load takes one FILE")
        path = Path(words[0]).expanduser()
        system, turns = read_conversation(path)
        n = len(turns) + (system is not None)
        dropped = 0
        if self.budget is not None:  # trimmed now, in time linear in what is kept
            turns, dropped = newest_that_fit(self.loaded.tokenizer, turns, self.budget)
        self.conversation.turns = turns
        if system is not None:
            self.conversation.system = system
        note(f"loaded {n} messages from {path}")
        if dropped:
            note(
                f"context: kept the newest {_exchanges(len(turns) // 2)}; the oldest "
                f"{_exchanges(dropped)} do not fit the model's context ({self.budget} tokens "
                f"for the conversation + {self.config.max_new_tokens} for the answer)"
            )


def _words(args: str, command: str) -> list[str]:
    """Arguments split as a shell would, so a FILE with spaces can be quoted."""
    try:
        return shlex.split(args)
    except ValueError as e:
        raise UsageError(f"{command}: {e}") from None


def _exchanges(n: int) -> str:
    if n == 1:
        return "exchange (question and answer)"
    return f"{n:,} exchanges (questions and answers)"
