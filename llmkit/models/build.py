"""Build a model for pretraining: from the recipe's sizes, or loaded from `model.init`."""

from __future__ import annotations

from typing import Any

from llmkit.errors import UsageError
from llmkit.models.load import check_vocab, loading, resolve_ref


def build_model(recipe: Any, tokenizer: Any) -> Any:
    """A model for pretraining: built from the recipe's sizes, or loaded from `model.init`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    m = recipe.model
    auto = AutoModelForMaskedLM if recipe.task == "masked_lm" else AutoModelForCausalLM
    if m.init is not None:
        if m.trust_remote_code:
            print(f"warning: trust_remote_code is on: code shipped with {m.init} will run")
        with loading("model", m.init, "model.init"):
            model = auto.from_pretrained(
                resolve_ref(m.init),
                attn_implementation=m.attn_implementation,
                trust_remote_code=m.trust_remote_code,
            )
        check_vocab(model, tokenizer, "model.init")
        return model

    # Round the embedding up (50257 -> 50304 for GPT-2): the extra rows are never targets,
    # and aligned shapes let the output projection use faster matmul kernels.
    mult = m.pad_vocab_to_multiple_of
    vocab = -(-len(tokenizer) // mult) * mult
    try:
        # Keys llmkit sets are refused by the recipe schema (SET_BY_LLMKIT), so none is
        # passed twice here.
        if m.arch == "lstm":  # llmkit's own model: no attention kernel to choose
            from llmkit.models.lstm import LSTMConfig, LSTMForCausalLM

            model = LSTMForCausalLM(
                LSTMConfig(**_arch_kwargs(m, vocab, tokenizer), **m.config_overrides)
            )
        else:
            config = AutoConfig.for_model(
                m.arch, **_arch_kwargs(m, vocab, tokenizer), **m.config_overrides
            )
            model = auto.from_config(config, attn_implementation=m.attn_implementation)
    except Exception as e:  # huggingface_hub's strict checks raise bare Exceptions
        if not m.config_overrides:
            raise  # llmkit's own sizes: a bug, keep the traceback
        # e.g. `layer_norm_epsilon: abc`: huggingface_hub's StrictDataclassFieldValidationError
        # (an Exception, two lines), or a TypeError from deep inside the model's __init__.
        said = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise UsageError(
            f"model.config_overrides: the {m.arch} model cannot be built with them: "
            f"{said[:300] or type(e).__name__}"
        ) from None
    return model


def _arch_kwargs(m: Any, vocab: int, tok: Any) -> dict[str, Any]:
    """llmkit's generic sizes -> each family's config names."""
    if m.arch == "gpt2":
        return {
            "vocab_size": vocab,
            "n_positions": m.max_position_embeddings,
            "n_embd": m.hidden_size,
            "n_layer": m.num_layers,
            "n_head": m.num_heads,
            "n_inner": m.intermediate_size,
            "resid_pdrop": m.dropout,
            "embd_pdrop": m.dropout,
            "attn_pdrop": m.dropout,
            "bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
            "eos_token_id": tok.eos_token_id,
        }
    if m.arch == "lstm":
        return {
            "vocab_size": vocab,
            "hidden_size": m.hidden_size,
            "num_hidden_layers": m.num_layers,
            "dropout": m.dropout,
            "bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
            "eos_token_id": tok.eos_token_id,
        }
    if m.arch == "llama":
        # SwiGLU has three matrices, so 8/3 x hidden keeps the MLP's parameters at 4x-MLP size;
        # rounded to a multiple of 64 for aligned matmuls.
        inter = m.intermediate_size or -(-(8 * m.hidden_size // 3) // 64) * 64
        return {
            "vocab_size": vocab,
            "hidden_size": m.hidden_size,
            "intermediate_size": inter,
            "num_hidden_layers": m.num_layers,
            "num_attention_heads": m.num_heads,
            "num_key_value_heads": m.num_kv_heads or m.num_heads,
            "max_position_embeddings": m.max_position_embeddings,
            "attention_dropout": m.dropout,
            "tie_word_embeddings": True,
            "bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        }
    return {  # bert
        "vocab_size": vocab,
        "hidden_size": m.hidden_size,
        "intermediate_size": m.intermediate_size or 4 * m.hidden_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_heads,
        "max_position_embeddings": m.max_position_embeddings,
        "hidden_dropout_prob": m.dropout,
        "attention_probs_dropout_prob": m.dropout,
        "pad_token_id": tok.pad_token_id,
    }


def build_seq2seq(scratch: Any, tokenizer: Any) -> Any:
    """A new T5 (random weights) sized by `model.scratch`, over the tokenizer's vocabulary.

    T5 starts every answer from its decoder start token, the pad id; a GPT-2-style tokenizer
    has no pad token, so its EOS serves (labels are padded with -100, never with it).
    """
    from transformers import T5Config, T5ForConditionalGeneration

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=scratch.d_model,
        d_kv=scratch.d_model // scratch.num_heads,
        d_ff=scratch.d_ff,
        num_layers=scratch.num_layers,
        num_decoder_layers=scratch.num_layers,
        num_heads=scratch.num_heads,
        dropout_rate=scratch.dropout,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    config.decoder_start_token_id = pad  # read by _shift_right and by generate
    # Trainer aligns the config with the tokenizer (and warns) when a special id differs.
    config.bos_token_id = tokenizer.bos_token_id
    return T5ForConditionalGeneration(config)
