"""An Ollama Modelfile beside a GGUF file, so `ollama create NAME -f Modelfile` works unchanged.

Ollama's TEMPLATE is a Go template over `.System`, `.Prompt` and `.Response`, not Jinja, so
the run's chat template is not copied but *rendered*: with marker strings in place of the
system prompt, the user turn and the answer, and the text between the markers becomes the
literal text around `{{ .System }}`, `{{ .Prompt }}` and `{{ .Response }}`. What the template
does with no system turn (SmolLM2's adds a default one) is rendered too, as the `else` branch.
For runs prompted without the chat template the Modelfile carries the run's own text template
("Translate: {source}\\n" -> "Translate: {{ .Prompt }}\\n").
"""

from __future__ import annotations

from typing import Any

from llmkit.models.card import TaskCard

# Markers no chat template contains; they only ever pass through the Jinja renderer.
SYSTEM, USER, ANSWER = "\x01SYSTEM\x01", "\x01USER\x01", "\x01ANSWER\x01"


def go_literal(text: str) -> str:
    """Literal text in a Go template: `{{` opens an action, so it is written as an action
    printing the string."""
    return text.replace("{{", '{{ "{{" }}')


def chat_go_template(tokenizer: Any, prompt: str = "{{ .Prompt }}") -> tuple[str, str | None]:
    """(TEMPLATE text, the turn-ending text after an answer, e.g. "<|im_end|>") from a
    tokenizer's Jinja chat template; `prompt` is what stands in the user turn."""

    def render(messages: list[dict[str, str]], gen: bool) -> str:
        return str(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        )

    user = {"role": "user", "content": USER}
    with_system = render([{"role": "system", "content": SYSTEM}, user], gen=True)
    before_user_default, after_user = render([user], gen=True).split(USER)
    answered = render([user, {"role": "assistant", "content": ANSWER}], gen=False)
    end_of_turn = answered.split(ANSWER, 1)[1] if ANSWER in answered else ""
    if SYSTEM in with_system:
        before_system, rest = with_system.split(SYSTEM)
        between = rest.split(USER)[0]
        head = (
            f"{{{{ if .System }}}}{go_literal(before_system)}{{{{ .System }}}}"
            f"{go_literal(between)}{{{{ else }}}}{go_literal(before_user_default)}{{{{ end }}}}"
        )
    else:  # a template without a system role (Gemma's): the system text is dropped
        head = go_literal(before_user_default)
    template = f"{head}{prompt}{go_literal(after_user)}{{{{ .Response }}}}"
    return template + go_literal(end_of_turn), end_of_turn.strip() or None


def quoted(text: str) -> str:
    """A Modelfile string: "..." where it fits, else \"\"\"...\"\"\" (newlines, quotes)."""
    if '"' not in text and "\n" not in text and "\\" not in text:
        return f'"{text}"'
    return f'"""{text}"""'


def modelfile(gguf_name: str, card: TaskCard | None, tokenizer: Any) -> str:
    """The Modelfile text: FROM the file beside it, TEMPLATE, SYSTEM and stop parameters."""
    lines = [
        "# Ollama: ollama create NAME -f Modelfile && ollama run NAME",
        "# Written by llmkit export --format gguf; the GGUF file holds the same chat template.",
        f"FROM ./{gguf_name}",
    ]
    chat = card.prompt.chat if card is not None else tokenizer.chat_template is not None
    # The run's text template ("Translate: {source}\n") wraps the prompt, in a chat turn or not.
    text = card.prompt.template if card is not None and card.prompt.template else "{source}"
    before, after = (t.replace("{{", "{").replace("}}", "}") for t in text.split("{source}", 1))
    prompt = f"{go_literal(before)}{{{{ .Prompt }}}}{go_literal(after)}"
    stops: list[str] = []
    if chat and tokenizer.chat_template is not None:
        template, end = chat_go_template(tokenizer, prompt)
        stops += [end] if end else []
    else:
        template = prompt
    lines.append(f"TEMPLATE {quoted(template)}")
    if card is not None and card.prompt.system:
        lines.append(f"SYSTEM {quoted(card.prompt.system)}")
    stops += (card.stop or []) if card is not None else []
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    lines += [f"PARAMETER stop {quoted(s)}" for s in dict.fromkeys(stops)]
    if card is not None and card.max_new_tokens:
        lines.append(f"PARAMETER num_predict {card.max_new_tokens}")
    return "\n".join(lines) + "\n"
