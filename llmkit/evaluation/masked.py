"""Masked-LM (BERT) evaluation: pseudo-perplexity and masked-token accuracy.

A masked LM gives no probability to a whole sentence, so causal perplexity does not apply.
Salazar et al. 2020 ("Masked Language Model Scoring", ACL) mask each token in turn: a
sentence's pseudo-log-likelihood is PLL(W) = sum_t log P(w_t | W without t), and over a corpus
of N scored tokens PPPL = exp(-(1/N) sum_W PLL(W)). Masked-token accuracy is the share of
those same masked copies whose top prediction is the original token.

A sentence of n tokens costs n forward passes of length n + 2 ([CLS] ... [SEP]), so the copies
are batched (up to BATCH_TOKENS tokens a forward), and the vocabulary projection runs only at
the one masked position of each copy: 64 copies x 128 positions x 30,522 words of logits
would be 1 GB of floats; 64 x 30,522 is 7.8 MB.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import UsageError
from llmkit.evaluation.report import Report, SystemScores
from llmkit.io.console import note
from llmkit.io.files import read_document
from llmkit.io.runs import RunDir

BATCH_TOKENS = 8192  # 64 copies of a 128-token block a forward: ~0.2 s for a 4 x 128 BERT
RUN_VALIDATION_TOKENS = 4096  # of a run's validation split: 4,096 masked copies


@dataclass
class MaskedScores:
    pseudo_perplexity: float
    accuracy: float  # share of masked tokens predicted exactly (top-1)
    tokens: int  # tokens scored (special tokens never are)
    rows: int  # sentences or blocks
    mean_nll: float
    max_length: int


def score_rows(model: Any, tokenizer: Any, rows: list[list[int]]) -> MaskedScores:
    """PPPL and accuracy of `rows` (token ids with their [CLS]/[SEP]): every other token is
    masked once, in its own copy of the row."""
    import torch

    # The frame is not scored; [UNK] is, as any other token of the text (as in Salazar et
    # al.'s mlm-scoring): skipping it would flatter a text the vocabulary covers badly.
    frame = ("cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id", "pad_token_id")
    special = {getattr(tokenizer, name) for name in frame} - {None}
    mask_id, pad_id = tokenizer.mask_token_id, tokenizer.pad_token_id
    if mask_id is None:
        raise UsageError("the model's tokenizer has no mask token: it is not a masked LM")
    copies = [
        (r, t) for r, row in enumerate(rows) for t, tok in enumerate(row) if tok not in special
    ]
    if not copies:
        raise UsageError("the text holds no tokens to score")
    # Longest rows first, so each batch pads little and its size follows its length.
    copies.sort(key=lambda c: -len(rows[c[0]]))
    head = _mlm_head(model)
    nll, correct, start = 0.0, 0, 0
    model.eval()
    with torch.no_grad():
        while start < len(copies):
            width = len(rows[copies[start][0]])
            batch = copies[start : start + max(1, BATCH_TOKENS // width)]
            start += len(batch)
            ids = torch.full((len(batch), width), pad_id if pad_id is not None else 0)
            attention = torch.zeros_like(ids)
            for i, (r, _) in enumerate(batch):
                ids[i, : len(rows[r])] = torch.tensor(rows[r])
                attention[i, : len(rows[r])] = 1
            at = torch.tensor([t for _, t in batch])
            idx = torch.arange(len(batch))
            target = ids[idx, at].clone()
            ids[idx, at] = mask_id
            if head is not None:
                hidden = model.base_model(input_ids=ids, attention_mask=attention)[0]
                logits = head(hidden[idx, at])
            else:  # a masked LM whose head llmkit does not know: all positions' logits
                logits = model(input_ids=ids, attention_mask=attention).logits[idx, at]
            logp = torch.log_softmax(logits.float(), dim=-1)
            nll -= float(logp[idx, target].sum())
            correct += int((logp.argmax(dim=-1) == target).sum())
    mean = nll / len(copies)
    return MaskedScores(
        pseudo_perplexity=math.exp(mean),
        accuracy=correct / len(copies),
        tokens=len(copies),
        rows=len(rows),
        mean_nll=mean,
        max_length=max(len(r) for r in rows),
    )


def _mlm_head(model: Any) -> Any:
    """The module from hidden states to vocabulary logits: `cls` (BERT), `lm_head` (RoBERTa,
    XLM-R), or None."""
    for name in ("cls", "lm_head"):
        head = getattr(model, name, None)
        if head is not None:
            return head
    return None


def text_rows(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Each non-empty line of `texts` a sentence (Salazar et al. score sentences), cut into
    pieces of at most max_length tokens, each framed as BERT reads one: [CLS] ... [SEP]."""
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    head, tail = [t for t in (first,) if t is not None], [t for t in (last,) if t is not None]
    room = max(1, max_length - len(head) - len(tail))
    rows = []
    for text in texts:
        for line in text.splitlines():
            if not line.strip():
                continue
            ids = tokenizer(line, add_special_tokens=False)["input_ids"]
            rows += [head + ids[i : i + room] + tail for i in range(0, len(ids), room)]
    return rows


def run_rows(run_path: Path, cap_tokens: int) -> tuple[list[list[int]], str]:
    """The validation blocks of a masked-LM pretraining run (its recipe, via the prep cache),
    trimmed to their true length, up to about cap_tokens scored tokens."""
    from llmkit.config.loader import load_recipe
    from llmkit.config.pretrain import PretrainRecipe
    from llmkit.data.prep import load_prepared

    recipe_file = RunDir(run_path).recipe_file
    if not recipe_file.exists():
        raise UsageError(f"{run_path} has no recipe.yaml: score the model on text files instead")
    try:
        recipe = load_recipe(PretrainRecipe, recipe_file)
    except UsageError:
        raise UsageError(f"{run_path}: recipe.yaml is not a pretraining recipe") from None
    data = load_prepared(recipe)
    if data.validation_lengths is None:
        raise UsageError(f"{run_path}: a {recipe.task} run has no masked-LM validation split")
    rows, tokens = [], 0
    for block, length in zip(data.validation, data.validation_lengths, strict=True):
        if tokens >= cap_tokens:
            break
        rows.append([int(t) for t in block[: int(length)]])
        tokens += int(length) - 2
    desc = f"validation split of {run_path}: {len(rows)} of {len(data.validation)} blocks"
    return rows, desc


def eval_masked(
    refs: list[tuple[str, str]], texts: list[Path] | None, max_length: int | None
) -> Report:
    """`llmkit eval` of one or two masked LMs: PPPL and masked accuracy of each on the same
    rows: the text files' lines, else the first model's run validation split."""
    from llmkit.models.card import require_kind
    from llmkit.models.load import folder_kind, load_masked_lm

    for _, ref in refs:
        require_kind(ref, folder_kind(ref), ("masked",), "pseudo-perplexity")
    # Everything that can fail on the inputs fails before a model loads.
    if texts:
        if any(p.is_dir() for p in texts):
            raise UsageError("a masked LM is scored on text files (one sentence a line)")
        docs = [read_document(p) for p in texts]
        desc = f"{len(texts)} file(s), one sentence a line: {', '.join(map(str, texts))}"
    elif len(refs) > 1:  # a run's blocks are ids of its own tokenizer only
        raise UsageError("two masked LMs are compared on text files, not on a run's blocks")
    else:
        run_ids, desc = run_rows(Path(refs[0][1]), RUN_VALIDATION_TOKENS)
    systems = []
    for label, ref in refs:
        model, tokenizer, description = load_masked_lm(ref)
        note(f"model: {description}")
        limit = min(max_length or 512, model.config.max_position_embeddings)
        rows = text_rows(tokenizer, docs, limit) if texts else run_ids
        start = time.perf_counter()
        scores = score_rows(model, tokenizer, rows)
        system = SystemScores(label, description)
        system.values = {
            "pseudo_perplexity": scores.pseudo_perplexity,
            "masked_accuracy": 100 * scores.accuracy,
        }
        system.details["pseudo_perplexity"] = {
            "tokens": scores.tokens,
            "rows": scores.rows,
            "mean_nll": scores.mean_nll,
            "max_length": scores.max_length,
            "seconds": round(time.perf_counter() - start, 2),
        }
        systems.append(system)
    report = Report("masked", systems, data={"text": desc})
    report.notes.append(
        "pseudo-perplexity (Salazar et al. 2020): every token masked in turn, one copy each; "
        "masked accuracy: top-1 on those copies (x100)"
    )
    return report
