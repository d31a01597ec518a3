"""`llmkit generate` and `generate_texts`: same tokens as `model.generate`, in input order.

Most tests use the random tiny GPT-2 (loads in ~0.1 s); SmolLM2 only where a real answer or
well-separated logits matter (it loads in ~1 s from the converted cache).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, run_cli

from llmkit.cli import parse
from llmkit.commands.generate import run_generate
from llmkit.config.decoding import DecodingConfig, layered, load_decoding_from_yaml
from llmkit.config.inference import GenerateRequest
from llmkit.errors import UsageError
from llmkit.inference.generate import (
    encode_prompts,
    generate_texts,
    generate_with_stats,
    length_sorted_batches,
)
from llmkit.inference.stops import make_streamer
from llmkit.models.card import PromptFormat
from llmkit.models.load import LoadedModel, load_generator

CHAT = PromptFormat(chat=True)


def resolve_options(recipe: Path | str | None, flags: dict[str, Any]) -> DecodingConfig:
    """What `llmkit generate --recipe R <flags>` decodes with (the model's config aside)."""
    return layered(recipe, parse(GenerateRequest, flags).decoding())


PROMPTS = ["The king said", "Hi", "A much longer prompt that goes on and on about the sea", "Yes"]


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_generator(str(tiny_gpt2_dir))


@pytest.fixture(scope="module")
def smollm2() -> LoadedModel:
    return load_generator("embedded:smollm2")


def reference_greedy(loaded: LoadedModel, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Plain transformers: one left-padded batch through `model.generate`, then decode."""
    import torch

    tok = loaded.tokenizer
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = loaded.model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return list(tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))


def greedy(n: int, **extra: Any) -> DecodingConfig:
    return DecodingConfig(max_new_tokens=n, do_sample=False, **extra)


# --- same tokens as model.generate ---------------------------------------------------------


def test_greedy_single_prompt_matches_model_generate(tiny: LoadedModel) -> None:
    ours = generate_texts(tiny, ["The king said"], greedy(12))
    assert ours == [reference_greedy(tiny, ["The king said"], 12)]


def test_greedy_batch_matches_left_padded_model_generate(tiny: LoadedModel) -> None:
    # One batch of 4 (lengths 3, 1, 12, 1 tokens): 11 of the 12 columns are padding for "Hi".
    ours = generate_texts(tiny, PROMPTS, greedy(10), batch_size=4)
    assert [c[0] for c in ours] == reference_greedy(tiny, PROMPTS, 10)


def test_small_batches_keep_input_order(tiny: LoadedModel) -> None:
    # Batches of 2, longest first: ([long, king], [Hi, Yes]). Each answer must land on its prompt.
    ours = generate_texts(tiny, PROMPTS, greedy(6), batch_size=2)
    first = reference_greedy(tiny, [PROMPTS[2], PROMPTS[0]], 6)
    second = reference_greedy(tiny, [PROMPTS[1], PROMPTS[3]], 6)
    assert [c[0] for c in ours] == [first[1], second[0], first[0], second[1]]


@pytest.mark.slow
def test_batching_does_not_change_smollm2_answers(smollm2: LoadedModel) -> None:
    prompts = ["The capital of Italy is", "1, 2, 3, 4,", "Water boils at"]
    one_by_one = [generate_texts(smollm2, [p], greedy(8))[0] for p in prompts]
    batched = generate_texts(smollm2, prompts, greedy(8), batch_size=3)
    assert batched == one_by_one
    assert "Rome" in batched[0][0]


def test_batches_are_longest_first_and_cover_every_prompt() -> None:
    batches = length_sorted_batches([3, 1, 12, 1, 7], batch_size=2)
    assert batches == [[2, 4], [0, 1], [3]]


def test_lora_adapter_folder_generates_with_its_base(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    # init_lora_weights=False: random B, so the adapter really changes the output.
    lora = LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(str(tmp_path / "adapter"))

    adapted = load_generator(str(tmp_path / "adapter"))
    assert "LoRA adapter on" in adapted.description
    plain = load_generator(str(tiny_gpt2_dir))
    ours = generate_texts(adapted, PROMPTS[:2], greedy(8), batch_size=2)
    assert [c[0] for c in ours] == reference_greedy(adapted, PROMPTS[:2], 8)
    assert ours != generate_texts(plain, PROMPTS[:2], greedy(8), batch_size=2)


# --- decoding options ------------------------------------------------------------------------


def test_num_return_sequences_gives_that_many_per_prompt(tiny: LoadedModel) -> None:
    out = generate_texts(
        tiny,
        ["a", "b"],
        DecodingConfig(max_new_tokens=4, do_sample=True, num_return_sequences=3, seed=0),
    )
    assert [len(c) for c in out] == [3, 3]
    assert len(set(out[0])) > 1  # three samples from a 50,257-token vocab: not all the same


def test_seed_makes_sampling_reproducible(tiny: LoadedModel) -> None:
    def sample(seed: int) -> list[list[str]]:
        options = DecodingConfig(max_new_tokens=8, temperature=1.0, seed=seed)  # implies sampling
        return generate_texts(tiny, PROMPTS, options, batch_size=2)

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_stop_string_truncates_and_stops_early(tiny: LoadedModel) -> None:
    full = generate_with_stats(tiny, ["The king said"], greedy(12))
    text = full.completions[0][0]
    stop = text[len(text) // 2 : len(text) // 2 + 3]  # 3 characters from the middle
    cut = generate_with_stats(tiny, ["The king said"], greedy(12, stop=[stop]))
    assert cut.completions[0][0] == text[: text.find(stop)]
    assert cut.new_tokens < full.new_tokens == 12


def test_stream_prints_the_completion_but_not_the_stop_string(
    tiny: LoadedModel, capsys: pytest.CaptureFixture[str]
) -> None:
    text = generate_texts(tiny, ["The king said"], greedy(12))[0][0]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    options = greedy(12, stop=[stop])
    streamer = make_streamer(tiny.tokenizer, [stop])
    result = generate_with_stats(tiny, ["The king said"], options, streamer=streamer)
    printed = capsys.readouterr().out
    assert printed == result.completions[0][0] + "\n" == text[: text.find(stop)] + "\n"


def test_chat_prompt_on_smollm2_answers(smollm2: LoadedModel) -> None:
    [[answer]] = generate_texts(
        smollm2, ["What is the capital of France?"], greedy(20), prompt_format=CHAT
    )
    assert "Paris" in answer
    # The template adds SmolLM2's system turn and the assistant header: ~30 tokens, not 8.
    [ids] = encode_prompts(smollm2.tokenizer, ["What is the capital of France?"], CHAT)
    assert smollm2.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


# --- recipe < flags ----------------------------------------------------------------------------


def write_recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "decode.yaml"
    path.write_text(body)
    return path


def test_recipe_values_are_used_and_flags_beat_them(tmp_path: Path, tiny: LoadedModel) -> None:
    recipe = write_recipe(
        tmp_path, "model: ignored\ngenerate:\n  max_new_tokens: 5\n  top_k: 20\n  seed: 3\n"
    )
    from_recipe = resolve_options(recipe, {})
    assert from_recipe.is_set() == {"max_new_tokens": 5, "top_k": 20, "seed": 3}
    assert generate_with_stats(tiny, ["x"], from_recipe).new_tokens == 5

    overridden = resolve_options(recipe, {"max_new_tokens": 2, "top_k": None})
    assert overridden.is_set() == {"max_new_tokens": 2, "top_k": 20, "seed": 3}
    assert generate_with_stats(tiny, ["x"], overridden).new_tokens == 2


def test_greedy_flag_drops_a_recipes_sampling_knobs(tmp_path: Path, tiny: LoadedModel) -> None:
    recipe = write_recipe(tmp_path, "generate:\n  temperature: 5.0\n  max_new_tokens: 6\n")
    sampled = resolve_options(recipe, {})
    assert sampled.sampling_implied() is True
    greedy_wins = resolve_options(recipe, {"do_sample": False})
    assert generate_texts(tiny, ["hello"], greedy_wins) == generate_texts(
        tiny, ["hello"], greedy(6)
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("generate:\n  top_p: 1.5\n", "generate.top_p: Input should be less than or equal to 1"),
        (
            "generate:\n  temperature: 0\n",
            "generate.temperature: must be > 0; for deterministic output use greedy",
        ),
        (
            "generate:\n  temprature: 0.7\n",
            "generate.temprature: unknown key; did you mean 'temperature'?",
        ),
        ("generate:\n  max_new_tokens: many\n", "generate.max_new_tokens: Input should be"),
        ("generate: [1, 2]\n", "generate: expected a mapping"),
    ],
)
def test_bad_recipe_names_the_field(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_decoding_from_yaml(write_recipe(tmp_path, body))


def test_yaml_exponent_without_dot_still_reads_as_a_number(tmp_path: Path) -> None:
    # PyYAML reads `1e-3` as the string "1e-3" (YAML 1.1); it must still be a float.
    options = load_decoding_from_yaml(write_recipe(tmp_path, "generate:\n  min_p: 1e-3\n"))
    assert options.min_p == pytest.approx(0.001)


def test_bad_flags_name_the_flag() -> None:
    with pytest.raises(UsageError, match=r"--top-p: Input should be less than or equal to 1"):
        resolve_options(None, {"top_p": 2.0})
    with pytest.raises(UsageError, match="num_return_sequences=3 needs sampling"):
        resolve_options(None, {"do_sample": False, "num_return_sequences": 3})


SHIPPED = sorted((REPO / "recipes" / "generate").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_generate_recipes_load(path: Path) -> None:
    options = load_decoding_from_yaml(f"generate/{path.stem}")  # by name, as the header shows
    assert options.is_set(), f"{path.name} sets no decoding option"
    assert path.read_text().startswith(f"# llmkit generate --recipe generate/{path.stem} ")


def test_stop_flag_backslash_n_means_newline() -> None:
    assert resolve_options(None, {"stop": ["\\n", "END"]}).stop == ["\n", "END"]


# --- the command -------------------------------------------------------------------------------


def test_file_keeps_order_and_writes_one_line_per_input(
    tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    src = tmp_path / "prompts.jsonl"
    rows = [{"id": i, "question": p} for i, p in enumerate(PROMPTS)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")  # a trailing blank line
    out = tmp_path / "out" / "answers.jsonl"
    req = GenerateRequest(
        model=str(tiny_gpt2_dir),
        input=src,
        field="question",
        output=out,
        batch_size=2,
        max_new_tokens=6,
        do_sample=True,
        num_return_sequences=2,
        seed=0,
    )
    run_generate(req)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["question"]) for r in lines] == [(r["id"], r["question"]) for r in rows]
    assert all(len(r["completions"]) == 2 and r["completion"] == r["completions"][0] for r in lines)


def test_cli_json_on_the_default_model_from_stdin() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "llmkit", "generate", "-", "--max-new-tokens", "5", "--json"],
        input="Once upon a time\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)  # stdout holds the JSON and nothing else
    assert record["prompt"] == "Once upon a time"
    assert record["new_tokens"] == 5 and record["completion"] == record["completions"][0]
    assert "model: embedded:smollm2 (LlamaForCausalLM, 134.5M params)" in proc.stderr


def test_cli_bad_jsonl_exits_2_naming_each_line(tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text('{"prompt": "fine"}\n{"prompt": "oops"\n{"text": "no prompt"}\n')
    proc = run_cli("generate", "--input", str(src))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: 2 problems:",
        f"  - {src}:2: malformed JSON (Expecting ',' delimiter at column 18)",
        f"  - {src}:3: no field 'prompt' (fields: text); pick one with --field",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "missing.txt"], "error: file missing.txt does not exist"),
        (["--input", "empty.txt"], "error: empty.txt is empty: it holds no texts"),
        (["hi", "--top-p", "0"], "error: --top-p: Input should be greater than 0 (got 0.0)"),
        (["hi", "--greedy", "-n", "2"], "num_return_sequences=2 needs sampling or num_beams >= 2"),
        (["hi", "--system", "be brief", "--no-chat"], "error: --system is part of a chat"),
        (
            ["hi", "--template", "no placeholder"],
            "error: --template: template 'no placeholder' must contain {source}",
        ),
        (["--field", "q"], "error: --field and --output go with --input FILE"),
    ],
)
def test_cli_bad_usage_exits_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty.txt").write_text("\n  \n")
    proc = run_cli("generate", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and message in proc.stderr
    assert proc.stdout == ""


# --- long jobs survive interruption (issue 17) ---------------------------------------------------


@pytest.mark.signals
def test_an_interrupted_file_job_resumes_to_the_same_bytes(
    tmp_path: Path, tiny_gpt2_dir: Path
) -> None:
    import random
    import signal
    import time

    # 100 prompts: 400 took over pytest's 600 s limit beside two CPU burners (`make test-load`).
    (tmp_path / "q.txt").write_text("".join(f"Prompt number {i} says\n" for i in range(100)))
    args = ["generate", "--model", str(tiny_gpt2_dir), "--input", "q.txt", "--batch-size", "2",
            "--max-new-tokens", "8", "--sample", "--seed", "3"]  # fmt: skip
    whole = run_cli(*args, "--output", "whole.jsonl", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]

    partial = tmp_path / "out.jsonl.partial"
    chunks = random.Random(0).randint(1, 20)  # interrupt after a random number of batches
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmkit", *args, "--output", "out.jsonl"],
        cwd=tmp_path, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 600  # generous: `make test-load` runs it on a busy machine
    # A header line, then one line per finished prompt.
    while not (partial.exists() and partial.read_text().count("\n") > 2 * chunks):
        assert proc.poll() is None, "the job ended before it could be interrupted"
        assert time.monotonic() < deadline, "no batches finished"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err[-2000:]
    assert "stopped after" in err and "continue with the same command and --resume" in err
    kept = partial.read_text().count("\n") - 1
    assert kept % 2 == 0 and 2 <= kept < 100  # whole batches of 2 prompts
    assert not (tmp_path / "out.jsonl").exists()

    refused = run_cli(*args, "--output", "out.jsonl", cwd=tmp_path)
    assert refused.returncode == 2 and "pass --resume to continue it" in refused.stderr
    resumed = run_cli(*args, "--output", "out.jsonl", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (tmp_path / "out.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert not partial.exists()
