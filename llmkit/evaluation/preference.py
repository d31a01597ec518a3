"""Preference accuracy and margin of any causal LM on prompt/chosen/rejected pairs.

For each pair the model scores both answers by their summed log-probability given the prompt
(the quantity DPO's implicit reward is built from: reward = beta x (log p - log p_ref)):

    margin_i   = log p(chosen | prompt) - log p(rejected | prompt)     (nats)
    accuracy   = 100 x share of pairs with margin_i > 0 (a tie counts as wrong, as in TRL)
    margin     = mean of margin_i

No reference model is needed, so base, SFT and DPO models compare on the same pairs and
the same scale; per-pair values feed the A/B comparison's paired bootstrap. Prompts and
answers are rendered as in training (llmkit.data.preference.render): through the chat
template when the model's task card says chat (or it has a template and no card), else as
plain text with EOS after the answer, as TRL appends it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from llmkit.errors import UsageError

PAIR_FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferenceScores:
    accuracy: float  # 0-100
    margin: float  # mean nats
    correct: list[float]  # per pair: 1.0 when chosen scored above rejected
    margins: list[float]  # per pair, nats


EMBEDDED = "embedded:chatterbot-preference"  # its held-out split (llmkit.data.examples)


def is_preference_file(path: str | Path) -> bool:
    """The embedded pairs, or a JSONL whose first row has prompt/chosen/rejected fields."""
    from llmkit.io.files import read_records

    if str(path) == EMBEDDED:
        return True
    p = Path(path)
    if p.suffix.lower() not in (".jsonl", ".json") or not p.is_file():
        return False
    rows = read_records(p)
    return bool(rows) and all(k in rows[0][1] for k in PAIR_FIELDS)


def read_preference_pairs(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    from llmkit.data.examples import EMBEDDED_ROWS
    from llmkit.io.files import read_records

    if str(path) == EMBEDDED:  # the held-out split: questions no preference run trained on
        records = [(f"{EMBEDDED} row {i}", r) for i, r in enumerate(EMBEDDED_ROWS[EMBEDDED]()[1])]
    else:
        records = list(read_records(path))
    rows = []
    for where, r in records:
        missing = [k for k in PAIR_FIELDS if r.get(k) in (None, "", [])]
        if missing:
            raise UsageError(f"{where}: missing {', '.join(missing)}")
        rows.append({k: r[k] for k in PAIR_FIELDS})
    return rows[:limit] if limit else rows


def render_pairs(
    rows: list[dict[str, Any]], tokenizer: Any, *, chat: bool, system: str | None = None
) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) text as training renders it."""
    from llmkit.data.preference import render

    data = SimpleNamespace(format="chat" if chat else "prompt_completion", system=system)
    eos = "" if chat else (tokenizer.eos_token or "")
    out = []
    for r in rows:
        prompt, chosen = render(r["prompt"], r["chosen"], data, tokenizer)
        _, rejected = render(r["prompt"], r["rejected"], data, tokenizer)
        out.append((prompt, chosen + eos, rejected + eos))
    return out


def answer_logps(
    model: Any, tokenizer: Any, pairs: list[tuple[str, str]], batch_size: int = 8
) -> list[float]:
    """Summed log p(answer | prompt) for each (prompt, answer), in nats. The answer's tokens
    are those where the tokenized prompt + answer leaves the tokenized prompt (TRL's split)."""
    import torch

    seqs: list[tuple[list[int], int]] = []
    for prompt, answer in pairs:
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
        start = next((i for i, (a, b) in enumerate(zip(p_ids, full, strict=False)) if a != b), None)
        seqs.append((full, min(len(p_ids), len(full)) if start is None else start))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    model.eval()
    for i in range(0, len(seqs), batch_size):
        batch = seqs[i : i + batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        scored = torch.zeros((len(batch), width), dtype=torch.bool)
        for j, (seq, start) in enumerate(batch):  # right padding: positions stay 0..n-1
            ids[j, : len(seq)] = torch.tensor(seq)
            mask[j, : len(seq)] = 1
            scored[j, start : len(seq)] = True
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        target = ids[:, 1:].to(device)
        token_logps = logps.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        out += (token_logps * scored[:, 1:].to(device)).sum(dim=1).tolist()
    return out


def preference_scores(
    model: Any, tokenizer: Any, rendered: list[tuple[str, str, str]], batch_size: int = 8
) -> PreferenceScores:
    if not rendered:
        raise UsageError("no preference pairs to score")
    chosen = answer_logps(model, tokenizer, [(p, c) for p, c, _ in rendered], batch_size)
    rejected = answer_logps(model, tokenizer, [(p, r) for p, _, r in rendered], batch_size)
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    correct = [1.0 if m > 0 else 0.0 for m in margins]
    n = len(margins)
    return PreferenceScores(100 * sum(correct) / n, sum(margins) / n, correct, margins)


def score_system(label: str, loaded: Any, path: Path, *, limit: int | None, batch_size: int) -> Any:
    """One model's SystemScores on a preference file, with per-pair stats for the bootstrap."""
    from llmkit.evaluation.report import SystemScores
    from llmkit.evaluation.significance import mean_stats

    card = loaded.card
    tokenizer = loaded.tokenizer
    has_template = bool(getattr(tokenizer, "chat_template", None))
    chat = card.prompt.chat if card is not None else has_template
    system_prompt = card.prompt.system if card is not None else None
    rendered = render_pairs(
        read_preference_pairs(path, limit), tokenizer, chat=chat, system=system_prompt
    )
    scores = preference_scores(loaded.model, tokenizer, rendered, batch_size)
    system = SystemScores(label, loaded.description)
    system.values = {
        "preference_accuracy": round(scores.accuracy, 2),
        "preference_margin": round(scores.margin, 4),
    }
    system.examples = {
        "preference_accuracy": mean_stats(scores.correct, 100.0),
        "preference_margin": mean_stats(scores.margins, 1.0),
    }
    system.details["preference"] = {
        "pairs": len(rendered),
        "prompt_format": "chat template" if chat else "raw text",
        "score": "summed log-probability of each answer given the prompt (nats)",
    }
    return system


def preference_report(
    refs: list[tuple[str, str]],
    path: Path,
    limit: int | None,
    batch_size: int,
    load: Callable[[str], Any],
) -> Any:
    """`llmkit eval` on a preference file: each model's preference accuracy and margin."""
    from llmkit.evaluation.report import Report

    systems = [
        score_system(label, load(ref), path, limit=limit, batch_size=batch_size)
        for label, ref in refs
    ]
    n = systems[0].details["preference"]["pairs"]
    report = Report("preference", systems, data={"data": f"{path} ({n} pairs)", "examples": n})
    report.notes.append(
        "preference accuracy: % of pairs whose chosen answer the model finds more likely "
        "than the rejected one; margin: mean log-probability gap (nats)"
    )
    return report
