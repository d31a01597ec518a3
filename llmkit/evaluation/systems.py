"""One system of an evaluation: the model a reference names, loaded and announced, and its
generated answers scored (the run's own prompt format and answer rules)."""

from __future__ import annotations

from pathlib import Path

from llmkit.config.requests import EvalRequest
from llmkit.evaluation import modules, score
from llmkit.evaluation.report import EVAL, PREDICTIONS, SystemScores
from llmkit.io.console import note
from llmkit.io.write import mark_owned
from llmkit.models.card import prompt_format_for
from llmkit.models.load import LoadedModel


def load_system(ref: str, use: str = "generation") -> LoadedModel:
    from llmkit.models.load import load_generator

    note(f"model: {(loaded := load_generator(ref, use=use)).description}")
    return loaded


def model_refs(req: EvalRequest) -> list[tuple[str, str]]:
    """[("A", ref), ("B", ref)?]; A defaults to the latest causal-LM run, else SmolLM2."""
    first = req.model or score.default_model_ref(req.runs_root)
    return [("A", first)] + ([("B", req.model_b)] if req.model_b else [])


def generate_and_score(
    label: str,
    ref: str,
    sources: list[str],
    targets: list[str],
    names: list[str],
    req: EvalRequest,
    max_new_tokens: int,
    out_dir: Path,
) -> tuple[SystemScores, LoadedModel]:
    loaded = load_system(ref)
    card = loaded.card
    # The run's own prompt format and answer rules, so its scores here match the ones its
    # training reported; without a card, the chat template when the model has one.
    fmt = prompt_format_for(
        card,
        chat=req.chat,
        template=req.template,
        system=req.system,
        default_chat=bool(getattr(loaded.tokenizer, "chat_template", None)),
    )
    if card and card.max_new_tokens and req.max_new_tokens is None:
        max_new_tokens = card.max_new_tokens
    # A run alone is scored as its training scored it; an A/B splits both systems' text alike.
    own = card if req.model_b is None else None
    mark_owned(out_dir, EVAL)  # answers are written there as they come
    system = score.generate_and_score(
        label,
        loaded,
        sources,
        targets,
        names,
        max_new_tokens=max_new_tokens,
        batch_size=req.batch_size,
        prompt_format=fmt,
        answer_stops=card.stop if card is not None else None,
        predictions=out_dir / PREDICTIONS[label],
        resume=req.resume,
        tokenize=score.tokenize_for(own, req.bleu_tokenize, req.rouge_tokenize),
    )
    if req.metric and system.predictions is not None:
        preds = [str(row["prediction"]) for row in system.predictions]
        modules.add_scores(system, req.metric, preds, targets)
    return system, loaded
