"""What a model folder is for, and how to prompt it: the run's *task card*.

A fine-tuned model only answers well when it is prompted the way it was trained: in issue 14
a text2text run trained on "Translate: {source}\\n" scored BLEU 0.00 when `llmkit eval` wrapped
its inputs in the chat template instead, and 11.94 with its own template (LLaMA-Factory
issue 2509 shows the same mismatch: 26% vs 57% accuracy). So every run writes
`llmkit_task.json` beside its weights, and `generate`, `eval` and `classify` read it and
apply it unless a flag says otherwise:

    {"task": "text2text", "kind": "causal",
     "prompt": {"chat": false, "template": "Translate: {source}\\n", "system": null},
     "answer": {"max_new_tokens": 64, "stop": ["\\n"]}, "labels": null}

A folder without a card (a plain Hugging Face folder, a hub model) is described by its
config.json alone (`model_kind`); its prompt format is then the command's default.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from llmkit.errors import UsageError
from llmkit.io.write import write_json

CARD_FILE = "llmkit_task.json"

# What a folder's weights can do; the commands that use each kind.
ModelKind = Literal["causal", "seq2seq", "classifier", "masked", "encoder"]
KIND_USE = {
    "causal": "a causal LM (use llmkit generate, eval)",
    "seq2seq": "an encoder-decoder text-to-text model (use llmkit generate, eval)",
    "classifier": "a sequence classifier (use llmkit classify, eval)",
    "masked": "a masked LM (use llmkit embed, eval, or generate to fill [MASK])",
    "encoder": "an encoder without a head (use llmkit embed)",
}
KIND_NAME = {
    "causal": "a causal LM",
    "seq2seq": "an encoder-decoder model",
    "classifier": "a sequence classifier",
    "masked": "a masked LM",
    "encoder": "an encoder",
}


@dataclass(frozen=True)
class PromptFormat:
    """How a user's prompt becomes the model's input: as it is, through a text template with
    `{source}`, and/or as the user turn of the chat template (with an optional system turn)."""

    chat: bool = False
    template: str | None = None
    system: str | None = None

    def __post_init__(self) -> None:
        if self.template is not None:
            check_template(self.template)
        if self.system is not None and not self.chat:
            raise UsageError("a system prompt is part of a chat template: it needs chat")

    def apply_template(self, prompt: str) -> str:
        return prompt if self.template is None else self.template.format(source=prompt)

    def describe(self) -> str:
        parts = []
        if self.template is not None:
            parts.append(f"template {self.template!r}")
        if self.chat:
            parts.append("chat template" + (" + system prompt" if self.system else ""))
        return ", ".join(parts) or "raw text"


RAW = PromptFormat()


def check_template(template: str) -> None:
    """A template is rendered with str.format: `{source}` must be its only placeholder."""
    try:
        rendered = template.format(source="\0")
    except (KeyError, IndexError, ValueError):
        raise UsageError(
            f"template {template!r}: {{source}} is the only placeholder; write {{{{ and }}}} "
            "for literal braces"
        ) from None
    if "\0" not in rendered:
        raise UsageError(f"template {template!r} must contain {{source}}")


@dataclass(frozen=True)
class TaskCard:
    task: str  # causal_lm, masked_lm, sft, text2text, classification
    kind: ModelKind
    prompt: PromptFormat = RAW
    max_new_tokens: int | None = None  # the answer length the run was evaluated with
    stop: list[str] | None = None  # answers end at these once begun (text2text)
    labels: list[str] | None = None  # classifiers: class names in id order
    # text2text: how its evaluation split text (None: by the references' script), so
    # `llmkit eval` scores the run as its training did (llmkit.evaluation.text)
    bleu_tokenize: str | None = None
    rouge_tokenize: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["answer"] = {"max_new_tokens": out.pop("max_new_tokens"), "stop": out.pop("stop")}
        out["scoring"] = {k: out.pop(k) for k in ("bleu_tokenize", "rouge_tokenize")}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskCard:
        answer = data.get("answer") or {}
        return cls(
            task=str(data["task"]),
            kind=data["kind"],
            prompt=PromptFormat(**(data.get("prompt") or {})),
            max_new_tokens=answer.get("max_new_tokens"),
            stop=answer.get("stop"),
            labels=data.get("labels"),
            bleu_tokenize=(data.get("scoring") or {}).get("bleu_tokenize"),
            rouge_tokenize=(data.get("scoring") or {}).get("rouge_tokenize"),
        )


def write_card(folder: Path, card: TaskCard) -> None:
    write_json(folder / CARD_FILE, card.to_json())


def read_card(folder: str | Path) -> TaskCard | None:
    """The folder's task card, or None (no card, or not a local folder). A damaged card is
    reported in one line rather than silently ignored: it would change every answer."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("kind") not in KIND_USE:
            raise ValueError(f"unknown kind {data.get('kind')!r}")
        return TaskCard.from_json(data)
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as e:
        raise UsageError(
            f"{path} is damaged ({e}); delete it to use the folder as a plain model"
        ) from None


def kind_of_architecture(config: dict[str, Any]) -> ModelKind:
    """From a config.json: `architectures` names the head (GPT2LMHeadModel, T5ForConditional
    Generation, BertForSequenceClassification, BertForMaskedLM, BertModel)."""
    arch = " ".join(str(a) for a in config.get("architectures") or [])
    if "SequenceClassification" in arch:
        return "classifier"
    if config.get("is_encoder_decoder") or "ConditionalGeneration" in arch:
        return "seq2seq"
    if "MaskedLM" in arch:
        return "masked"
    if "CausalLM" in arch or "LMHead" in arch:
        return "causal"
    if config.get("model_type") in ("bert", "roberta", "distilbert", "xlm-roberta", "electra"):
        return "encoder"
    return "causal"  # most hub models without `architectures` are decoders


def model_kind(folder: str | Path) -> ModelKind | None:
    """The kind of a local model folder (a run, an HF folder, a LoRA adapter: its peft task
    type), or None when it is not a local folder (a hub name)."""
    path = Path(folder)
    card = read_card(path)
    if card is not None:
        return card.kind
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        try:
            task_type = json.loads(adapter.read_text(encoding="utf-8")).get("task_type")
        except (ValueError, UnicodeDecodeError, AttributeError):
            return None  # the loader reports a broken adapter config
        peft_kinds: dict[str, ModelKind] = {
            "CAUSAL_LM": "causal",
            "SEQ_2_SEQ_LM": "seq2seq",
            "SEQ_CLS": "classifier",
        }
        return peft_kinds.get(str(task_type))
    config = path / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None  # the loader reports a broken config.json in its own words
    return kind_of_architecture(data) if isinstance(data, dict) else None


def require_kind(ref: str, kind: ModelKind | None, wanted: tuple[ModelKind, ...], use: str) -> None:
    """Refuse a model of the wrong kind in one line that says what it is for."""
    if kind is not None and kind not in wanted:
        needs = " or ".join(KIND_NAME[k] for k in wanted)
        raise UsageError(f"{ref} is {KIND_USE[kind]}; {use} needs {needs}")


def prompt_format_for(
    card: TaskCard | None,
    *,
    chat: bool | None = None,
    template: str | None = None,
    system: str | None = None,
    default_chat: bool = False,
) -> PromptFormat:
    """The run's own prompt format, with each part the user set explicitly on top (a system
    prompt implies the chat template). Without a card: raw text, or the chat template when
    `default_chat`."""
    base = card.prompt if card is not None else PromptFormat(chat=default_chat)
    use_chat = base.chat if chat is None else chat
    if system is not None:
        if chat is False:
            raise UsageError("a system prompt is part of a chat template: drop one of them")
        use_chat = True
    return PromptFormat(
        chat=use_chat,
        template=base.template if template is None else template,
        system=system if system is not None else (base.system if use_chat else None),
    )
