"""`llmkit eval --tasks`: benchmarks through lm-evaluation-harness, offline.

The numbers are checked against the harness itself: `lm_eval.simple_evaluate` run directly
on the same model, the same built task YAML and the same settings must give the same
accuracy to the last digit. Models are the random tiny GPT-2 (no chat template) and the tiny
Llama with SmolLM2's tokenizer (a chat template), so a run scores in seconds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from llmkit.commands.eval import run_eval
from llmkit.config.requests import EvalRequest
from llmkit.errors import UsageError
from llmkit.evaluation.harness import load_tasks, task_specs
from llmkit.evaluation.tasks_local import materialize, multiple_choice_rows
from llmkit.models.card import PromptFormat, TaskCard, write_card

TASK = "llmkit_chatterbot_mc"
TASK_ZH = "llmkit_chatterbot_mc_zh"


def harness_direct(model_dir: Path, task: str, limit: int | None, **kwargs: Any) -> dict[str, Any]:
    """The harness on its own: HFLM over the folder's model, the built task YAML."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(model_dir), batch_size=32)
    samples = kwargs.pop("samples", False)
    result = simple_evaluate(lm, tasks=[str(materialize(task))], limit=limit, **kwargs)
    assert result is not None
    return result["samples"][task] if samples else result["results"][task]


def metrics_of(out: Path) -> dict[str, Any]:
    return json.loads((out / "metrics.json").read_text())


def test_the_shipped_tasks_are_4_way_multiple_choice_over_held_out_questions() -> None:
    for language, expected in (("english", 85), ("chinese", 42)):
        rows = multiple_choice_rows(language)
        assert len(rows) == expected
        assert all(len(set(r["choices"])) == 4 for r in rows)  # type: ignore[arg-type]
        assert multiple_choice_rows(language) == rows  # the same file on every machine
    labels = [r["label"] for r in multiple_choice_rows("english")]
    assert set(labels) == {0, 1, 2, 3}  # the right answer is not always first


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([TASK, TASK_ZH, "hellaswag", "arc_easy", "mmlu_anatomy", ""]),
            st.text(" \t", max_size=2),
        ),
        max_size=6,
    )
)
def test_task_names_keep_their_order_and_shipped_ones_become_runnable_files(
    names: list[tuple[str, str]],
) -> None:
    given_text = ",".join(pad + name + pad for name, pad in names)
    wanted = [name for name, _ in names if name]
    if not wanted:
        with pytest.raises(UsageError, match="no task names given"):
            task_specs(given_text)
        return
    specs = task_specs(given_text)
    assert len(specs) == len(wanted)
    for name, spec in zip(wanted, specs, strict=True):
        if name in (TASK, TASK_ZH):
            built = yaml.safe_load(Path(spec).read_text(encoding="utf-8"))
            assert built["task"] == name
            data = Path(built["dataset_kwargs"]["data_files"]["test"])
            assert data.is_absolute() and len(data.read_text().splitlines()) in (85, 42)
        else:
            assert spec == name


def test_the_cli_prints_the_accuracy_the_harness_gives_directly(
    tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    cmd = ["eval", "--model", str(tiny_gpt2_dir), "--tasks", TASK, "--limit", "40"]
    proc = run_cli(*cmd, "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    direct = harness_direct(tiny_gpt2_dir, TASK, limit=40)
    metrics = metrics_of(out)
    assert metrics["metrics"][f"{TASK}/acc"] == direct["acc,none"]
    assert metrics["metrics"][f"{TASK}/acc_norm"] == direct["acc_norm,none"]
    assert f"{direct['acc,none']:.4f}" in proc.stdout
    assert "prompt format: plain text (no chat template)" in proc.stderr
    assert "\r" not in proc.stderr  # no progress-bar redraws in a log (stderr is a pipe)
    task = metrics["data"]["tasks"][TASK]
    assert task["version"] == 1.0 and task["n-shot"] == 0
    assert task["n-samples"] == {"original": 85, "effective": 40}
    assert metrics["versions"]["lm_eval"] == metrics["settings"]["lm_eval"] == "0.4.13"
    log = (out / task["samples_log"]).read_text().splitlines()
    assert len(log) == 40 and json.loads(log[0])["doc"]["question"]


def test_a_hub_task_offline_fails_in_one_line_before_any_model_loads(tmp_path: Path) -> None:
    out = tmp_path / "hub"
    proc = run_cli(
        "eval", "--model", "no/such-model", "--tasks", "hellaswag", "--output-dir", str(out)
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: task hellaswag:")
    assert "Rowan/hellaswag" in proc.stderr and TASK in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("no_such_task", "unknown task 'no_such_task': not an lm-evaluation-harness task"),
        ("missing.yaml", "task file missing.yaml does not exist"),
        (" , ", "no task names given"),
    ],
)
def test_bad_task_names_are_refused_in_one_line(
    tmp_path: Path, names: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as caught:
        load_tasks(task_specs(names))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_broken_task_file_is_refused_in_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "mine.yaml"
    data = tmp_path / "absent.jsonl"
    spec.write_text(
        f"task: mine\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: q\n"
        "doc_to_choice: choices\ndoc_to_target: label\n"
    )
    with pytest.raises(UsageError, match=r"^task .*mine.yaml cannot be loaded: .*absent.jsonl"):
        load_tasks(task_specs(str(spec)))


def chat_run(base: Path, tmp_path: Path, prompt: PromptFormat) -> Path:
    """A copy of a model folder with a task card, as `llmkit finetune` writes one."""
    import shutil

    run = tmp_path / ("chat-run" if prompt.chat else "plain-run")
    shutil.copytree(base, run)
    write_card(
        run, TaskCard(task="sft" if prompt.chat else "causal_lm", kind="causal", prompt=prompt)
    )
    return run


@pytest.mark.slow
def test_the_card_picks_the_chat_template_and_system_prompt(
    tiny_llama_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    system = "Answer in one short sentence."
    chat = chat_run(tiny_llama_dir, tmp_path, PromptFormat(chat=True, system=system))
    out = run_eval(
        EvalRequest(model=str(chat), tasks=TASK_ZH, limit=12, output_dir=tmp_path / "chat")
    )
    assert "the chat template through the harness" in capsys.readouterr().err
    direct = harness_direct(
        chat,
        TASK_ZH,
        limit=12,
        apply_chat_template=True,
        system_instruction=system,
        fewshot_as_multiturn=True,
    )
    assert metrics_of(out)["metrics"][f"{TASK_ZH}/acc"] == direct["acc,none"]
    first = json.loads((out / "harness" / f"A-{TASK_ZH}.samples.jsonl").read_text().split("\n")[0])
    context = first["arguments"][0][0]  # what the model was given
    assert system in context and "<|im_start|>user" in context

    # The same weights and tokenizer (it has a chat template), trained plain: scored plain.
    plain = chat_run(tiny_llama_dir, tmp_path, PromptFormat(chat=False))
    out = run_eval(
        EvalRequest(model=str(plain), tasks=TASK_ZH, limit=12, output_dir=tmp_path / "plain")
    )
    assert "plain text" in capsys.readouterr().err
    direct = harness_direct(plain, TASK_ZH, limit=12)
    assert metrics_of(out)["metrics"][f"{TASK_ZH}/acc"] == direct["acc,none"]
    first = json.loads((out / "harness" / f"A-{TASK_ZH}.samples.jsonl").read_text().split("\n")[0])
    assert "<|im_start|>" not in first["arguments"][0][0]


@pytest.mark.slow
def test_ab_on_a_benchmark_gives_an_interval_and_p_value(
    tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    from transformers import GPT2LMHeadModel

    other = tmp_path / "other"
    model = GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir)
    for p in model.parameters():  # a different system on the same tokenizer
        p.data.mul_(3.0)
    model.save_pretrained(other)
    (other / "tokenizer.json").write_bytes((tiny_gpt2_dir / "tokenizer.json").read_bytes())
    for name in ("tokenizer_config.json",):
        (other / name).write_bytes((tiny_gpt2_dir / name).read_bytes())
    out = run_eval(
        EvalRequest(
            model=str(tiny_gpt2_dir),
            model_b=str(other),
            tasks=TASK,
            output_dir=tmp_path / "ab",
        )
    )
    metrics = metrics_of(out)
    key = f"{TASK}/acc"
    a, b = metrics["metrics"][key], metrics["b"]["metrics"][key]
    assert metrics["difference"][key] == pytest.approx(b - a)
    test = metrics["paired_bootstrap"]["metrics"][key]
    assert 0 < test["p_value"] <= 1
    assert test["ci_low"] <= b - a <= test["ci_high"]
    # both systems answered the same 85 questions, each with its own per-sample log
    for label in ("A", "B"):
        log = out / "harness" / f"{label}-{TASK}.samples.jsonl"
        assert len(log.read_text().splitlines()) == 85


@pytest.mark.slow
@pytest.mark.signals
def test_ctrl_c_keeps_finished_tasks_and_resume_continues(
    tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "resume"
    args = ["eval", "--model", str(tiny_gpt2_dir), "--tasks", f"{TASK},{TASK_ZH}"]
    args += ["--limit", "30", "--output-dir", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmkit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # Ctrl-C while the first task runs
        if line.startswith(f"task 1/2 {TASK}"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=600) == 130, rest
    assert f"stopped after task {TASK}: 1 task(s) kept" in rest
    assert (out / "harness" / f"A-{TASK}.json").exists()
    assert not (out / "harness" / f"A-{TASK_ZH}.json").exists()
    assert not (out / "metrics.json").exists()

    again = run_cli(*args)  # without --resume: refused, nothing touched
    assert again.returncode == 2 and "--resume" in again.stderr
    done = run_cli(*args, "--resume")
    assert done.returncode == 0, done.stderr
    assert f"task 1/2 {TASK}: kept from the interrupted run" in done.stderr
    metrics = metrics_of(out)["metrics"]
    assert {f"{TASK}/acc", f"{TASK_ZH}/acc"} <= set(metrics)
    direct = harness_direct(tiny_gpt2_dir, TASK, limit=30)
    assert metrics[f"{TASK}/acc"] == direct["acc,none"]


@pytest.mark.slow
def test_a_lora_run_is_scored_with_its_adapter(tiny_gpt2_dir: Path, tmp_path: Path) -> None:
    """An adapter folder (base named in adapter_config.json): the harness's numbers on the
    base with the adapter merged by hand, and not the base's own."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    config = LoraConfig(
        r=8, target_modules=["c_attn"], init_lora_weights=False, fan_in_fan_out=True
    )
    adapter = tmp_path / "lora-run"
    get_peft_model(base, config).save_pretrained(adapter)  # B random: the adapter matters
    merged = tmp_path / "merged"
    from peft import PeftModel

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir), adapter)
    model.merge_and_unload().save_pretrained(merged)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (merged / name).write_bytes((tiny_gpt2_dir / name).read_bytes())
        (adapter / name).write_bytes((tiny_gpt2_dir / name).read_bytes())

    out = run_eval(EvalRequest(model=str(adapter), tasks=TASK, output_dir=tmp_path / "e"))
    values = metrics_of(out)["metrics"]
    direct = harness_direct(merged, TASK, limit=None)
    assert values[f"{TASK}/acc"] == direct["acc,none"]
    assert values[f"{TASK}/acc_norm"] == direct["acc_norm,none"]
    # the log-likelihoods themselves are the merged model's, not the base's
    first = json.loads((out / "harness" / f"A-{TASK}.samples.jsonl").read_text().split("\n")[0])
    logprob = first["filtered_resps"][0][0]
    base = harness_direct(tiny_gpt2_dir, TASK, limit=1, samples=True)
    assert logprob != pytest.approx(base[0]["filtered_resps"][0][0], abs=1e-4)


def test_a_fine_tune_with_validation_examples_is_benchmarked_not_generated(
    tiny_gpt2_dir: Path, tmp_path: Path
) -> None:
    """`--model RUN` alone scores a text2text run's validation.jsonl; with --tasks it is the
    benchmark that runs (it was refused as two modes at once)."""
    import shutil

    run = tmp_path / "t2t-run"
    shutil.copytree(tiny_gpt2_dir, run)
    write_card(run, TaskCard(task="text2text", kind="causal", prompt=PromptFormat()))
    (run / "validation.jsonl").write_text('{"source": "hi", "target": "hello"}\n')
    out = run_eval(EvalRequest(model=str(run), tasks=TASK, limit=4, output_dir=tmp_path / "e"))
    metrics = metrics_of(out)
    assert metrics["mode"] == "tasks" and set(metrics["metrics"]) == {
        f"{TASK}/acc",
        f"{TASK}/acc_norm",
    }
