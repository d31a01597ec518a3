"""`llmkit finetune`: recipe schema, prompt masking, packing, LoRA, errors.

Training runs use a tiny Llama (2 layers, width 32) with SmolLM2's real tokenizer and chat
template, so chat rendering is real and a run takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_cli

from llmkit import assets
from llmkit.config.finetune import FinetuneRecipe
from llmkit.config.loader import RECIPES_DIR, load_recipe
from llmkit.data import collate, examples
from llmkit.errors import UsageError
from llmkit.models.load import accepts_logits_to_keep


@pytest.fixture(scope="session")
def qa_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 prompt/completion rows built from chatterbot's training pairs."""
    train, _ = assets.chatterbot_split()
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    rows = [{"prompt": f"Q: {p['question']}\nA: ", "completion": p["answer"]} for p in train[:48]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _recipe(model: Path, out: Path, **sets: Any) -> FinetuneRecipe:
    overrides = [
        f"model.init={model}",
        f"train.output_dir={out}",
        "train.max_steps=3",
        "train.batch_size=4",
        "train.eval_every=null",
        "train.save_every=null",
        "train.log_every=1",
        "data.max_eval_examples=8",
    ]
    overrides += [f"{k}={v}" for k, v in sets.items()]
    return load_recipe(FinetuneRecipe, None, overrides)


# --- schema ------------------------------------------------------------------------------


def test_default_recipe_is_lora_sft_on_smollm2_with_chatterbot() -> None:
    r = load_recipe(FinetuneRecipe, None, [])
    assert (r.task, r.base_model, r.lora.enabled) == ("sft", "embedded:smollm2", True)
    assert r.data.sources == ["embedded:chatterbot"] and r.data.format == "chat"
    assert r.completion_only_loss


def test_every_shipped_finetune_recipe_validates_and_opens_with_its_command() -> None:
    files = sorted((RECIPES_DIR / "finetune").glob("*.yaml"))
    assert len(files) >= 2
    for f in files:
        lines = f.read_text().splitlines()
        assert lines[0] == f"# llmkit finetune recipes/finetune/{f.name}"
        assert "--set" in lines[1]
        load_recipe(FinetuneRecipe, f, [])


def test_classification_defaults_to_minilm_and_rejects_a_generation_metric() -> None:
    assert FinetuneRecipe(task="classification").base_model == "embedded:minilm"
    topics = RECIPES_DIR / "finetune" / "minilm-topics.yaml"
    with pytest.raises(UsageError, match="metric_for_best_model: 'bleu' is not reported"):
        load_recipe(FinetuneRecipe, topics, ["eval.metric_for_best_model=bleu"])


def test_unknown_key_names_the_valid_ones() -> None:
    with pytest.raises(
        UsageError, match=r"lora.rank: unknown key \(valid: enabled, r, alpha, dropout"
    ):
        load_recipe(FinetuneRecipe, None, ["lora.rank=8"])


# --- rendering and masking -----------------------------------------------------------------


def test_chat_labels_mask_exactly_the_rendered_prompt(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    messages = [
        {"role": "user", "content": "What is AI?"},
        {"role": "assistant", "content": "Artificial intelligence."},
    ]
    segments = examples.chat_segments(tok, messages)
    enc = examples.encode_segments(
        tok, segments, max_length=512, completion_only=True, add_special_tokens=False
    )
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert enc.labels[:n_prompt] == [collate.IGNORE_INDEX] * n_prompt
    assert enc.labels[n_prompt:] == enc.input_ids[n_prompt:]
    assert tok.decode(enc.input_ids[n_prompt:]) == "Artificial intelligence.<|im_end|>\n"
    # The whole example is exactly the template's rendering of the chat.
    assert tok.decode(enc.input_ids) == tok.apply_chat_template(messages, tokenize=False)


def test_multi_turn_sharegpt_trains_every_assistant_turn(smollm2_tokenizer: Any) -> None:
    row = {
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
            {"from": "human", "value": "Bye"},
            {"from": "gpt", "value": "Later"},
        ]
    }
    msgs = examples.chat_messages(row, None, "row 1")
    enc = examples.encode_segments(
        smollm2_tokenizer,
        examples.chat_segments(smollm2_tokenizer, msgs),
        max_length=512,
        completion_only=True,
        add_special_tokens=False,
    )
    trained = smollm2_tokenizer.decode(
        [t for t, y in zip(enc.input_ids, enc.labels, strict=True) if y != collate.IGNORE_INDEX]
    )
    assert trained == "Hello<|im_end|>\nLater<|im_end|>\n"


def test_completion_only_off_trains_on_the_prompt_too(smollm2_tokenizer: Any) -> None:
    segs = [("Q: hi\nA: ", False), ("hello<|im_end|>", True)]
    on = examples.encode_segments(smollm2_tokenizer, segs, max_length=64, completion_only=True)
    off = examples.encode_segments(smollm2_tokenizer, segs, max_length=64, completion_only=False)
    n_prompt = len(smollm2_tokenizer("Q: hi\nA: ")["input_ids"])
    assert on.labels.count(collate.IGNORE_INDEX) == n_prompt
    assert off.labels == off.input_ids


# --- packing -----------------------------------------------------------------------------


def test_packed_forward_gives_the_padded_loss_and_logits(tiny_llama_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa")
    model.eval()
    torch.manual_seed(1)
    # Large weights make attention sharp, so a mask crossing examples would show.
    for p in model.parameters():
        p.data.normal_(0, 0.5)
    batch = [
        examples.Encoded(
            list(range(10, 10 + n)), [collate.IGNORE_INDEX] * 3 + list(range(13, 10 + n))
        )
        for n in (7, 12, 9)
    ]
    padded, packed = collate.pad_batch(batch, 0), collate.pack_batch(batch)
    with torch.no_grad():
        a = model(**padded)
        b = model(**packed)
    assert b.loss.item() == pytest.approx(a.loss.item(), abs=1e-5)
    # The second example sits at positions 7..18 of the packed row.
    assert torch.allclose(a.logits[1, :12], b.logits[0, 7:19], atol=1e-4)


def test_logits_only_where_scored_give_the_full_loss_and_gradients(tiny_llama_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert accepts_logits_to_keep(model)
    batch = [
        examples.Encoded(
            list(range(10, 10 + n)), [collate.IGNORE_INDEX] * 4 + list(range(14, 10 + n))
        )
        for n in (7, 12, 9)
    ]
    for full in (collate.pad_batch(batch, 0), collate.pack_batch(batch)):
        kept = collate.keep_scored_logits(full)
        losses, grads = [], []
        for inputs in (full, kept):
            model.zero_grad()
            out = model(**inputs)
            out.loss.backward()
            losses.append(out.loss.item())
            grads.append(model.model.embed_tokens.weight.grad.clone())
        # 3 + 8 + 5 scored targets: the vocabulary projection ran for 16 positions, not 28+.
        assert out.logits.shape[0] == 16 and int(kept["logits_to_keep"].sum()) == 16
        assert losses[1] == pytest.approx(losses[0], abs=1e-6)
        assert torch.allclose(grads[1], grads[0], atol=1e-6)


def test_packed_and_padded_training_follow_the_same_losses(
    tiny_llama_dir: Path, qa_jsonl: Path, tmp_path: Path
) -> None:
    from llmkit.commands.finetune import run_finetune

    runs = {}
    for packing in (False, True):
        r = _recipe(
            tiny_llama_dir,
            tmp_path / str(packing),
            **{
                "data.sources": f"[{qa_jsonl}]",
                "data.format": "prompt_completion",
                "lora.enabled": "false",
                "train.lr": "1.0e-3",
                "packing": str(packing).lower(),
            },
        )
        runs[packing] = run_finetune(r)
    logs = {
        p: [
            json.loads(line)["loss"]
            for line in run.run.metrics_jsonl.read_text().splitlines()
            if '"loss"' in line
        ]
        for p, run in runs.items()
    }
    assert len(logs[True]) == 3
    assert logs[True] == pytest.approx(logs[False], rel=1e-4)
    assert runs[True].metrics["eval_loss"] == pytest.approx(
        runs[False].metrics["eval_loss"], rel=1e-4
    )
    assert runs[True].metrics["eval_loss"] < runs[True].metrics["eval_loss_before"]


# --- LoRA runs ---------------------------------------------------------------------------


def test_lora_trains_only_the_adapter_and_saves_peft_format(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from llmkit.commands.finetune import run_finetune

    out = tmp_path / "lora"
    result = run_finetune(_recipe(tiny_llama_dir, out, **{"train.lr": "1.0e-2"}))
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict()
    base = result.model.get_base_model()
    changed = [
        k
        for k, v in base.state_dict().items()
        if "lora_" not in k and not torch.equal(v, original[k.replace(".base_layer", "")])
    ]
    assert changed == []
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter)
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    for name in ("tokenizer.json", "recipe.yaml", "metrics.jsonl", "metrics.json"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and "eval_loss_before" in metrics
    assert metrics["sample_prompt"].endswith("<|im_start|>assistant\n")  # a held-out chat


def test_missing_lora_target_names_the_modules_there(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from llmkit.commands.finetune import run_finetune

    r = _recipe(tiny_llama_dir, tmp_path / "x", **{"lora.target_modules": "[q_proj,c_attn]"})
    with pytest.raises(
        UsageError,
        match=r"c_attn not in the model \(LlamaForCausalLM has: "
        r"down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj",
    ):
        run_finetune(r)


# --- errors through the CLI: exit 2, one line ------------------------------------------------


def _one_error_line(proc: Any) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_qlora_without_cuda_is_one_line(tmp_path: Path) -> None:
    line = _one_error_line(
        run_cli("finetune", "--set", "qlora=true", "--output-dir", str(tmp_path / "q"))
    )
    assert "qlora: 4-bit loading needs bitsandbytes and a CUDA GPU" in line
    assert not (tmp_path / "q").exists()


def test_missing_column_is_one_line(tiny_llama_dir: Path, qa_jsonl: Path, tmp_path: Path) -> None:
    line = _one_error_line(
        run_cli(
            "finetune",
            "--set",
            f"model.init={tiny_llama_dir}",
            "--set",
            f"data.sources=[{qa_jsonl}]",
            "--set",
            "data.format=prompt_completion",
            "--set",
            "data.completion_column=answer",
            "--output-dir",
            str(tmp_path / "c"),
        )
    )
    assert "no column 'answer' (columns: prompt, completion); set data.completion_column" in line


# --- text2text: generation metrics pick the checkpoint ----------------------------------------


def test_text2text_scores_generations_and_keeps_the_best_rouge_checkpoint(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from llmkit.commands.finetune import run_finetune

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps(
                {"source": f"count to {i}", "target": " ".join(str(k) for k in range(1, i + 1))}
            )
            + "\n"
            for i in range(1, 41)
        )
    )
    out = tmp_path / "t2t"
    r = _recipe(
        tiny_llama_dir,
        out,
        **{
            "task": "text2text",
            "data.sources": f"[{pairs}]",
            "data.template": "'{source} ='",
            "train.max_steps": 4,
            "train.eval_every": 2,
            "train.save_every": 2,
            "train.lr": "1.0e-2",
            "eval.metric_for_best_model": "rougeL",
            "eval.generate_examples": 4,
            "eval.max_new_tokens": 8,
        },
    )
    result = run_finetune(r)
    evals = [
        json.loads(line)
        for line in result.run.metrics_jsonl.read_text().splitlines()
        if '"eval_rougeL"' in line
    ]
    assert len(evals) >= 2 and all("eval_bleu" in e and "eval_chrf" in e for e in evals)
    state = json.loads((result.run.checkpoints()[-1] / "trainer_state.json").read_text())
    assert state["best_metric"] == max(e["eval_rougeL"] for e in evals if e["step"] > 0)
    assert "rougeL" in result.metrics and "bleu_before" in result.metrics
    # Each evaluation says how long its answers took (issue 17).
    assert all(e["eval_generation_seconds"] > 0 for e in evals)
    assert result.metrics["generation_seconds_before"] > 0


def test_text2text_answers_every_validation_example_and_stops_at_a_newline(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """Loss and BLEU/ROUGE are measured on the same validation examples (412 held out but 32
    scored, before), and an answer stops at the end of its line."""
    from llmkit.config.decoding import DecodingConfig
    from llmkit.data.finetune import build_data
    from llmkit.inference.answers import generate_answers
    from llmkit.inference.generate import generate_texts
    from llmkit.models.load import load_generator

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"source": f"s{i}", "target": f"t{i}"}) + "\n" for i in range(60))
    )
    r = _recipe(tiny_llama_dir, tmp_path / "o", task="text2text", **{"data.sources": f"[{pairs}]"})
    assert r.eval.generate_examples is None and r.eval.stop == ["\n"]
    loaded = load_generator(str(tiny_llama_dir))
    data = build_data(r, loaded.tokenizer)
    assert data.eval_pairs is not None and len(data.eval_pairs) == len(data.validation)
    prompts = [p for p, _ in data.eval_pairs[:4]]
    answers = generate_answers(
        loaded.model, loaded.tokenizer, prompts, max_new_tokens=40, stop=["\n"]
    )
    raw = generate_texts(loaded, prompts, DecodingConfig(max_new_tokens=40, do_sample=False))
    # The answer's first line (leading whitespace, which a template's "Answer:" is often
    # followed by, is not an answer), no more.
    assert [r[0].lstrip().split("\n")[0].strip() for r in raw] == answers


# --- real models, end to end (slow) ------------------------------------------------------------


@pytest.mark.slow
def test_minilm_topic_classifier_beats_the_majority_baseline(tmp_path: Path) -> None:
    from llmkit.commands.finetune import run_finetune

    topics = RECIPES_DIR / "finetune" / "minilm-topics.yaml"
    result = run_finetune(
        load_recipe(FinetuneRecipe, topics, [f"train.output_dir={tmp_path / 'c'}"])
    )
    m = result.metrics
    assert m["accuracy"] > m["majority_baseline_accuracy"] + 0.1, m
    assert m["accuracy"] > m["accuracy_before"] and 0 < m["macro_f1"] <= 1
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert len(config["id2label"]) == 21 and "food" in config["id2label"].values()


@pytest.mark.slow
def test_default_finetune_lowers_held_out_loss_and_answers(tmp_path: Path) -> None:
    out = tmp_path / "default"
    proc = run_cli("finetune", "--output-dir", str(out), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    assert metrics["sample_answer"].strip()
    assert "sample answer to a held-out prompt" in proc.stdout
    assert (out / "adapter_model.safetensors").exists()
