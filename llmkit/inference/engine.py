"""What runs in the model's process of `llmkit serve` (transformers 5.25 spawns one: the
engine), and what the API server keeps of the model (`ServedModel`: no weights).

`RunLoader` is pickled into that process and loads the model there with llmkit's own loader;
`stop_in_answers` and `generate_alone` change how it generates (see llmkit.inference.serve).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers.cli.serving.model_manager import ModelLoader

from llmkit.errors import UsageError
from llmkit.inference.stops import GeneratedStop, as_list, without_stop_strings
from llmkit.models.load import LoadedModel


@dataclass(frozen=True)
class ServedModel:
    """What the API server keeps of the model it serves: no weights (those live in the
    engine's process, which loads them again from `ref`)."""

    ref: str
    trust_remote_code: bool
    config: Any  # the model's PretrainedConfig (a LoRA run: its base model's)
    tokenizer: Any
    generation_config: Any  # generate's options on the model's own (generation_config_for)
    vocab_size: int  # token ids a logit_bias may name

    @classmethod
    def from_loaded(
        cls, ref: str, loaded: LoadedModel, generation_config: Any, trust_remote_code: bool
    ) -> ServedModel:
        check_servable(loaded)
        # A LoRA model answers these through its base: no merge here (the engine merges).
        model = loaded.model
        vocab = int(model.get_input_embeddings().weight.shape[0])
        return cls(ref, trust_remote_code, model.config, loaded.tokenizer, generation_config, vocab)


def check_servable(loaded: LoadedModel) -> None:
    if loaded.is_encoder_decoder:
        raise UsageError(
            "llmkit serve answers with causal LMs; an encoder-decoder (T5) answers through "
            "llmkit generate"
        )


def servable(loaded: LoadedModel) -> tuple[Any, Any]:
    """The model as it answers: a causal LM, its LoRA adapter merged (one matmul per layer,
    not three)."""
    check_servable(loaded)
    model = loaded.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model, loaded.tokenizer


class RunLoader(ModelLoader):
    """How the engine's process loads the served model: with llmkit's loader, the generation
    config set as `llmkit generate` would. Pickled into that process (spawn), so it carries
    only the reference and the options, not the tokenizer or the config."""

    def __init__(self, served: ServedModel) -> None:
        super().__init__(device="cpu")
        self.ref, self.trust_remote_code = served.ref, served.trust_remote_code
        self.generation = served.generation_config.to_dict()
        self.served: ServedModel | None = served  # the API server's side only

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "served": None}

    def load_config(self, model_id: str) -> tuple[Any, Any]:
        assert self.served is not None
        return self.served.config, self.served.generation_config

    def load_processor(self, model_id: str) -> Any:
        assert self.served is not None
        return self.served.tokenizer

    def load_model_and_processor(self, model_id: str, on_progress: Any = None) -> Any:
        from transformers import GenerationConfig

        from llmkit.models.load import load_generator

        loaded = load_generator(
            self.ref, trust_remote_code=self.trust_remote_code, use="llmkit serve"
        )
        model, tokenizer = servable(loaded)
        model.generation_config = GenerationConfig.from_dict(self.generation)
        stop_in_answers(model, tokenizer)
        return model, tokenizer


def stop_in_answers(model: Any, tokenizer: Any) -> None:
    """Stop strings matched in the answer only (module doc), in the engine's process: its
    runners call `model.generate(..., stop_strings=...)` with the request's; the server's own
    (generate's stop options) move from the generation config to the same criterion."""
    from transformers import StoppingCriteriaList

    model.generation_config, server_stops = without_stop_strings(model.generation_config)
    generate = model.generate

    def generate_stopping_in_answer(*args: Any, **kwargs: Any) -> Any:
        stops = as_list(kwargs.pop("stop_strings", None)) or server_stops
        if stops:
            criteria = StoppingCriteriaList(kwargs.get("stopping_criteria") or [])
            criteria.append(GeneratedStop(tokenizer, stops, kwargs["input_ids"].shape[-1]))
            kwargs["stopping_criteria"] = criteria
        return generate(*args, **kwargs)

    model.generate = generate_stopping_in_answer


def generate_alone(
    model: Any, processor: Any, inputs: dict[str, Any], kwargs: dict[str, Any], streamer: Any = None
) -> list[int]:
    """One request's `model.generate`, in the engine's process, beside the continuous batch:
    for the options batching ignores (stop strings, seed, penalties, logit bias)."""
    import torch

    kwargs = dict(kwargs)
    seed = kwargs.pop("seed", None)
    if seed is not None:
        torch.manual_seed(seed)
    tensors = {
        k: (torch.as_tensor([v]) if isinstance(v, list) else v).to(model.device)
        for k, v in inputs.items()
    }
    settings = {k: v for k, v in kwargs.items() if v is not None}
    out = model.generate(**tensors, **settings, tokenizer=processor, streamer=streamer)
    return list(out[0, tensors["input_ids"].shape[-1] :].tolist())
