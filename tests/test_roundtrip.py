"""Every task round-trips: a run records how it is prompted (llmkit_task.json), and
`generate`, `eval`, `classify` and `export` use it with no hand-made prompts.

The runs are tiny models built from configs (seconds); what is checked is what a user sees:
the scores `llmkit eval` reports against the ones the run's own final evaluation reported,
labels and probabilities, one-line refusals of the wrong kind of model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli

from llmkit import assets
from llmkit.config.finetune import FinetuneRecipe
from llmkit.config.loader import load_recipe
from llmkit.models.card import CARD_FILE, PromptFormat, read_card

TEMPLATE = "Count: {source} ="


def _finetune(model: Path, out: Path, **sets: Any) -> dict[str, Any]:
    from llmkit.commands.finetune import run_finetune

    overrides = [
        f"model.init={model}",
        f"train.output_dir={out}",
        "train.batch_size=8",
        "train.eval_every=null",
        "train.save_every=null",
        "train.log_every=5",
        "data.max_eval_examples=null",
        *(f"{k}={v}" for k, v in sets.items()),
    ]
    return run_finetune(load_recipe(FinetuneRecipe, None, overrides)).metrics


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def text2text_run(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama fine-tuned (full) to count, with its own template and a validation file."""
    tmp = tmp_path_factory.mktemp("t2t")
    rows = [
        {"source": str(n), "target": " ".join(str(k) for k in range(1, n % 9 + 2))}
        for n in range(120)
    ]
    train = _jsonl(tmp / "train.jsonl", rows[:100])
    _jsonl(tmp / "val.jsonl", rows[100:])
    _finetune(
        tiny_llama_dir,
        tmp / "run",
        task="text2text",
        **{
            "data.sources": f"[{train}]",
            "data.validation": str(tmp / "val.jsonl"),
            "data.template": f"'{TEMPLATE}'",
            "lora.enabled": "false",
            "train.max_steps": 60,
            "train.lr": "1.0e-2",
            "eval.max_new_tokens": 12,
        },
    )
    return tmp / "run"


def test_a_text2text_run_records_its_prompt_format(text2text_run: Path) -> None:
    card = read_card(text2text_run)
    assert card is not None and (card.task, card.kind) == ("text2text", "causal")
    assert card.prompt == PromptFormat(template=TEMPLATE)
    assert (card.max_new_tokens, card.stop) == (12, ["\n"])


def test_eval_reproduces_the_runs_own_scores_with_no_hand_made_prompts(
    text2text_run: Path,
) -> None:
    """The user's report: a translation run scored BLEU 0.00 in `llmkit eval` (chat template
    instead of its own). Now eval applies the run's template, answer length and stop rule, and
    gets exactly the numbers the run's final evaluation logged on the same examples."""
    val = text2text_run.parent / "val.jsonl"
    out = text2text_run.parent / "eval"
    proc = run_cli(
        "eval", "--model", str(text2text_run), "--data", str(val), "--output-dir", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    assert f"template {TEMPLATE!r}" in proc.stderr
    got = json.loads((out / "metrics.json").read_text())["metrics"]
    trained = json.loads((text2text_run / "metrics.json").read_text())
    assert trained["chrf"] > 0  # the run learned something to reproduce
    for key in ("bleu", "chrf", "rouge1", "rougeL"):
        assert round(got[key], 3) == trained[key], key
    # A flag overrides the run's format: the chat template gives other answers.
    forced = text2text_run.parent / "eval-chat"
    proc = run_cli(
        "eval",
        "--model",
        str(text2text_run),
        "--data",
        str(val),
        "--chat",
        "--template",
        "{source}",
        "--output-dir",
        str(forced),
    )
    assert proc.returncode == 0, proc.stderr
    preds = [json.loads(x)["prediction"] for x in (out / "predictions.jsonl").open()]
    chat_preds = [json.loads(x)["prediction"] for x in (forced / "predictions.jsonl").open()]
    assert preds != chat_preds


CHINESE_DIGITS = "一二三四五六七八九"


def test_a_chinese_text2text_run_scores_the_same_in_training_and_in_eval(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """The round trip in Chinese (issue 22): the run's final evaluation and `llmkit eval` of
    the run split the answers by the references' script alike (sacreBLEU `zh`, ROUGE over
    characters), and the numbers are not the 0 that splitting on spaces gave."""
    rows = [
        {"source": f"数到{n % 9 + 1}", "target": CHINESE_DIGITS[: n % 9 + 1] + "。"}
        for n in range(120)
    ]
    _jsonl(tmp_path / "train.jsonl", rows[:100])
    val = _jsonl(tmp_path / "val.jsonl", rows[100:])
    run = tmp_path / "run"
    _finetune(
        tiny_llama_dir,
        run,
        task="text2text",
        **{
            "data.sources": f"[{tmp_path / 'train.jsonl'}]",
            "data.validation": str(val),
            "data.template": "'{source}：'",
            "lora.enabled": "false",
            "train.max_steps": 60,
            "train.lr": "1.0e-2",
            "eval.max_new_tokens": 12,
        },
    )
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["chrf"] > 0 and trained["rouge1"] > 0  # it learned some characters
    out = tmp_path / "eval"
    proc = run_cli("eval", "--model", str(run), "--data", str(val), "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    got = json.loads((out / "metrics.json").read_text())
    for key in ("bleu", "chrf", "rouge1", "rougeL"):
        assert round(got["metrics"][key], 3) == trained[key], key
    assert "tok:zh" in got["signatures"]["bleu"]
    assert got["details"]["text"]["rouge_tokenize"] == "char"


def test_generate_applies_the_runs_template(text2text_run: Path) -> None:
    from llmkit.inference.answers import generate_answers
    from llmkit.models.load import load_generator

    proc = run_cli("generate", "--model", str(text2text_run), "--max-new-tokens", "12", "7")
    assert proc.returncode == 0, proc.stderr
    assert "prompt format: template 'Count: {source} =' (as the run was trained)" in proc.stderr
    loaded = load_generator(str(text2text_run))
    [expected] = generate_answers(
        loaded.model,
        loaded.tokenizer,
        [TEMPLATE.format(source="7")],
        max_new_tokens=12,
        stop=["\n"],
    )
    assert proc.stdout.strip() == expected  # the answer the run's evaluation would give


# --- chat SFT ------------------------------------------------------------------------------


def test_a_chat_run_is_prompted_with_its_chat_template_and_system_prompt(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    train, _ = assets.chatterbot_split()
    rows = [
        {
            "messages": [
                {"role": "user", "content": p["question"]},
                {"role": "assistant", "content": p["answer"]},
            ]
        }
        for p in train[:40]
    ]
    data = _jsonl(tmp_path / "chat.jsonl", rows)
    _finetune(
        tiny_llama_dir,
        tmp_path / "chat",
        **{"data.sources": f"[{data}]", "data.system": "'Be brief.'", "train.max_steps": 2},
    )
    card = read_card(tmp_path / "chat")
    assert card is not None and card.prompt == PromptFormat(chat=True, system="Be brief.")
    proc = run_cli("generate", "--model", str(tmp_path / "chat"), "--max-new-tokens", "4", "Hi")
    assert proc.returncode == 0, proc.stderr
    assert "prompt format: chat template + system prompt (as the run was trained)" in proc.stderr
    # --no-chat overrides it (the system prompt goes with the chat template).
    proc = run_cli(
        "generate", "--model", str(tmp_path / "chat"), "--max-new-tokens", "4", "--no-chat", "Hi"
    )
    assert proc.returncode == 0 and "prompt format: raw text" in proc.stderr


# --- classification ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_run(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cls")
    train, held_out = assets.chatterbot_split()
    topics = ("food", "history", "sports")

    def rows(pairs: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{"text": p["question"], "label": p["topic"]} for p in pairs if p["topic"] in topics]

    data = _jsonl(tmp / "train.jsonl", rows(train))
    _jsonl(tmp / "val.jsonl", rows(held_out))
    _finetune(
        tiny_bert_dir,
        tmp / "run",
        task="classification",
        **{
            "data.sources": f"[{data}]",
            "data.validation": str(tmp / "val.jsonl"),
            "data.max_length": 32,
            "packing": "false",
            "lora.enabled": "false",
            "train.max_steps": 6,
            "train.lr": "1.0e-3",
        },
    )
    return tmp / "run"


def test_classify_prints_a_label_and_its_probability(classifier_run: Path) -> None:
    card = read_card(classifier_run)
    assert card is not None and card.labels == ["food", "history", "sports"]
    proc = run_cli("classify", "--model", str(classifier_run), "who won the world cup?")
    assert proc.returncode == 0, proc.stderr
    label, prob = proc.stdout.strip().split("\t")
    as_json = run_cli("classify", "-m", str(classifier_run), "--json", "who won the world cup?")
    [row] = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert label == row["label"] in card.labels and set(row["scores"]) == set(card.labels)
    assert float(prob) == round(row["score"], 4) == round(max(row["scores"].values()), 4)


def test_classify_a_file_writes_one_jsonl_row_per_text(
    classifier_run: Path, tmp_path: Path
) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("what do you eat?\nwho was napoleon?\n\nis football fun?\n")
    out = tmp_path / "labels.jsonl"
    proc = run_cli("classify", "-m", str(classifier_run), "--input", str(texts), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == [
        "what do you eat?",
        "who was napoleon?",
        "is football fun?",
    ]
    for r in rows:
        assert set(r["scores"]) == {"food", "history", "sports"}
        assert abs(sum(r["scores"].values()) - 1) < 1e-4
        assert r["score"] == max(r["scores"].values()) == r["scores"][r["label"]]


def test_eval_scores_a_classifier_as_its_run_did(classifier_run: Path) -> None:
    out = classifier_run.parent / "eval"
    val = classifier_run.parent / "val.jsonl"
    proc = run_cli(
        "eval", "--model", str(classifier_run), "--data", str(val), "--output-dir", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "metrics.json").read_text())
    trained = json.loads((classifier_run / "metrics.json").read_text())
    assert report["metrics"]["accuracy"] == pytest.approx(100 * trained["accuracy"])
    assert report["metrics"]["macro_f1"] == pytest.approx(100 * trained["macro_f1"])
    per_class = report["details"]["per_class"]
    assert sum(v["support"] for v in per_class.values()) == len(val.read_text().splitlines())
    assert "history: precision" in proc.stdout


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (
            ["generate", "hello"],
            "is a sequence classifier (use llmkit classify, eval); "
            "generation needs a causal LM or an encoder-decoder model",
        ),
        (["eval", "--text", "{text}"], "is a sequence classifier"),
    ],
)
def test_a_classifier_is_refused_by_text_generation(
    classifier_run: Path, tmp_path: Path, command: list[str], message: str
) -> None:
    text = tmp_path / "t.txt"
    text.write_text("some text\n")
    args = [a.replace("{text}", str(text)) for a in command]
    proc = run_cli(*args, "--model", str(classifier_run), cwd=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and message in proc.stderr


def test_embed_refuses_a_causal_lm_in_one_line(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    texts = tmp_path / "t.txt"
    texts.write_text("a\nb\n")
    proc = run_cli(
        "embed", str(texts), "-o", str(tmp_path / "e.npy"), "--model", str(tiny_gpt2_dir)
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: {tiny_gpt2_dir} is a causal LM (use llmkit generate, eval); embedding needs "
        "an encoder or a masked LM or a sequence classifier"
    )
    assert not (tmp_path / "e.npy").exists()


def test_the_card_file_is_written_by_pretraining_too(tmp_path: Path) -> None:
    proc = run_cli(
        "pretrain",
        "recipes/pretrain/tiny-cpu.yaml",
        "--max-steps",
        "2",
        "--output-dir",
        str(tmp_path / "p"),
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr
    card = json.loads((tmp_path / "p" / CARD_FILE).read_text())
    assert card["task"] == "causal_lm" and card["kind"] == "causal"
    assert card["prompt"] == {"chat": False, "template": None, "system": None}
