"""What every metric checks first: paired inputs, and how their text is split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from llmkit.errors import UsageError
from llmkit.evaluation.text import TextScheme, scheme_for


def check_pairs(preds: Sequence[str], refs: Sequence[str]) -> None:
    if len(preds) != len(refs):
        raise UsageError(f"{len(preds)} predictions but {len(refs)} references")
    if not preds:
        raise UsageError("no predictions to score")


def check_counts(preds_path: Path | str, n_preds: int, refs_name: str, n_refs: int) -> None:
    if n_preds != n_refs:
        raise UsageError(
            f"{preds_path} has {n_preds} predictions but {refs_name} has {n_refs} references "
            "(they pair up line by line)"
        )


def resolve_scheme(scheme: TextScheme | None, texts: Sequence[str]) -> TextScheme:
    """The given scheme, or the one `texts` call for (references; outputs when there are none)."""
    return scheme if scheme is not None else scheme_for(texts)
