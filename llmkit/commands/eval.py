"""`llmkit eval`: score predictions, generate then score, perplexity, and A/B comparisons.

The flags pick the mode:
    --preds P [--refs R] [--preds-b P2]      score files (no model)
    --model M --data D [--model-b M2]        generate on a dataset, then score
    --model M --text FILE [--model-b M2]     perplexity, sliding window and per document
    (none of those)                          the default suite on embedded held-out data

Flow: check flags, files and the output folder (cheap, before any model loads) -> score one
or two systems -> for two, the difference and sacreBLEU's paired bootstrap p-value for BLEU
-> metrics.json (+ predictions JSONL, + ab.png for A/B) -> a table on stdout. Status lines go
to stderr. metrics.json carries everything needed to repeat the numbers: the sacreBLEU
signatures, decoding and window settings, example counts and library versions.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit import assets, metrics
from llmkit.data.records import read_records, read_text
from llmkit.errors import UsageError
from llmkit.models import DEFAULT_CAUSAL_LM, LoadedModel
from llmkit.runs import LATEST_FILE, METRICS_JSON, RunDir, write_json_atomic

EMBEDDED_CHATTERBOT = "embedded:chatterbot"
# The default suite must finish in a minute or two on 2 CPU cores with SmolLM2-135M:
# 64 greedy answers of <= 32 tokens (17 s at best on 2 cores) and ~1,000 tokens of
# Shakespeare scored twice, ~2,500 forward tokens (8.6 s). With other jobs on the same two
# cores it took 2-3.5 minutes.
DEFAULT_SUITE_QUESTIONS = 64
DEFAULT_SUITE_NEW_TOKENS = 32
DEFAULT_DATA_NEW_TOKENS = 64
DEFAULT_SUITE_MAX_LENGTH = 512
HELD_OUT_CHARS = 3500  # the end of The Winter's Tale: ~1,000 SmolLM2 tokens
RUN_VALIDATION_TOKENS = 4096  # cap on a run's validation blocks in the default suite
# Windows longer than this cost more than they tell on CPU (SmolLM2 allows 8,192).
MAX_DEFAULT_WINDOW = 1024

PRED_FIELDS = ("prediction", "completion")  # ours, then `llmkit generate --output`
REF_FIELDS = ("reference", "target", "answer", "completion")
PAIR_FORMS = (("source", "target"), ("prompt", "completion"), ("question", "answer"))
DISPLAY = {
    "bleu": "BLEU",
    "chrf": "chrF",
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
    "rougeLsum": "ROUGE-Lsum",
    "exact_match": "exact match",
    "f1": "token F1",
    "accuracy": "accuracy",
    "distinct_1": "distinct-1",
    "distinct_2": "distinct-2",
    "self_bleu": "self-BLEU",
    "avg_length": "avg length (words)",
    "perplexity_sliding": "perplexity (sliding)",
    "perplexity_per_document": "perplexity (per document)",
}
LOWER_IS_BETTER = {"perplexity_sliding", "perplexity_per_document"}


@dataclass
class EvalRequest:
    """What the CLI collected."""

    preds: Path | None = None
    refs: Path | None = None
    preds_b: Path | None = None
    model: str | None = None
    model_b: str | None = None
    data: str | None = None
    text: list[Path] = field(default_factory=list)
    metrics: str | None = None
    pred_field: str | None = None
    ref_field: str | None = None
    source_field: str | None = None
    target_field: str | None = None
    limit: int | None = None
    max_new_tokens: int | None = None  # None: 64 for --data, 32 in the default suite
    # 32, not generate's 8: a CPU decode step reads all weights (540 MB for SmolLM2) whatever
    # the batch, so 2 batches of 32 beat 8 of 8 (64 answers: 17 s vs 8 x 4.2 s = 34 s).
    # The answers are identical at any batch size (greedy, checked at 8, 32 and 64).
    batch_size: int = 32
    chat: bool | None = None  # None: use the chat template when the tokenizer has one
    system: str | None = None
    max_length: int | None = None
    stride: int | None = None
    output_dir: Path | None = None
    name: str | None = None
    overwrite: bool = False
    runs_root: Path = Path("runs")


@dataclass
class SystemScores:
    """One system's numbers: a model or a predictions file."""

    label: str  # "A" or "B"
    source: str  # model description or file name
    values: dict[str, float] = field(default_factory=dict)
    signatures: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    texts: list[str] | None = None  # the predictions scored, for the paired bootstrap
    predictions: list[dict[str, Any]] | None = None  # rows of predictions.jsonl


@dataclass
class Report:
    mode: str
    systems: list[SystemScores]
    data: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    bootstrap: metrics.PairedBootstrap | None = None
    refs_for_bootstrap: list[str] | None = None


# --- the command ---------------------------------------------------------------------------


def run_eval(req: EvalRequest) -> Path:
    """Validate, score, save, show. Returns the output folder."""
    check_numbers(req)
    mode = pick_mode(req)
    names = metrics.parse_metric_names(req.metrics)
    out_dir = prepare_output_dir(req)
    start = time.perf_counter()
    if mode == "preds":
        report = eval_predictions(req, names)
    elif mode == "generate":
        report = eval_generation(req, names)
    elif mode == "text":
        report = eval_text(req)
    else:
        report = eval_default_suite(req, names)
    if len(report.systems) == 2:
        compare(report)
    report.settings["seconds"] = round(time.perf_counter() - start, 2)
    save(report, out_dir)
    show(report, out_dir)
    return out_dir


def check_numbers(req: EvalRequest) -> None:
    """Counts must be positive: found now, not after a model has loaded."""
    for flag, value, least in [
        ("--limit", req.limit, 1),
        ("--max-new-tokens", req.max_new_tokens, 1),
        ("--batch-size", req.batch_size, 1),
        ("--max-length", req.max_length, 2),
        ("--stride", req.stride, 1),
    ]:
        if value is not None and value < least:
            raise UsageError(f"{flag} must be at least {least} (got {value})")


def pick_mode(req: EvalRequest) -> str:
    """preds | generate | text | default, refusing flag combinations that mean nothing."""
    if req.preds is not None:
        if req.model or req.model_b or req.data or req.text:
            raise UsageError("--preds scores files: drop --model/--model-b/--data/--text")
        return "preds"
    if req.refs is not None or req.preds_b is not None:
        raise UsageError("--refs and --preds-b go with --preds")
    if req.data is not None and req.text:
        raise UsageError("give --data (generate and score) or --text (perplexity), not both")
    if req.data is not None:
        return "generate"
    if req.text:
        return "text"
    return "default"


def prepare_output_dir(req: EvalRequest) -> Path:
    """--output-dir, else runs/eval/<--name or a timestamp>; never overwrite silently."""
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
    if out.exists() and not out.is_dir():
        raise UsageError(f"output dir {out} exists and is not a folder")
    if (out / METRICS_JSON).exists() and not req.overwrite:
        raise UsageError(
            f"{out / METRICS_JSON} already exists: pass --overwrite to replace it, "
            "or --output-dir/--name for a new folder"
        )
    return out


# --- mode 1: predictions files -------------------------------------------------------------


def eval_predictions(req: EvalRequest, names: list[str]) -> Report:
    assert req.preds is not None
    preds, refs, refs_name = _read_preds_and_refs(req, req.preds)
    systems = [_score_texts("A", str(req.preds), preds, refs, names)]
    if req.preds_b is not None:
        preds_b = read_texts(req.preds_b, req.pred_field, PRED_FIELDS, "--pred-field")
        _check_counts(req.preds_b, len(preds_b), refs_name, len(refs))
        systems.append(_score_texts("B", str(req.preds_b), preds_b, refs, names))
    data = {"references": refs_name, "examples": len(refs)}
    return Report("preds", systems, data=data, refs_for_bootstrap=refs)


def _read_preds_and_refs(req: EvalRequest, preds_path: Path) -> tuple[list[str], list[str], str]:
    """Predictions and references; without --refs, a JSONL predictions file (such as our own
    predictions.jsonl) can carry its references."""
    preds = read_texts(preds_path, req.pred_field, PRED_FIELDS, "--pred-field")
    refs_path = req.refs
    candidates: tuple[str, ...] = REF_FIELDS
    if refs_path is None:
        if not _is_jsonl(preds_path):
            raise UsageError("--refs is needed: a .txt predictions file holds no references")
        if req.ref_field is not None and req.ref_field == req.pred_field:
            raise UsageError(f"--pred-field and --ref-field are both '{req.ref_field}'")
        # In one file, a `completion` is the prediction (llmkit generate output), never the
        # reference: scoring it against itself would report a perfect 100.
        refs_path = preds_path
        candidates = tuple(f for f in REF_FIELDS if f not in ("completion", req.pred_field))
    refs = read_texts(refs_path, req.ref_field, candidates, "--ref-field")
    _check_counts(preds_path, len(preds), str(refs_path), len(refs))
    return preds, refs, str(refs_path)


def _check_counts(preds_path: Path | str, n_preds: int, refs_name: str, n_refs: int) -> None:
    if n_preds != n_refs:
        raise UsageError(
            f"{preds_path} has {n_preds} predictions but {refs_name} has {n_refs} references "
            "(they pair up line by line)"
        )


def _score_texts(
    label: str, source: str, preds: list[str], refs: list[str], names: list[str]
) -> SystemScores:
    system = SystemScores(label, source, texts=preds)
    timings: dict[str, float] = {}
    for name, result in _timed_metrics(preds, refs, names, timings).items():
        system.values.update(result.values)
        if result.signature is not None:
            system.signatures[name] = result.signature
    system.details["metric_seconds"] = timings
    return system


def _timed_metrics(
    preds: list[str], refs: list[str], names: list[str], timings: dict[str, float]
) -> dict[str, metrics.MetricResult]:
    results = {}
    for name in names:
        start = time.perf_counter()
        results[name] = metrics.METRICS[name](preds, refs)
        timings[name] = round(time.perf_counter() - start, 3)
    return results


# --- reading files -------------------------------------------------------------------------


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".json")


def read_texts(
    path: Path, field_name: str | None, candidates: tuple[str, ...], flag: str
) -> list[str]:
    """One text per line of a .txt file (blank lines kept: an empty prediction is still a
    prediction), or one field per record of a .jsonl file."""
    text = read_text_file(path)
    if not _is_jsonl(path):
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return lines
    rows = read_records(path)
    key = field_name or _pick_field(rows[0], candidates, flag)
    return [_text_field(where, row, key, flag) for where, row in rows]


def read_text_file(path: Path) -> str:
    """The whole file; missing, folder, non-UTF-8 and empty files are usage errors."""
    text = read_text(path)
    if not text.strip():
        raise UsageError(f"{path} is empty")
    return text


def _pick_field(first: tuple[str, dict[str, Any]], candidates: tuple[str, ...], flag: str) -> str:
    where, record = first
    for name in candidates:
        if name in record:
            return name
    raise UsageError(
        f"{where}: none of the fields {', '.join(candidates)} "
        f"(fields: {', '.join(record) or 'none'}); pick one with {flag}"
    )


def _text_field(where: str, record: dict[str, Any], key: str, flag: str) -> str:
    if key not in record:
        raise UsageError(
            f"{where}: no field '{key}' (fields: {', '.join(record) or 'none'}); "
            f"pick one with {flag}"
        )
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise UsageError(f"{where}: field '{key}' must be text, got {value!r}")
    return str(value)


def read_pairs(req: EvalRequest) -> tuple[list[str], list[str], str]:
    """(sources, targets, description) from --data: a JSONL file or embedded:chatterbot."""
    assert req.data is not None
    if req.data == EMBEDDED_CHATTERBOT:
        _, held_out = assets.chatterbot_split()
        pairs = held_out[: req.limit] if req.limit else held_out
        desc = f"{EMBEDDED_CHATTERBOT} held-out split ({len(pairs)} of {len(held_out)} pairs)"
        return [p["question"] for p in pairs], [p["answer"] for p in pairs], desc
    path = Path(req.data)
    if not _is_jsonl(path):
        raise UsageError(f"--data {path}: expected a .jsonl file (or {EMBEDDED_CHATTERBOT})")
    read_text_file(path)  # an empty file is an error, not zero pairs
    records = read_records(path)
    src_key, tgt_key = _pair_fields(records[0], req)
    sources = [_text_field(w, r, src_key, "--source-field") for w, r in records]
    targets = [_text_field(w, r, tgt_key, "--target-field") for w, r in records]
    total = len(sources)
    if req.limit:
        sources, targets = sources[: req.limit], targets[: req.limit]
    return sources, targets, f"{path} ({src_key} -> {tgt_key}, {len(sources)} of {total} rows)"


def _pair_fields(first: tuple[str, dict[str, Any]], req: EvalRequest) -> tuple[str, str]:
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


# --- mode 2: generate, then score ----------------------------------------------------------


def eval_generation(req: EvalRequest, names: list[str]) -> Report:
    sources, targets, desc = read_pairs(req)
    new_tokens = req.max_new_tokens or DEFAULT_DATA_NEW_TOKENS
    systems = [
        _generate_and_score(label, load_model(ref), sources, targets, names, req, new_tokens)
        for label, ref in _model_refs(req)
    ]
    report = Report("generate", systems, data={"data": desc, "examples": len(sources)})
    report.settings["decoding"] = _decoding_settings(new_tokens)
    report.refs_for_bootstrap = targets
    return report


def _model_refs(req: EvalRequest) -> list[tuple[str, str]]:
    """[("A", ref), ("B", ref)?]; A defaults to the latest causal-LM run, else SmolLM2."""
    first = req.model or default_model_ref(req.runs_root)
    return [("A", first)] + ([("B", req.model_b)] if req.model_b else [])


def _decoding_settings(max_new_tokens: int) -> dict[str, Any]:
    return {"do_sample": False, "max_new_tokens": max_new_tokens}


def _generate_and_score(
    label: str,
    loaded: LoadedModel,
    sources: list[str],
    targets: list[str],
    names: list[str],
    req: EvalRequest,
    max_new_tokens: int,
) -> SystemScores:
    from llmkit.commands.generate import generate_texts
    from llmkit.config.decoding import DecodingConfig

    chat = _use_chat(loaded, req.chat)
    options = DecodingConfig(max_new_tokens=max_new_tokens, do_sample=False)
    _note(f"[{label}] generating {len(sources)} answers ({'chat template' if chat else 'raw'})")
    start = time.perf_counter()
    outputs = generate_texts(
        loaded, sources, options, batch_size=req.batch_size, chat=chat, system=req.system
    )
    seconds = time.perf_counter() - start
    preds = [o[0].strip() for o in outputs]
    system = _score_texts(label, loaded.description, preds, targets, names)
    system.details.update(chat_template=chat, generation_seconds=round(seconds, 2))
    system.predictions = [
        {"index": i, "source": s, "reference": t, "prediction": p}
        for i, (s, t, p) in enumerate(zip(sources, targets, preds, strict=True))
    ]
    return system


def _use_chat(loaded: LoadedModel, chat: bool | None) -> bool:
    has_template = bool(getattr(loaded.tokenizer, "chat_template", None))
    if chat and not has_template:
        raise UsageError(f"--chat: {loaded.description} has no chat template")
    return has_template if chat is None else chat


def load_model(ref: str) -> LoadedModel:
    from transformers.utils import logging as hf_logging

    from llmkit.models import load_causal_lm

    hf_logging.disable_progress_bar()  # the "Loading weights" bar buries the status lines
    loaded = load_causal_lm(ref)
    _note(f"model: {loaded.description}")
    return loaded


def default_model_ref(runs_root: Path) -> str:
    """The newest finished run if it holds a causal LM (full model or LoRA adapter), else the
    embedded SmolLM2."""
    marker = runs_root / LATEST_FILE
    if marker.exists():
        run = RunDir(runs_root / marker.read_text().strip())
        if _is_causal_lm_folder(run.path):
            return str(run.path)
    return DEFAULT_CAUSAL_LM


def _is_causal_lm_folder(path: Path) -> bool:
    config, adapter = path / "config.json", path / "adapter_config.json"
    if adapter.exists():
        return json.loads(adapter.read_text()).get("task_type") == "CAUSAL_LM"
    if config.exists():
        archs = json.loads(config.read_text()).get("architectures") or []
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    return False


# --- mode 3: perplexity --------------------------------------------------------------------


@dataclass
class TextSet:
    """What perplexity is measured on: raw texts, or a run's token blocks (already ids)."""

    description: str
    texts: list[str] = field(default_factory=list)
    blocks: list[list[int]] | None = None


def eval_text(req: EvalRequest) -> Report:
    text_set, run_model = read_text_set(req.text)
    refs = [("A", req.model or run_model or default_model_ref(req.runs_root))]
    if req.model_b:
        refs.append(("B", req.model_b))
    systems = [_perplexity_system(label, ref, text_set, req) for label, ref in refs]
    return Report("text", systems, data={"text": text_set.description})


def read_text_set(paths: list[Path]) -> tuple[TextSet, str | None]:
    """Text files (each one document), or one run folder (its validation blocks)."""
    runs = [p for p in paths if p.is_dir()]
    if runs:
        if len(paths) > 1:
            raise UsageError("--text: give one run folder, or text files, not both")
        blocks, desc = run_validation_blocks(runs[0], cap_tokens=None)
        return TextSet(desc, blocks=blocks), str(runs[0])
    texts = [read_text_file(path) for path in paths]
    total = sum(len(t) for t in texts)
    return TextSet(
        f"{len(paths)} file(s), {total:,} characters: {', '.join(map(str, paths))}", texts
    ), None


def run_validation_blocks(run_path: Path, cap_tokens: int | None) -> tuple[list[list[int]], str]:
    """The validation blocks of a pretraining run (its recipe.yaml, through the prep cache)."""
    from llmkit.config.loader import load_recipe

    recipe_file = RunDir(run_path).recipe_file
    if not recipe_file.exists():
        raise UsageError(f"--text {run_path}: a folder must be a run folder with recipe.yaml")
    try:
        recipe = load_recipe(recipe_file, [], default="pretrain/gpt-shakespeare")
    except UsageError:
        raise UsageError(
            f"--text {run_path}: recipe.yaml is not a pretraining recipe (no text split to "
            "score); pass text files instead"
        ) from None
    if recipe.task != "causal_lm":
        raise UsageError(f"--text {run_path}: a {recipe.task} run has no causal perplexity")
    from llmkit.data.prep import load_prepared

    validation = load_prepared(recipe).validation
    n = len(validation) if cap_tokens is None else max(1, cap_tokens // validation.shape[1])
    blocks = [[int(t) for t in row] for row in validation[:n]]
    desc = (
        f"validation split of {run_path}: {len(blocks)} of {len(validation)} blocks x "
        f"{validation.shape[1]} tokens"
    )
    return blocks, desc


def _perplexity_system(label: str, ref: str, text_set: TextSet, req: EvalRequest) -> SystemScores:
    loaded = load_model(ref)
    system = SystemScores(label, loaded.description)
    measure_perplexity(system, loaded, text_set, req.max_length, req.stride)
    return system


def measure_perplexity(
    system: SystemScores,
    loaded: LoadedModel,
    text_set: TextSet,
    max_length: int | None,
    stride: int | None,
    *,
    window_cap: int = MAX_DEFAULT_WINDOW,
) -> None:
    """Both methods on texts; per document only on a run's blocks (they are not contiguous
    text, so a window sliding across them would mix unrelated passages)."""
    context = metrics.model_context_length(loaded.model)
    length = max_length or min(context or window_cap, window_cap)
    if context is not None and length > context:
        raise UsageError(f"--max-length {length} exceeds the model's context of {context} tokens")
    step = stride or max(1, length // 2)  # the HF guide's 512 for GPT-2's 1024
    results = []
    start = time.perf_counter()
    if text_set.blocks is not None:
        results.append(
            metrics.perplexity_of_ids(
                loaded.model,
                text_set.blocks,
                max_length=length,
                stride=length,
                method="per_document",
            )
        )
    else:
        model, tok = loaded.model, loaded.tokenizer
        results.append(
            metrics.perplexity_sliding(model, tok, text_set.texts, max_length=length, stride=step)
        )
        results.append(
            metrics.perplexity_per_document(model, tok, text_set.texts, max_length=length)
        )
    for r in results:
        system.values[f"perplexity_{r.method}"] = r.ppl
        system.details[f"perplexity_{r.method}"] = {
            "tokens": r.tokens,
            "mean_nll": r.nll,
            "max_length": r.max_length,
            "stride": r.stride,
        }
    system.details["perplexity_seconds"] = round(time.perf_counter() - start, 2)


# --- mode 4: the default suite -------------------------------------------------------------


def held_out_shakespeare() -> str:
    """The last ~6,000 characters of The Winter's Tale, from a line start.

    Fixed (not sampled) so the number is comparable across runs and machines.
    """
    text = assets.shakespeare_files()[-1].read_text(encoding="utf-8")
    tail = text[-HELD_OUT_CHARS:]
    return tail[tail.index("\n") + 1 :]


def eval_default_suite(req: EvalRequest, names: list[str]) -> Report:
    """Perplexity on held-out text + generation metrics on held-out chatterbot questions."""
    questions = held_out_questions()
    pairs = questions[: req.limit or DEFAULT_SUITE_QUESTIONS]
    sources, targets = [p["question"] for p in pairs], [p["answer"] for p in pairs]
    new_tokens = req.max_new_tokens or DEFAULT_SUITE_NEW_TOKENS
    systems = []
    text_desc = ""
    for label, ref in _model_refs(req):
        loaded = load_model(ref)
        system = _generate_and_score(label, loaded, sources, targets, names, req, new_tokens)
        text_set = _suite_text_set(ref)
        text_desc = text_set.description
        measure_perplexity(
            system,
            loaded,
            text_set,
            req.max_length,
            req.stride,
            window_cap=DEFAULT_SUITE_MAX_LENGTH,
        )
        systems.append(system)
    report = Report("default", systems)
    report.data = {
        "generation": f"{EMBEDDED_CHATTERBOT} held-out split: first {len(pairs)} of "
        f"{len(questions)} distinct questions, each with its first answer as reference",
        "perplexity": text_desc,
        "examples": len(pairs),
    }
    report.settings["decoding"] = _decoding_settings(new_tokens)
    report.notes.append(
        f"generation metrics on {len(pairs)} of {len(questions)} held-out chatterbot questions "
        f"(greedy, <= {new_tokens} new tokens); use --limit for more"
    )
    report.refs_for_bootstrap = targets
    return report


def held_out_questions() -> list[dict[str, str]]:
    """Held-out chatterbot pairs, one per distinct question (the first answer is the reference).

    116 held-out pairs hold 94 distinct questions ("You are not making sense" has 5 answers):
    generating the same answer 5 times would cost time and weigh that question 5x.
    """
    _, held_out = assets.chatterbot_split()
    first: dict[str, dict[str, str]] = {}
    for pair in held_out:
        first.setdefault(pair["question"], pair)
    return list(first.values())


def _suite_text_set(ref: str) -> TextSet:
    """A pretraining run's own validation split (text it never trained on), else the fixed
    held-out slice of Shakespeare."""
    path = Path(ref)
    why = ""
    if path.is_dir() and RunDir(path).recipe_file.exists():
        try:
            blocks, desc = run_validation_blocks(path, cap_tokens=RUN_VALIDATION_TOKENS)
            return TextSet(desc, blocks=blocks)
        except UsageError as e:  # e.g. a fine-tuning run: its recipe has no text split
            why = f" (the run's validation split is not available: {e})"
    return TextSet(
        f"embedded:shakespeare held-out slice: last {HELD_OUT_CHARS:,} characters of "
        f"The Winter's Tale{why}",
        texts=[held_out_shakespeare()],
    )


# --- comparing, saving, showing ------------------------------------------------------------


def compare(report: Report) -> None:
    """sacreBLEU's paired bootstrap for BLEU when both systems have it (differences are
    computed where they are shown and saved)."""
    a, b = report.systems
    refs = report.refs_for_bootstrap
    if "bleu" in a.values and "bleu" in b.values and refs is not None:
        assert a.texts is not None and b.texts is not None
        report.bootstrap = metrics.paired_bootstrap_bleu(a.texts, b.texts, refs)


def differences(report: Report) -> dict[str, float]:
    """B - A for every metric both systems have."""
    if len(report.systems) < 2:
        return {}
    a, b = report.systems
    return {k: b.values[k] - a.values[k] for k in a.values if k in b.values}


UNITS = {
    "bleu/chrf/rouge*/exact_match/f1/accuracy/self_bleu": "0-100 (sacreBLEU convention)",
    "rouge*": "mean of per-pair rouge-score F-measures (use_stemmer=True), x 100",
    "distinct_1/distinct_2": "unique n-grams / all n-grams over all outputs, 0-1",
    "avg_length": "whitespace tokens per output",
    "perplexity_*": "exp(mean NLL per scored token, nats); lower is better",
}


def to_json(report: Report) -> dict[str, Any]:
    """metrics.json: numbers first, then everything needed to repeat them."""
    a = report.systems[0]
    out: dict[str, Any] = {
        "mode": report.mode,
        "metrics": a.values,
        "system": a.source,
        "details": a.details,
        "signatures": a.signatures,
        "data": report.data,
        "settings": report.settings,
        "notes": report.notes,
        "units": UNITS,
        "versions": _versions(),
        "command": " ".join(["llmkit", *sys.argv[1:]]),
    }
    if len(report.systems) == 2:
        b = report.systems[1]
        out["b"] = {"system": b.source, "metrics": b.values, "details": b.details}
        out["difference"] = differences(report)
        if report.bootstrap is not None:
            out["paired_bootstrap_bleu"] = vars(report.bootstrap)
    return out


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in ("llmkit", "sacrebleu", "rouge-score", "torch", "transformers"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return found


def save(report: Report, out_dir: Path) -> None:
    """Predictions first and metrics.json last: a metrics.json means the folder is complete."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for system in report.systems:
        if system.predictions is not None:
            name = "predictions.jsonl" if system.label == "A" else "predictions_b.jsonl"
            _write_jsonl(out_dir / name, system.predictions)
    if len(report.systems) == 2:
        plot_ab(report, out_dir / "ab.png")
    write_json_atomic(out_dir / METRICS_JSON, to_json(report))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    os.replace(tmp, path)


def plot_ab(report: Report, path: Path) -> None:
    """One small panel per metric (scales differ: BLEU ~10, distinct ~0.5, perplexity ~50)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    a, b = report.systems
    keys = [k for k in a.values if k in b.values]
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        values = [a.values[key], b.values[key]]
        bars = ax.bar(["A", "B"], values, color=["#4c72b0", "#dd8452"])
        ax.bar_label(bars, labels=[_fmt(key, v) for v in values], fontsize=8)
        title = DISPLAY.get(key, key)
        if key in LOWER_IS_BETTER:
            title += " (lower=better)"
        if key == "bleu" and report.bootstrap is not None:
            title += f"\np = {report.bootstrap.p_value:.3f}"
        ax.set_title(title, fontsize=9)
        ax.margins(y=0.2)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(f"A: {_short(a.source)}   B: {_short(b.source)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(text: str, width: int = 50) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _fmt(key: str, value: float) -> str:
    """Two decimals for 0-100 scores and perplexity, four for 0-1 ratios (distinct-n)."""
    if math.isinf(value) or math.isnan(value):
        return str(value)
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    return f"{value:.4f}" if key.startswith("distinct") else f"{value:.2f}"


def _signed(key: str, value: float) -> str:
    text = _fmt(key, value)
    return text if text.startswith("-") else "+" + text


def show(report: Report, out_dir: Path) -> None:
    """The table on stdout: A, and for A/B also B, B - A and BLEU's p-value."""
    from rich.console import Console
    from rich.table import Table

    two = len(report.systems) == 2
    tested = report.bootstrap is not None
    table = Table(title=f"llmkit eval ({report.mode})", title_justify="left")
    table.add_column("metric")
    for system in report.systems:
        table.add_column(system.label, justify="right")
    if two:
        table.add_column("B - A", justify="right")
    if tested:
        table.add_column("p (BLEU)", justify="right")
    diffs = differences(report)
    for key, value in report.systems[0].values.items():
        row = [DISPLAY.get(key, key), _fmt(key, value)]
        if two:
            other = report.systems[1].values.get(key)
            row.append("-" if other is None else _fmt(key, other))
            row.append(_signed(key, diffs[key]) if key in diffs else "-")
        if tested:
            row.append(_p_value_cell(report) if key == "bleu" else "")
        table.add_row(*row)
    console = Console(width=120)
    for system in report.systems:
        console.print(f"{system.label}: {system.source}", highlight=False)
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    if "bleu" in report.systems[0].signatures:
        console.print(f"BLEU signature: {report.systems[0].signatures['bleu']}", highlight=False)
    console.print(f"wrote {out_dir / METRICS_JSON}", highlight=False)


def _p_value_cell(report: Report) -> str:
    assert report.bootstrap is not None
    p = report.bootstrap.p_value
    return f"{p:.3f}" + (" *" if p < 0.05 else "")


def _note(message: str) -> None:
    """Status lines go to stderr, so stdout holds only the table."""
    print(message, file=sys.stderr, flush=True)
