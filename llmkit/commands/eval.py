"""`llmkit eval`: score predictions, generate then score, perplexity, and A/B comparisons.

The options pick the mode:
    --preds P [--refs R] [--preds-b P2]      score files (no model)
    --model M --data D [--model-b M2]        generate on a dataset, then score
    --model M --text FILE [--model-b M2]     perplexity, sliding window and per document
    --model M --tasks NAMES [--model-b M2]   benchmarks through lm-evaluation-harness
    --model BERT_RUN [--text FILE]           pseudo-perplexity, masked accuracy (masked LMs)
    (none of those)                          the default suite on embedded held-out data

Flow: check options, files and the output folder (cheap, before any model loads) -> score one
or two systems (llmkit.evaluation.score) -> for two, the differences and a paired bootstrap
test of each (llmkit.evaluation.significance) -> metrics.json, predictions, ab.png and a
table on stdout (llmkit.evaluation.report). Status lines go to stderr.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from llmkit.config.requests import EvalRequest
from llmkit.errors import UsageError
from llmkit.evaluation import harness, masked, modules, preference, score
from llmkit.evaluation.metrics import parse_metric_names
from llmkit.evaluation.pairs import check_counts
from llmkit.evaluation.report import (
    EVAL,
    EVAL_FILES,
    PREDICTIONS,
    Report,
    SystemScores,
    compare,
    save,
    show,
)
from llmkit.evaluation.systems import generate_and_score, load_system, model_refs
from llmkit.inference.resumable import check_resumable
from llmkit.io.console import note
from llmkit.io.files import field_texts, is_table, read_records, read_texts
from llmkit.io.runs import METRICS_JSON, writer_lock
from llmkit.io.write import check_output, owner_kind
from llmkit.models.load import folder_kind

DATA_NEW_TOKENS = 64
PRED_FIELDS = ("prediction", "completion")  # ours, then `llmkit generate --output`
REF_FIELDS = ("reference", "target", "answer", "completion")
PAIR_FORMS = (("source", "target"), ("prompt", "completion"), ("question", "answer"))


def run_eval(req: EvalRequest) -> Path:
    """Validate, score, save, show. Returns the output folder."""
    req = with_run_validation(req)
    mode = pick_mode(req)
    names = parse_metric_names(req.metrics)
    if req.metric and mode in ("text", "tasks"):
        raise UsageError("--metric scores answers: use it with --preds or --data")
    modules.check_modules(req.metric or [])  # before any model loads
    with ExitStack() as held:  # the output folder's writer lock, until saved
        out_dir = prepare_output_dir(req, held)
        start = time.perf_counter()
        report = (
            eval_predictions(req, names) if mode == "preds"
            else eval_generation(req, names, out_dir) if mode == "generate"
            else eval_text(req) if mode == "text"
            else eval_tasks(req, out_dir) if mode == "tasks"
            else masked.eval_masked(model_refs(req), req.text, req.max_length) if mode == "masked"
            else eval_default_suite(req, names, out_dir)
        )  # fmt: skip
        if len(report.systems) == 2:
            compare(report, req.bootstrap, req.bootstrap_seed)
        report.settings["seconds"] = round(time.perf_counter() - start, 2)
        save(report, out_dir)
    show(report, out_dir)
    return out_dir


def with_run_validation(req: EvalRequest) -> EvalRequest:
    """`--model RUN` and nothing to score it on: a fine-tune's own validation examples
    (RUN/validation.jsonl), so the run's evaluation is reproduced, not the default suite's."""
    if req.model is None or req.preds is not None or req.data is not None or req.text or req.tasks:
        return req
    if (scored := score.run_validation_file(Path(req.model))) is None:
        return req
    note(f"data: {scored} (the validation examples the run scored)")
    return req.model_copy(update={"data": str(scored)})


def pick_mode(req: EvalRequest) -> str:
    """preds | generate | text | default, refusing option combinations that mean nothing."""
    if req.preds is not None:
        if req.model or req.model_b or req.data or req.text or req.tasks:
            raise UsageError("--preds scores files: drop --model/--model-b/--data/--text/--tasks")
        return "preds"
    if req.refs is not None or req.preds_b is not None:
        raise UsageError("--refs and --preds-b go with --preds")
    if sum(x is not None for x in (req.data, req.text, req.tasks)) > 1:
        raise UsageError("give one of --data (generate), --text (perplexity), --tasks (benchmarks)")
    if req.tasks is not None:
        return "tasks"
    if req.data is not None:
        return "generate"
    if req.model is not None and folder_kind(req.model) == "masked":  # BERT: pseudo-perplexity
        return "masked"
    if req.text:
        return "text"
    return "default"


def prepare_output_dir(req: EvalRequest, held: ExitStack) -> Path:
    """--output-dir, else runs/eval/<--name or a timestamp>, locked (`held`); never overwritten."""
    if req.resume and req.output_dir is None and req.name is None:
        raise UsageError("--resume needs the --name or --output-dir of the interrupted evaluation")
    if req.output_dir is not None:
        out = req.output_dir
    else:
        base = req.runs_root / "eval"
        out = base / (req.name or time.strftime("%Y%m%d-%H%M%S"))
        if req.name is None:
            n = 2
            while (out / METRICS_JSON).exists():  # two evals in the same second
                out = base / f"{time.strftime('%Y%m%d-%H%M%S')}-{n}"
                n += 1
    inputs = [req.preds, req.refs, req.preds_b, *(req.text or [])]
    check_output(out, [*inputs, Path(req.data) if req.data else None], folder=True)
    held.enter_context(writer_lock(out))
    foreign = [p.name for p in out.iterdir() if p.name not in EVAL_FILES] if out.is_dir() else []
    if foreign and owner_kind(out) != EVAL:
        raise UsageError(
            f"output dir {out} holds files llmkit did not make; llmkit writes results only "
            "into new, empty or its own evaluation folders: choose another --output-dir"
        )
    for name in PREDICTIONS.values():  # before any model loads
        check_resumable(out / name, resume=req.resume)
    if (out / METRICS_JSON).exists() and not req.overwrite:
        raise UsageError(
            f"{out / METRICS_JSON} already exists: pass --overwrite to replace it, "
            "or --output-dir/--name for a new folder"
        )
    return out


# --- mode 1: predictions files -----------------------------------------------------------------


def eval_predictions(req: EvalRequest, names: list[str]) -> Report:
    assert req.preds is not None
    preds, refs, refs_name = _read_preds_and_refs(req, req.preds)
    tokenize = score.tokenize_for(None, req.bleu_tokenize, req.rouge_tokenize)
    systems = [score.score_texts("A", str(req.preds), preds, refs, names, tokenize)]
    modules.add_scores(systems[0], req.metric or [], preds, refs)
    if req.preds_b is not None:
        preds_b = _read_preds(req.preds_b, req)
        check_counts(req.preds_b, len(preds_b), refs_name, len(refs))
        systems.append(score.score_texts("B", str(req.preds_b), preds_b, refs, names, tokenize))
        modules.add_scores(systems[1], req.metric or [], preds_b, refs)
    data = {"references": refs_name, "examples": len(refs)}
    return Report("preds", systems, data=data)


def _read_preds(path: Path, req: EvalRequest) -> list[str]:
    return read_texts(
        path,
        req.pred_field,
        candidates=PRED_FIELDS,
        blank_lines="keep",
        hint="pick one with --pred-field",
    ).texts


def _read_preds_and_refs(req: EvalRequest, preds_path: Path) -> tuple[list[str], list[str], str]:
    """Predictions and references; without --refs, a JSONL predictions file (such as our own
    predictions.jsonl) can carry its references."""
    preds = _read_preds(preds_path, req)
    refs_path = req.refs
    candidates: tuple[str, ...] = REF_FIELDS
    if refs_path is None:
        if not is_table(preds_path):
            raise UsageError("--refs is needed: a .txt predictions file holds no references")
        if req.ref_field is not None and req.ref_field == req.pred_field:
            raise UsageError(f"--pred-field and --ref-field are both '{req.ref_field}'")
        # In one file, a `completion` is the prediction (llmkit generate output), never the
        # reference: scoring it against itself would report a perfect 100.
        refs_path = preds_path
        candidates = tuple(f for f in REF_FIELDS if f not in ("completion", req.pred_field))
    refs = read_texts(
        refs_path,
        req.ref_field,
        candidates=candidates,
        blank_lines="keep",
        hint="pick one with --ref-field",
    ).texts
    check_counts(preds_path, len(preds), str(refs_path), len(refs))
    return preds, refs, str(refs_path)


# --- mode 2: generate, then score --------------------------------------------------------------


def eval_generation(req: EvalRequest, names: list[str], out_dir: Path) -> Report:
    refs = model_refs(req)
    if req.data is not None and preference.is_preference_file(req.data):  # prompt/chosen/rejected
        return preference.preference_report(
            refs, Path(req.data), req.limit, req.batch_size, load_system
        )
    if any(folder_kind(ref) == "classifier" for _, ref in refs):
        return eval_classifiers(req, refs)
    sources, targets, desc = read_pairs(req)
    new_tokens = req.max_new_tokens or DATA_NEW_TOKENS
    systems = [
        generate_and_score(label, ref, sources, targets, names, req, new_tokens, out_dir)[0]
        for label, ref in refs
    ]
    report = Report("generate", systems, data={"data": desc, "examples": len(sources)})
    report.settings["decoding"] = score.decoding_settings(new_tokens)
    return report


def eval_classifiers(req: EvalRequest, refs: list[tuple[str, str]]) -> Report:
    """Classifiers on a JSONL of texts and labels (fields text/label, or --source-field /
    --target-field): accuracy, macro-F1 and a per-class report."""
    from llmkit.models.card import require_kind

    for _, ref in refs:
        require_kind(ref, folder_kind(ref), ("classifier",), "comparing with a classifier")
    path = Path(str(req.data))
    if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise UsageError(
            f"--data {path}: a classifier is scored on a .jsonl/.csv of texts and labels"
        )
    rows = read_records(path)
    if not rows:
        raise UsageError(f"{path} is empty: it holds no texts")
    text_key, label_key = req.source_field or "text", req.target_field or "label"
    texts = field_texts(rows, text_key, hint="pick it with --source-field")
    gold = field_texts(rows, label_key, hint="pick it with --target-field")
    if req.limit:
        texts, gold = texts[: req.limit], gold[: req.limit]
    systems = [
        score.classify_and_score(label, ref, texts, gold, batch_size=req.batch_size)
        for label, ref in refs
    ]
    desc = f"{path} ({text_key} -> {label_key}, {len(texts)} rows)"
    report = Report("classify", systems, data={"data": desc, "examples": len(texts)})
    for system in systems:
        report.notes += score.per_class_lines(system)
    return report


def read_pairs(req: EvalRequest) -> tuple[list[str], list[str], str]:
    """(sources, targets, description) from --data: a JSONL file, or a shipped dataset's
    held-out split (embedded:chatterbot, embedded:chatterbot-zh, embedded:translation-en-zh)."""
    from llmkit.data.examples import EMBEDDED_ROWS

    assert req.data is not None
    if req.data in EMBEDDED_ROWS:  # the split its fine-tunes never trained on
        held_out = EMBEDDED_ROWS[req.data]()[1]
        rows: list[tuple[str, Any]] = [(f"{req.data} row {i}", r) for i, r in enumerate(held_out)]
        what = f"{req.data} held-out split"
    elif Path(req.data).suffix.lower() not in (".jsonl", ".json"):
        raise UsageError(f"--data {req.data}: expected a .jsonl file or {', '.join(EMBEDDED_ROWS)}")
    else:
        rows, what = list(read_records(Path(req.data))), req.data
    if not rows:
        raise UsageError(f"{what} is empty: it holds no texts")
    src_key, tgt_key = _pair_fields(rows[0], req)
    sources = field_texts(rows, src_key, blank_lines="keep", hint="pick it with --source-field")
    targets = field_texts(rows, tgt_key, blank_lines="keep", hint="pick it with --target-field")
    if req.limit:
        sources, targets = sources[: req.limit], targets[: req.limit]
    return sources, targets, f"{what} ({src_key} -> {tgt_key}, {len(sources)} of {len(rows)} rows)"


def _pair_fields(first: tuple[str, dict[str, object]], req: EvalRequest) -> tuple[str, str]:
    if req.source_field or req.target_field:
        return req.source_field or "source", req.target_field or "target"
    where, record = first
    for src, tgt in PAIR_FORMS:
        if src in record and tgt in record:
            return src, tgt
    names = [f"{s}/{t}" for s, t in PAIR_FORMS]
    forms = ", ".join(names[:-1]) + " or " + names[-1]
    raise UsageError(
        f"{where}: no {forms} fields (fields: {', '.join(record) or 'none'}); "
        "pick them with --source-field/--target-field"
    )


# --- mode 3: perplexity ------------------------------------------------------------------------


def eval_text(req: EvalRequest) -> Report:
    text_set, run_model = score.read_text_set(req.text or [])
    refs = [("A", req.model or run_model or score.default_model_ref(req.runs_root))]
    if req.model_b:
        refs.append(("B", req.model_b))
    systems = []
    for label, ref in refs:
        loaded = load_system(ref, "perplexity")
        system = SystemScores(label, loaded.description)
        score.measure_perplexity(system, loaded, text_set, req.max_length, req.stride)
        systems.append(system)
    return Report("text", systems, data={"text": text_set.description})


# --- mode 4: benchmarks (llmkit.evaluation.harness) ----------------------------------------


def eval_tasks(req: EvalRequest, out_dir: Path) -> Report:
    harness.check_resumable(out_dir, resume=req.resume, finished=(out_dir / METRICS_JSON).exists())
    systems, data, settings = harness.benchmark_systems(req, model_refs(req), out_dir)
    return Report("tasks", systems, data=data, settings=settings)


# --- mode 5: the default suite -----------------------------------------------------------------


def eval_default_suite(req: EvalRequest, names: list[str], out_dir: Path) -> Report:
    """Perplexity on held-out text + generation metrics on held-out chatterbot questions."""
    questions = score.held_out_questions()
    pairs = questions[: req.limit or score.SUITE_QUESTIONS]
    sources, targets = [p["question"] for p in pairs], [p["answer"] for p in pairs]
    new_tokens = req.max_new_tokens or score.SUITE_NEW_TOKENS
    systems = []
    text_desc = ""
    for label, ref in model_refs(req):
        system, loaded = generate_and_score(
            label, ref, sources, targets, names, req, new_tokens, out_dir
        )
        text_set = score.suite_text_set(ref)
        text_desc = text_set.description
        score.measure_perplexity(
            system, loaded, text_set, req.max_length, req.stride, window_cap=score.SUITE_MAX_LENGTH
        )
        systems.append(system)
    report = Report("default", systems)
    report.data = {
        "generation": f"embedded:chatterbot held-out split: first {len(pairs)} of "
        f"{len(questions)} distinct questions, each with its first answer as reference",
        "perplexity": text_desc,
        "examples": len(pairs),
    }
    report.settings["decoding"] = score.decoding_settings(new_tokens)
    report.notes.append(
        f"generation metrics on {len(pairs)} of {len(questions)} held-out chatterbot questions "
        f"(greedy, <= {new_tokens} new tokens); use --limit for more"
    )
    return report
