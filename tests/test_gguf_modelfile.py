"""`llmkit export --format gguf`, the parts that need no llama.cpp build: the Ollama Modelfile
(its Go TEMPLATE gives the same text as the run's Jinja chat template) and the one-line
refusals that come before any work."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from llmkit.export.modelfile import chat_go_template, modelfile
from llmkit.models.card import PromptFormat, TaskCard
from tests.conftest import run_cli


def render_go(template: str, system: str, prompt: str, response: str) -> str:
    """The subset of Go's text/template a Modelfile TEMPLATE uses here, as Ollama runs it:
    `{{ if .System }}A{{ else }}B{{ end }}`, `{{ .System }}`, `{{ .Prompt }}`,
    `{{ .Response }}` and `{{ "{{" }}` (a literal)."""

    def branch(m: re.Match[str]) -> str:
        return m.group(1) if system else m.group(2)

    out = re.sub(
        r"\{\{ if \.System \}\}(.*?)\{\{ else \}\}(.*?)\{\{ end \}\}", branch, template, flags=re.S
    )
    values = {".System": system, ".Prompt": prompt, ".Response": response, '"{{"': "{{"}
    return re.sub(r"\{\{ (\.System|\.Prompt|\.Response|\"\{\{\") \}\}", lambda m: values[m[1]], out)


def hf_text(tok: Any, system: str | None, prompt: str, response: str) -> str:
    turns = [{"role": "system", "content": system}] if system else []
    turns += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return str(tok.apply_chat_template(turns, tokenize=False))


# Many scripts, and the characters a template or a Modelfile string could trip on.
TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
    | st.sampled_from(list('{}"\\\n<>|%')),
    min_size=1,
    max_size=20,
)


@settings(max_examples=40, deadline=None)
@given(system=st.none() | TEXT, prompt=TEXT, response=TEXT)
def test_the_ollama_template_renders_what_the_chat_template_does(
    smollm2_tokenizer: Any, system: str | None, prompt: str, response: str
) -> None:
    """SmolLM2's template (a default system turn when none is given, <|im_end|> after each
    turn): Ollama's text for one exchange is the Jinja template's, character for character."""
    template, end = chat_go_template(smollm2_tokenizer)
    assert end == "<|im_end|>"
    got = render_go(template, system or "", prompt, response)
    assert got == hf_text(smollm2_tokenizer, system, prompt, response)


def test_the_modelfile_carries_the_runs_system_prompt_and_stops(smollm2_tokenizer: Any) -> None:
    card = TaskCard(
        task="sft",
        kind="causal",
        prompt=PromptFormat(chat=True, template="Q: {source}", system='Be "brief".\nOne line.'),
        max_new_tokens=48,
        stop=["\n\n"],
    )
    text = modelfile("run-q8_0.gguf", card, smollm2_tokenizer)
    lines = text.splitlines()
    assert "FROM ./run-q8_0.gguf" in lines
    assert 'SYSTEM """Be "brief".\nOne line."""' in text
    assert 'PARAMETER stop "<|im_end|>"' in lines
    assert 'PARAMETER stop """\n\n"""' in text
    assert "PARAMETER num_predict 48" in lines
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S)
    assert template is not None
    # The run's text template wraps the prompt inside the user turn.
    assert render_go(template[1], "S", "hi", "yo") == hf_text(smollm2_tokenizer, "S", "Q: hi", "yo")


def test_a_raw_text_run_gets_its_own_template(tiny_gpt2_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    card = TaskCard(
        task="text2text",
        kind="causal",
        prompt=PromptFormat(template="Translate {{{{x}}}}: {source}\n"),  # "{{x}}" in the text
        stop=["\n"],
    )
    text = modelfile("m.gguf", card, tok)
    assert 'TEMPLATE """Translate {{ "{{" }}x}}: {{ .Prompt }}\n"""' in text
    assert render_go('Translate {{ "{{" }}x}}: {{ .Prompt }}\n', "", "ciao", "") == (
        "Translate {{x}}: ciao\n"
    )
    assert 'PARAMETER stop """\n"""' in text and 'PARAMETER stop "<|endoftext|>"' in text
    assert "SYSTEM" not in text


def test_gguf_export_refusals_come_first_in_one_line(
    tiny_bert_dir: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """Before any model loads: a model llama.cpp cannot run as a text generator, missing
    llama.cpp tools, options that belong to GGUF alone. Nothing is written."""
    out = tmp_path / "out"
    cases = [
        (
            ["export", str(tiny_bert_dir), "--format", "gguf", "-o", str(out)],
            "GGUF export takes causal LMs",
        ),
        (["export", str(tiny_llama_dir), "--quant", "q8_0", "-o", str(out)], "format gguf only"),
        (
            ["export", str(tiny_llama_dir), "--format", "gguf", "--quant", "q3", "-o", str(out)],
            "q4_k_m",
        ),
        (["export", str(tmp_path), "--format", "gguf", "-o", str(out)], "not a model folder"),
    ]
    for args, words in cases:
        proc = run_cli(*args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    empty = tmp_path / "no-llama-cpp"
    empty.mkdir()
    proc = run_cli(
        "export", str(tiny_llama_dir), "--format", "gguf", "-o", str(out),
        env={"LLMKIT_LLAMA_CPP": str(empty)},
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "make gguf" in proc.stderr
    assert not out.exists()
