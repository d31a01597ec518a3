"""An LSTM language model (Embedding -> LSTM -> Linear softmax) as a transformers model.

The pre-Transformer baseline of the articles llmkit's users learn from, built as a
`PreTrainedModel` + `PretrainedConfig` so everything around a GPT-2 works unchanged: llmkit's
prep, `Trainer`, checkpoints and exact resume, `generate` (`GenerationMixin`), `eval`
perplexity, `plot`, and `AutoModelForCausalLM.from_pretrained(run)`.

Importing this module registers the config and model with the Auto classes (model_type
`llmkit_lstm`), so a run folder loads without `trust_remote_code`; llmkit's loaders import it
before any `from_pretrained` (`llmkit.models.load.loading`), and plain transformers code does
`import llmkit.models.lstm` once.

Generation recomputes the whole sequence at every new token instead of carrying the (h, c)
state as a cache: transformers 5's cache classes are built for attention keys/values (and an
internal linear-attention layer whose API moves between 5.x releases), and an LSTM over a few
hundred tokens costs milliseconds on a CPU (measured in the README's table).
"""

from __future__ import annotations

from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

MODEL_TYPE = "llmkit_lstm"


@strict  # transformers 5 configs are checked dataclasses: a wrong type fails in one line
class LSTMConfig(PretrainedConfig):
    """Sizes of an LSTM LM: the embedding and every LSTM layer are `hidden_size` wide, and the
    output projection is tied to the embedding (as GPT-2's is)."""

    model_type = MODEL_TYPE

    vocab_size: int = 50304
    hidden_size: int = 256
    num_hidden_layers: int = 2
    dropout: float | int = 0.0
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True


class LSTMForCausalLM(PreTrainedModel, GenerationMixin):
    """input_ids [batch, seq] -> embedding [batch, seq, hidden] -> LSTM layers -> dropout ->
    logits [batch, seq, vocab]; token t predicts token t + 1, as in every causal LM."""

    config_class = LSTMConfig
    config: LSTMConfig
    base_model_prefix = "lstm_lm"
    main_input_name = "input_ids"
    _tied_weights_keys = {"lm_head.weight": "embed.weight"}  # noqa: RUF012 (transformers' API)
    _no_split_modules: list[str] = []  # noqa: RUF012

    def __init__(self, config: LSTMConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.lstm = nn.LSTM(
            config.hidden_size,
            config.hidden_size,
            num_layers=config.num_hidden_layers,
            batch_first=True,
            # nn.LSTM applies it between layers only (and warns with one layer).
            dropout=config.dropout if config.num_hidden_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(config.dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Embedding | nn.Linear):
            module.weight.normal_(0.0, std)
        elif isinstance(module, nn.LSTM):
            # PyTorch's default U(-1/sqrt(h), 1/sqrt(h)), and a forget-gate bias of 1 so
            # early gradients flow through the cell state (Jozefowicz et al. 2015).
            bound = self.config.hidden_size**-0.5
            for name, p in module.named_parameters():
                if name.startswith("weight"):
                    p.uniform_(-bound, bound)
                else:
                    p.zero_()
                    h = self.config.hidden_size
                    if name.startswith("bias_ih"):
                        p[h : 2 * h] = 1.0  # gates are ordered i, f, g, o

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed = value  # type: ignore[assignment]

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def prepare_inputs_for_generation(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        # No cache: every step reads the whole sequence (see the module docstring).
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        embeds = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        hidden = self._run_lstm(self.drop(embeds), attention_mask)
        hidden = self.drop(hidden)
        if isinstance(logits_to_keep, int):
            # 0 keeps every position (slice(-0, None) is the whole sequence)
            hidden = hidden[:, -logits_to_keep:, :]
        else:
            hidden = hidden[logits_to_keep]  # a boolean mask or index tensor, as in HF models
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def _run_lstm(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The LSTM over [batch, seq, hidden]. Padded rows (a 0 in `mask`, left- or
        right-padded as a batched `generate` makes them) are packed so pad tokens never enter
        the state: each row's real tokens are moved to the front, run as a packed sequence,
        and put back where they were; pad positions get zero outputs."""
        if mask is None or bool(mask.all()):
            return self.lstm(x)[0]
        keep = mask.bool()
        lengths = keep.sum(dim=1)
        # A stable sort on "is padding" lists each row's real positions first, in order.
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
        index = order.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        front = torch.gather(x, 1, index)
        packed = nn.utils.rnn.pack_padded_sequence(
            front, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.lstm(packed)
        out = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
        out = out * (torch.arange(x.shape[1], device=x.device) < lengths[:, None]).unsqueeze(-1)
        back = torch.zeros_like(out)
        back.scatter_(1, index, out)
        return back


def register() -> None:
    """Make `AutoConfig`/`AutoModelForCausalLM.from_pretrained` know `llmkit_lstm` (once)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if MODEL_TYPE not in CONFIG_MAPPING:
        AutoConfig.register(MODEL_TYPE, LSTMConfig)
        AutoModelForCausalLM.register(LSTMConfig, LSTMForCausalLM)


register()
