"""A model to use from Python (`llmkit.load`): each method does what its command does, with
the run's task card (prompt format, stop strings, labels) applied as the CLI applies it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

    from llmkit.config.decoding import DecodingConfig
    from llmkit.inference.classify import Classifier, Prediction
    from llmkit.models.load import LoadedModel


class Model:
    """A model and its run's task card. Each method does what its command does:
    `generate` (llmkit generate), `chat` (one turn of llmkit chat), `classify`, `embed`,
    `perplexity` (llmkit eval --text), `evaluate` (llmkit eval --model)."""

    def __init__(self, ref: str, kind: str | None) -> None:
        self.ref = ref
        self.kind = kind  # causal, seq2seq, classifier, masked, encoder; None: a hub name
        self._generator: LoadedModel | None = None
        self._classifier: Classifier | None = None
        self._encoder: tuple[Any, Any, int] | None = None

    def __repr__(self) -> str:
        return f"Model({self.ref!r}, kind={self.kind!r})"

    def generator(self) -> LoadedModel:
        from llmkit.models.load import load_generator

        if self._generator is None:
            self._generator = load_generator(self.ref)
        return self._generator

    def generate(
        self,
        prompt: str | Sequence[str],
        *,
        chat: bool | None = None,
        template: str | None = None,
        system: str | None = None,
        batch_size: int = 8,
        **decoding: Any,
    ) -> Any:
        """The completion of a prompt (a list of them for a list, in order), prompted as the
        run was trained (its chat template, text template and stop strings). `decoding`:
        `llmkit generate`'s options (max_new_tokens, do_sample, temperature, top_p, seed,
        stop, num_return_sequences...); with several sequences, a list per prompt."""
        from llmkit.inference.generate import answer_stops_for, generate_with_stats
        from llmkit.models.card import prompt_format_for

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or any(not p.strip() for p in prompts):
            raise UsageError("a prompt is empty: there is nothing to continue")
        options = _decoding(decoding)
        loaded = self.generator()
        fmt = prompt_format_for(loaded.card, chat=chat, template=template, system=system)
        result = generate_with_stats(
            loaded,
            prompts,
            options,
            batch_size=batch_size,
            prompt_format=fmt,
            answer_stops=answer_stops_for(loaded, options),
            progress=False,
        )
        out = [c[0] if len(c) == 1 else c for c in result.completions]
        return out[0] if isinstance(prompt, str) else out

    def chat(
        self,
        message: str,
        *,
        history: Sequence[Mapping[str, str]] = (),
        system: str | None = None,
        **decoding: Any,
    ) -> str:
        """The answer to `message` after `history` ({"role", "content"} turns), through the
        chat template as `llmkit chat` renders it (oldest exchanges dropped to fit the
        context); the answer is streamed to stdout as it comes, and returned."""
        from llmkit.inference.chat import Conversation, context_budget, fit, stream_reply
        from llmkit.inference.generate import generation_config_for
        from llmkit.models.card import prompt_format_for

        if not message.strip():
            raise UsageError("the message is empty")
        options = _decoding(decoding)
        loaded = self.generator()
        fmt = prompt_format_for(loaded.card, chat=True, system=system)
        config = generation_config_for(loaded, options)
        conversation = Conversation(system=fmt.system, template=fmt.template)
        conversation.turns = [{"role": m["role"], "content": m["content"]} for m in history]
        conversation.ask(message)
        ids, _ = fit(
            loaded.tokenizer, conversation, context_budget(loaded.model, config.max_new_tokens)
        )
        return stream_reply(loaded, ids, config, options.stop or []).text.strip()

    def classify(self, text: str | Sequence[str], *, batch_size: int = 32) -> Any:
        """A fine-tuned classifier's prediction (label, score, scores per class) for a text,
        or a list of them for a list."""
        from llmkit.inference.classify import classify_texts, load_classifier

        texts = [text] if isinstance(text, str) else list(text)
        if self._classifier is None:
            self._classifier = load_classifier(self.ref)
        predictions: list[Prediction] = classify_texts(
            self._classifier, texts, batch_size=batch_size
        )
        return predictions[0] if isinstance(text, str) else predictions

    def embed(self, texts: str | Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Sentence embeddings as `llmkit embed` makes them: float32 [n, dim], mean-pooled
        and L2-normalized (cosine similarity is a dot product); one text gives [1, dim]."""
        from llmkit.inference.embed import embed_texts
        from llmkit.models.load import load_encoder

        if self._encoder is None:
            self._encoder = load_encoder(self.ref)
        model, tokenizer, max_tokens = self._encoder
        rows = [texts] if isinstance(texts, str) else list(texts)
        return embed_texts(model, tokenizer, rows, batch_size=batch_size, max_tokens=max_tokens)

    def perplexity(
        self,
        texts: str | Sequence[str],
        *,
        max_length: int | None = None,
        stride: int | None = None,
    ) -> float:
        """Perplexity of the texts (joined by blank lines) with a sliding window, as
        `llmkit eval --text` reports `perplexity_sliding` (window: the model's context up to
        1,024 tokens; stride: half the window)."""
        from llmkit.evaluation.perplexity import model_context_length, perplexity_sliding
        from llmkit.evaluation.score import MAX_DEFAULT_WINDOW

        rows = [texts] if isinstance(texts, str) else list(texts)
        if not any(t.strip() for t in rows):
            raise UsageError("the text is empty: there is nothing to score")
        loaded = self.generator()
        context = model_context_length(loaded.model)
        length = max_length or min(context or MAX_DEFAULT_WINDOW, MAX_DEFAULT_WINDOW)
        if context is not None and length > context:
            raise UsageError(f"max_length {length} exceeds the model's context of {context} tokens")
        step = stride or max(1, length // 2)
        result = perplexity_sliding(
            loaded.model, loaded.tokenizer, rows, max_length=length, stride=step
        )
        return float(result.ppl)

    def evaluate(
        self,
        data: str | Path | None = None,
        *,
        metrics: str | Sequence[str] | None = None,
        output_dir: str | Path | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """`llmkit eval --model`: with no `data`, a fine-tune's own validation examples (or the
        default suite); with a JSONL/CSV `data`, generate and score. The report is saved (to
        `output_dir`, default runs/eval/<time>) and its metrics.json comes back. `options`:
        the other `llmkit eval` options by field name (limit, max_new_tokens, batch_size...)."""
        from llmkit.commands.eval import run_eval
        from llmkit.config.base import validate
        from llmkit.config.requests import EvalRequest
        from llmkit.io.quiet import harmless_warnings_ignored

        if not isinstance(metrics, str) and metrics is not None:
            metrics = ",".join(metrics)
        values = {"model": self.ref, "data": data, "metrics": metrics, **options}
        values["output_dir"] = output_dir
        req = validate(EvalRequest, {k: v for k, v in values.items() if v is not None})
        with harmless_warnings_ignored():
            out = run_eval(req)
        report: dict[str, Any] = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        return report


def _decoding(options: Mapping[str, Any]) -> DecodingConfig:
    from llmkit.config.base import validate
    from llmkit.config.decoding import DecodingConfig, layered

    return layered(None, validate(DecodingConfig, dict(options)))
