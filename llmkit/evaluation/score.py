"""Scoring one system: its predictions, a model's greedy answers, a model's perplexity; and
the default suite's held-out data (what `llmkit eval` measures when given no data).

Every function returns or fills a `SystemScores` (llmkit.evaluation.report).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit import assets
from llmkit.config.decoding import DecodingConfig
from llmkit.errors import UsageError
from llmkit.evaluation import metrics, perplexity
from llmkit.evaluation.pairs import check_pairs
from llmkit.evaluation.report import SystemScores
from llmkit.evaluation.text import scheme_for
from llmkit.io.runs import VALIDATION_JSONL, RunDir, latest_run
from llmkit.models.card import PromptFormat, TaskCard, model_kind, read_card
from llmkit.models.load import DEFAULT_CAUSAL_LM, LoadedModel

# The default suite must finish in a minute or two on 2 CPU cores with SmolLM2-135M:
# 64 greedy answers of <= 32 tokens (17 s at best on 2 cores) and ~1,000 tokens of
# Shakespeare scored twice, ~2,500 forward tokens (8.6 s). With other jobs on the same two
# cores it took 2-3.5 minutes.
SUITE_QUESTIONS = 64
SUITE_NEW_TOKENS = 32
SUITE_MAX_LENGTH = 512
HELD_OUT_CHARS = 3500  # the end of The Winter's Tale: ~1,000 SmolLM2 tokens
RUN_VALIDATION_TOKENS = 4096
# BLEU's and ROUGE's tokenizers when given (None: by the references' script).
Tokenize = tuple[str | None, str | None]  # cap on a run's validation blocks in the default suite
# Windows longer than this cost more than they tell on CPU (SmolLM2 allows 8,192).
MAX_DEFAULT_WINDOW = 1024


def score_texts(
    label: str,
    source: str,
    preds: list[str],
    refs: list[str],
    names: list[str],
    tokenize: Tokenize = (None, None),
) -> SystemScores:
    """The named metrics (llmkit.evaluation.metrics.METRICS) of predictions against
    references, with each metric's signature and the seconds it took. Text is split by the
    references' script (llmkit.evaluation.text) unless `tokenize` names BLEU's and ROUGE's
    tokenizers; the choice is in the details."""
    check_pairs(preds, refs)
    scheme = scheme_for(refs, bleu=tokenize[0], rouge=tokenize[1])
    system = SystemScores(label, source)
    system.details["text"] = scheme.describe()
    timings: dict[str, float] = {}
    for name in names:
        start = time.perf_counter()
        result = metrics.METRICS[name](preds, refs, scheme)
        timings[name] = round(time.perf_counter() - start, 3)
        system.values.update(result.values)
        system.examples.update(result.examples)
        if result.signature is not None:
            system.signatures[name] = result.signature
    system.details["metric_seconds"] = timings
    return system


def run_validation_file(run: Path) -> Path | None:
    """A fine-tune's own validation examples (RUN/validation.jsonl), if it scored any with
    a metric eval measures: sft is scored by its loss, which eval does not measure."""
    scored = run / VALIDATION_JSONL
    card = read_card(run) if scored.is_file() else None
    if card is None or card.task not in ("classification", "text2text"):
        return None
    return scored


def tokenize_for(card: TaskCard | None, bleu: str | None, rouge: str | None) -> Tokenize:
    """BLEU's and ROUGE's tokenizers: the ones given, else the run's own (its card)."""
    return (
        bleu or (card.bleu_tokenize if card else None),
        rouge or (card.rouge_tokenize if card else None),
    )


def generate_and_score(
    label: str,
    loaded: LoadedModel,
    sources: list[str],
    targets: list[str],
    names: list[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    prompt_format: PromptFormat,
    answer_stops: list[str] | None,
    predictions: Path,
    resume: bool = False,
    tokenize: Tokenize = (None, None),
) -> SystemScores:
    """Greedy answers to `sources`, rendered by `prompt_format` (the run's own, unless the
    user said otherwise), scored against `targets`. The answers are written to `predictions`
    (JSONL) as they are generated, resumably (llmkit.inference.resumable)."""
    from llmkit.inference.resumable import generate_to_jsonl
    from llmkit.io.console import note

    options = DecodingConfig(max_new_tokens=max_new_tokens, do_sample=False)
    stops = f", answers end at {answer_stops!r} once begun" if answer_stops else ""
    note(f"[{label}] generating {len(sources)} answers ({prompt_format.describe()}{stops})")
    records: list[dict[str, Any]] = [
        {"index": i, "source": s, "reference": t}
        for i, (s, t) in enumerate(zip(sources, targets, strict=True))
    ]
    rows, _, seconds = generate_to_jsonl(
        loaded,
        sources,
        records,
        options,
        predictions,
        lambda record, completions: {**record, "prediction": completions[0].strip()},
        batch_size=batch_size,
        resume=resume,
        prompt_format=prompt_format,
        answer_stops=answer_stops,
    )
    preds = [str(r["prediction"]) for r in rows]
    system = score_texts(label, loaded.description, preds, targets, names, tokenize)
    system.details.update(
        prompt_format=prompt_format.describe(),
        generation_seconds=round(seconds, 2),
    )
    system.predictions = rows
    return system


def classify_and_score(
    label: str, ref: str, texts: list[str], gold: list[str], *, batch_size: int
) -> SystemScores:
    """A classifier's labels for `texts` scored against `gold`: accuracy and macro-F1 (0-100,
    as eval's other metrics) and a per-class report in the details."""
    from llmkit.evaluation.classes import class_report
    from llmkit.inference.classify import classify_texts, load_classifier
    from llmkit.io.console import note

    clf = load_classifier(ref)
    note(f"model: {clf.description}")
    unknown = sorted(set(gold) - set(clf.labels))
    if unknown:
        raise UsageError(
            f"labels {', '.join(unknown[:5])} are not among the classifier's classes "
            f"({', '.join(clf.labels)})"
        )
    start = time.perf_counter()
    predictions = classify_texts(clf, texts, batch_size=batch_size)
    seconds = time.perf_counter() - start
    guess = [p.label for p in predictions]
    report = class_report(guess, gold)
    # Accuracy through eval's own metric (an exact match of label names), so A/B comparisons
    # get its paired bootstrap; macro-F1 is not a mean over examples and is not resampled.
    accuracy = metrics.METRICS["accuracy"](guess, gold, scheme_for(gold))
    system = SystemScores(label, clf.description, examples=dict(accuracy.examples))
    system.values = {**accuracy.values, "macro_f1": 100 * report["macro_f1"]}
    system.details.update(per_class=report["per_class"], classify_seconds=round(seconds, 2))
    system.predictions = [
        {"index": i, "text": t, "reference": g, "prediction": p.label, "score": p.score}
        for i, (t, g, p) in enumerate(zip(texts, gold, predictions, strict=True))
    ]
    return system


def per_class_lines(system: SystemScores) -> list[str]:
    """One line per class: precision, recall, F1 and support."""
    return [
        f"[{system.label}] {name}: precision {v['precision']:.3f}, recall {v['recall']:.3f}, "
        f"F1 {v['f1']:.3f}, support {v['support']}"
        for name, v in system.details.get("per_class", {}).items()
    ]


def default_model_ref(runs_root: Path) -> str:
    """The newest finished run if it holds a causal LM (full model or LoRA adapter), else the
    embedded SmolLM2."""
    run = latest_run(runs_root)
    if run is not None and model_kind(run.path) == "causal":
        return str(run.path)
    return DEFAULT_CAUSAL_LM


# --- perplexity --------------------------------------------------------------------------------


@dataclass
class TextSet:
    """What perplexity is measured on: raw texts, or a run's token blocks (already ids)."""

    description: str
    texts: list[str] = field(default_factory=list)
    blocks: list[list[int]] | None = None


def run_validation_blocks(run_path: Path, cap_tokens: int | None) -> TextSet:
    """The validation blocks of a pretraining run (its recipe.yaml, through the prep cache)."""
    from llmkit.config.loader import load_recipe
    from llmkit.config.pretrain import PretrainRecipe
    from llmkit.data.prep import load_prepared

    recipe_file = RunDir(run_path).recipe_file
    if not recipe_file.exists():
        raise UsageError(f"{run_path}: a folder must be a run folder with recipe.yaml")
    try:
        recipe = load_recipe(PretrainRecipe, recipe_file)
    except UsageError:
        raise UsageError(
            f"{run_path}: recipe.yaml is not a pretraining recipe (no text split to score); "
            "score text files instead"
        ) from None
    if recipe.task != "causal_lm":
        raise UsageError(f"{run_path}: a {recipe.task} run has no causal perplexity")
    validation = load_prepared(recipe).validation
    n = len(validation) if cap_tokens is None else max(1, cap_tokens // validation.shape[1])
    blocks = [[int(t) for t in row] for row in validation[:n]]
    return TextSet(
        f"validation split of {run_path}: {len(blocks)} of {len(validation)} blocks x "
        f"{validation.shape[1]} tokens",
        blocks=blocks,
    )


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
    context = perplexity.model_context_length(loaded.model)
    length = max_length or min(context or window_cap, window_cap)
    if context is not None and length > context:
        raise UsageError(f"max_length {length} exceeds the model's context of {context} tokens")
    step = stride or max(1, length // 2)  # the HF guide's 512 for GPT-2's 1024
    results = []
    start = time.perf_counter()
    model, tok = loaded.model, loaded.tokenizer
    if text_set.blocks is not None:
        results.append(
            perplexity.perplexity_of_ids(
                model, text_set.blocks, max_length=length, stride=length, method="per_document"
            )
        )
    else:
        results += [
            perplexity.perplexity_sliding(
                model, tok, text_set.texts, max_length=length, stride=step
            ),
            perplexity.perplexity_per_document(model, tok, text_set.texts, max_length=length),
        ]
    for r in results:
        system.values[f"perplexity_{r.method}"] = r.ppl
        system.details[f"perplexity_{r.method}"] = {
            "tokens": r.tokens,
            "mean_nll": r.nll,
            "max_length": r.max_length,
            "stride": r.stride,
        }
    system.details["perplexity_seconds"] = round(time.perf_counter() - start, 2)


# --- the default suite's held-out data ---------------------------------------------------------


def held_out_shakespeare() -> str:
    """The last ~3,500 characters of The Winter's Tale, from a line start.

    Fixed (not sampled) so the number is comparable across runs and machines.
    """
    text = assets.shakespeare_files()[-1].read_text(encoding="utf-8")
    tail = text[-HELD_OUT_CHARS:]
    return tail[tail.index("\n") + 1 :]


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


def suite_text_set(ref: str) -> TextSet:
    """A pretraining run's own validation split (text it never trained on), else the fixed
    held-out slice of Shakespeare."""
    path = Path(ref)
    why = ""
    if path.is_dir() and RunDir(path).recipe_file.exists():
        try:
            return run_validation_blocks(path, cap_tokens=RUN_VALIDATION_TOKENS)
        except UsageError as e:  # e.g. a fine-tuning run: its recipe has no text split
            why = f" (the run's validation split is not available: {e})"
    return TextSet(
        f"embedded:shakespeare held-out slice: last {HELD_OUT_CHARS:,} characters of "
        f"The Winter's Tale{why}",
        texts=[held_out_shakespeare()],
    )


def decoding_settings(max_new_tokens: int) -> dict[str, Any]:
    return {"do_sample": False, "max_new_tokens": max_new_tokens}
