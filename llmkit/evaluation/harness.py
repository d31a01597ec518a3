"""Standard benchmarks through EleutherAI's lm-evaluation-harness (`lm_eval`), run on the
model llmkit loaded itself (a run, a LoRA run, an exported folder, a hub name, the default).

Flow: `task_specs` (shipped names become runnable YAML, files are checked) -> `load_tasks`
(every task's data, before any model loads: a hub task offline fails here in one line) ->
`harness_lm` (HFLM around llmkit's model and tokenizer) -> `run_tasks`: one
`lm_eval.simple_evaluate` call per task, so each finished task is saved at once
(harness/<system>-<task>.json + .samples.jsonl, the harness's per-sample log) and an
interrupted run keeps it; resuming reuses the tasks whose saved settings match.

The prompt format is the run's (llmkit.models.card): a chat run is scored through the
harness's own chat support (`apply_chat_template`, `system_instruction`, few-shot examples
as turns), a plain run as raw text. Values keep the harness's units and names
(`<task>/acc` is 0-1, as its tables and published numbers show it).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.config.requests import EvalRequest
from llmkit.errors import Fix, UsageError
from llmkit.evaluation import significance
from llmkit.evaluation.report import SystemScores
from llmkit.evaluation.tasks_local import materialize, shipped_tasks
from llmkit.io.console import note
from llmkit.io.interrupt import StopFlag
from llmkit.io.write import write_json, write_jsonl
from llmkit.models.card import PromptFormat, prompt_format_for

HARNESS_DIR = "harness"  # inside the evaluation folder


@dataclass
class TaskScores:
    """One system's results on one harness task."""

    task: str
    values: dict[str, float]  # "<task>/<metric>[/<filter>]" -> the harness's value
    record: dict[str, Any]  # what harness/<system>-<task>.json holds
    examples: dict[str, significance.ExampleStats] = field(default_factory=dict)


def task_specs(names: str) -> list[str]:
    """What the harness loads for each comma-separated name: a shipped task's built YAML, a
    YAML file's absolute path, or the name itself (a harness task, group or tag)."""
    specs = []
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        if name in shipped_tasks():
            specs.append(str(materialize(name)))
        elif name.lower().endswith((".yaml", ".yml")):
            if not Path(name).is_file():
                raise UsageError(f"task file {name} does not exist")
            specs.append(str(Path(name).resolve()))
        else:
            specs.append(name)
    if not specs:
        raise UsageError("no task names given (for example llmkit_chatterbot_mc)")
    return specs


def load_tasks(specs: Sequence[str]) -> dict[str, Any]:
    """{task name: harness Task} with its data loaded; groups (mmlu) expand to their tasks."""
    quiet_harness()
    manager = task_manager()
    tasks: dict[str, Any] = {}
    for spec in specs:
        try:
            tasks.update(manager.load([spec])["tasks"])
        except KeyError:
            raise UsageError(
                f"unknown task '{spec}': not an lm-evaluation-harness task, group or tag, nor "
                f"a task .yaml file (llmkit ships {', '.join(shipped_tasks())})"
            ) from None
        except ConnectionError as e:  # datasets' "Couldn't reach 'Rowan/hellaswag' on the Hub"
            raise UsageError(
                f"task {spec}: its data is not on this machine and the hub cannot be reached "
                f"({_first_line(e)}); tasks with local data run offline: "
                f"{', '.join(shipped_tasks())} or a task .yaml with local data_files"
            ) from None
        except Exception as e:  # a broken YAML, a missing data file: the harness's message
            raise UsageError(f"task {spec} cannot be loaded: {_first_line(e)}") from None
    return tasks


@functools.cache
def task_manager() -> Any:
    """The harness's index of its ~14,700 task, group and tag names: ~13 s to build on a busy
    2-core machine, so once per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def quiet_harness() -> None:
    """The harness logs every setting at INFO and warns that a loaded model "may ignore
    model arguments" (we pass none): llmkit prints what matters itself.

    `simple_evaluate` ends by recording its environment: torch's collect_env (16.7 s per
    call on a busy 2-core machine, and llmkit calls it once per task) and `git describe` in
    the user's working directory (not lm_eval's; outside a repository git prints "fatal: not
    a git repository" on stderr). llmkit records the versions that matter in metrics.json, so
    both are skipped; the scores are untouched (they are computed before)."""
    import lm_eval.evaluator as evaluator

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    setattr(evaluator, "add_env_info", _versions_only)  # noqa: B010 (patching a library)
    setattr(evaluator, "get_git_commit_hash", lambda: None)  # noqa: B010


def _versions_only(storage: dict[str, Any]) -> None:
    from llmkit.io.provenance import versions

    found = versions(("lm_eval", "transformers"))
    storage["lm_eval_version"] = found.get("lm_eval")
    storage["transformers_version"] = found.get("transformers")


def harness_lm(loaded: Any, batch_size: int) -> Any:
    """HFLM around llmkit's model and tokenizer; a LoRA adapter is merged once (the same
    numbers as applied, without peft's extra matmul per layer on every request)."""
    from lm_eval.models.huggingface import HFLM

    from llmkit.io.quiet import plain_output

    class QuietHFLM(HFLM):
        """The harness's request bars follow llmkit's rule (llmkit.io.quiet): off when
        stderr is not a terminal, where each redraw would be a line of litter in a log
        (~340 for one run of llmkit_chatterbot_mc); the "task i/n" lines remain."""

        def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or plain_output())

        def loglikelihood_rolling(self, requests: Any, disable_tqdm: bool = False) -> Any:
            quiet = disable_tqdm or plain_output()
            return super().loglikelihood_rolling(requests, disable_tqdm=quiet)

        def generate_until(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return super().generate_until(requests, disable_tqdm=disable_tqdm or plain_output())

    model = loaded.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    backend = "seq2seq" if loaded.is_encoder_decoder else "causal"
    return QuietHFLM(
        pretrained=model, tokenizer=loaded.tokenizer, batch_size=batch_size, backend=backend
    )


def describe_format(fmt: PromptFormat) -> str:
    if not fmt.chat:
        return "plain text (no chat template)"
    system = f", system prompt {fmt.system!r}" if fmt.system else ""
    return f"the chat template through the harness (few-shot examples as turns{system})"


def run_tasks(
    label: str,
    lm: Any,
    tasks: dict[str, Any],
    settings: dict[str, Any],
    fmt: PromptFormat,
    out_dir: Path,
    *,
    resume: bool,
) -> list[TaskScores]:
    """Score `tasks` one by one; each is saved when it finishes (Ctrl-C keeps it)."""
    from lm_eval import simple_evaluate

    quiet_harness()
    folder = out_dir / HARNESS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    scores = []
    for i, (name, task) in enumerate(tasks.items(), start=1):
        kept = _saved(folder, label, name, settings) if resume else None
        if kept is not None:
            note(f"task {i}/{len(tasks)} {name}: kept from the interrupted run")
            scores.append(kept)
            continue
        with StopFlag(f"task {name}") as stop:  # Ctrl-C from here on: the task finishes
            note(f"task {i}/{len(tasks)} {name} ({label})")
            start = time.perf_counter()
            result = simple_evaluate(
                lm,
                tasks=[task],
                num_fewshot=settings["num_fewshot"],
                limit=settings["limit"],
                apply_chat_template=fmt.chat,
                system_instruction=fmt.system,
                fewshot_as_multiturn=fmt.chat,
                log_samples=True,
            )
            assert result is not None  # None only on ranks other than 0
            kept = _save(folder, label, name, result, settings, time.perf_counter() - start)
            scores.append(kept)
            note(f"task {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in kept.values.items()))
            left = len(tasks) - i
            stop.stop(f"stopped after task {name}: {i} task(s) kept in {folder}, {left} left")
    return scores


def check_resumable(out_dir: Path, *, resume: bool, finished: bool) -> None:
    """Saved task results with no metrics.json are an interrupted run's: continued only
    when asked (a finished folder being overwritten starts over)."""
    folder = out_dir / HARNESS_DIR
    if folder.is_dir() and any(folder.iterdir()) and not resume and not finished:
        raise UsageError(f"{folder} holds an interrupted benchmark run", fix=Fix.RESUME_PARTIAL)


def _paths(folder: Path, label: str, name: str) -> tuple[Path, Path]:
    return folder / f"{label}-{name}.json", folder / f"{label}-{name}.samples.jsonl"


def _save(
    folder: Path, label: str, name: str, result: dict[str, Any], settings: dict[str, Any], s: float
) -> TaskScores:
    from lm_eval.utils import handle_non_serializable

    samples = json.loads(json.dumps(result["samples"][name], default=handle_non_serializable))
    record = {
        "task": name,
        "version": result["versions"].get(name),
        "n-shot": result["n-shot"].get(name),
        "n-samples": result["n-samples"].get(name),
        "results": result["results"][name],
        "higher_is_better": result["higher_is_better"].get(name),
        "settings": settings,
        "lm_eval_version": result.get("lm_eval_version"),
        "seconds": round(s, 2),
    }
    json_path, samples_path = _paths(folder, label, name)
    write_jsonl(samples_path, samples)  # the log first: a .json means both are complete
    write_json(json_path, record)
    return _scores(name, record, samples)


def _saved(folder: Path, label: str, name: str, settings: dict[str, Any]) -> TaskScores | None:
    json_path, samples_path = _paths(folder, label, name)
    if not json_path.exists():
        return None
    record = json.loads(json_path.read_text(encoding="utf-8"))
    if record.get("settings") != settings:
        return None  # scored with other settings: score it again
    lines = samples_path.read_text(encoding="utf-8").splitlines()
    return _scores(name, record, [json.loads(line) for line in lines if line.strip()])


def _scores(name: str, record: dict[str, Any], samples: list[dict[str, Any]]) -> TaskScores:
    """The harness's numeric results, and per-sample statistics for every value that is the
    mean of its samples' values (acc, acc_norm, exact_match: the paired bootstrap resamples
    them; corpus-level values such as BLEU are left untested)."""
    values: dict[str, float] = {}
    examples: dict[str, significance.ExampleStats] = {}
    for key, value in record["results"].items():
        metric, _, filt = key.partition(",")
        if not filt or "_stderr" in metric or not isinstance(value, int | float):
            continue
        label = f"{name}/{metric}" + ("" if filt == "none" else f"/{filt}")
        values[label] = float(value)
        rows = sorted(
            (s["doc_id"], s[metric])
            for s in samples
            if s.get("filter") == filt and isinstance(s.get(metric), int | float)
        )
        per_doc = [float(v) for _, v in rows]
        if per_doc and abs(sum(per_doc) / len(per_doc) - value) < 1e-9:
            examples[label] = significance.mean_stats(per_doc, 1.0)
    return TaskScores(name, values, record, examples)


def benchmark_systems(
    req: EvalRequest, refs: list[tuple[str, str]], out_dir: Path
) -> tuple[list[SystemScores], dict[str, Any], dict[str, Any]]:
    """Every system scored on the requested tasks: (systems, data, settings) for the report."""
    from llmkit.evaluation.systems import load_system
    from llmkit.io.provenance import versions

    assert req.tasks is not None
    tasks = load_tasks(task_specs(req.tasks))  # every task's data before any model loads
    systems, formats = [], {}
    for label, ref in refs:
        loaded = load_system(ref, "benchmarks")
        fmt = prompt_format_for(
            loaded.card,
            chat=req.chat,
            system=req.system,
            default_chat=bool(getattr(loaded.tokenizer, "chat_template", None)),
        )
        if fmt.chat and not getattr(loaded.tokenizer, "chat_template", None):
            raise UsageError(f"{ref} has no chat template: score it as plain text")
        formats[label] = describe_format(fmt)
        note(f"prompt format: {formats[label]}")
        settings = {"model": ref, "num_fewshot": req.num_fewshot, "limit": req.limit}
        settings |= {"chat": fmt.chat, "system": fmt.system}
        lm = harness_lm(loaded, req.batch_size)
        system = SystemScores(label, loaded.description)
        for scored in run_tasks(label, lm, tasks, settings, fmt, out_dir, resume=req.resume):
            system.values |= scored.values
            system.examples |= scored.examples
        systems.append(system)
    data = {"tasks": {name: _task_data(out_dir, name) for name in tasks}}
    run_settings = {
        "lm_eval": versions(("lm_eval",)).get("lm_eval"),
        "num_fewshot": req.num_fewshot,
        "limit": req.limit,
        "batch_size": req.batch_size,
        "prompt_format": formats,
    }
    return systems, data, run_settings


def _task_data(out_dir: Path, name: str) -> dict[str, Any]:
    """System A's record of a task: its version, shots, samples and per-sample log."""
    json_path, samples_path = _paths(out_dir / HARNESS_DIR, "A", name)
    record = json.loads(json_path.read_text(encoding="utf-8"))
    keep = ("version", "n-shot", "n-samples", "higher_is_better", "seconds")
    return {k: record.get(k) for k in keep} | {
        "samples_log": str(samples_path.relative_to(out_dir))
    }
