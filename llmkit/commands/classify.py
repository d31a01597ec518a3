"""`llmkit classify`: a fine-tuned classifier's label and probabilities for one text, stdin,
or a file of texts (llmkit.inference.classify). One text prints `label<TAB>probability`;
a file gives one JSONL row per text (its record + label, score, scores) on stdout or in
--output. Status lines go to stderr."""

from __future__ import annotations

import json
import time
from typing import Any

from llmkit.config.requests import ClassifyRequest
from llmkit.errors import UsageError
from llmkit.io.console import note
from llmkit.io.files import read_stdin, read_texts
from llmkit.io.runs import latest_run
from llmkit.io.write import check_output, write_jsonl


def run_classify(req: ClassifyRequest) -> None:
    """Everything cheap first (texts, output), then the model, then one batched pass."""
    from llmkit.inference.classify import classify_texts, load_classifier

    texts, records = _collect_texts(req)
    if req.output is not None:
        check_output(req.output, [req.input], overwrite=req.overwrite)
    clf = load_classifier(req.model or _default_model(req))
    note(f"model: {clf.description}")
    start = time.perf_counter()
    predictions = classify_texts(clf, texts, batch_size=req.batch_size)
    seconds = time.perf_counter() - start
    rows = [
        {**record, "label": p.label, "score": p.score, "scores": p.scores}
        for record, p in zip(records, predictions, strict=True)
    ]
    if req.output is not None:
        write_jsonl(req.output, rows)
        note(f"wrote {len(rows)} lines to {req.output}")
    elif req.input is not None or req.json_:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    else:
        print(f"{predictions[0].label}\t{predictions[0].score:.4f}")
    n = len(texts)
    note(f"classified {n} text{'s' * (n != 1)} in {seconds:.2f} s ({n / seconds:.0f} texts/s)")


def _collect_texts(req: ClassifyRequest) -> tuple[list[str], list[dict[str, Any]]]:
    if req.input is not None:
        if req.text is not None:
            raise UsageError("give either a TEXT or --input FILE, not both")
        read = read_texts(req.input, req.field, hint="pick one with --field")
        return read.texts, read.records
    if req.field is not None or req.output is not None:
        raise UsageError("--field and --output go with --input FILE")
    if req.text is None:
        raise UsageError("give a TEXT, '-' to read it from stdin, or --input FILE")
    text = read_stdin() if req.text == "-" else req.text
    if not text.strip():
        raise UsageError("the text is empty")
    return [text], [{"text": text}]


def _default_model(req: ClassifyRequest) -> str:
    from llmkit.models.card import model_kind

    run = latest_run(req.runs_root)
    if run is None or model_kind(run.path) != "classifier":
        raise UsageError(
            "no classifier to use: give --model (a run of `llmkit finetune` with task "
            "classification, e.g. recipes/finetune/minilm-topics.yaml)"
        )
    return str(run.path)
