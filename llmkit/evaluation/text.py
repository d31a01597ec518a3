"""How text is split into units for scoring, decided once per corpus by the references' script.

A "word" is a space-separated token only in some scripts. Chinese, Japanese and Thai put no
spaces between words, and rouge-score's default tokenizer keeps only a-z0-9, so splitting on
spaces scored Chinese paraphrases BLEU 0, ROUGE 0 and F1 0 (sacreBLEU's `zh` tokenizer gives
the same pairs 51.1). Here every metric gets its units from one `TextScheme`:

| references   | BLEU, self-BLEU (sacreBLEU) | ROUGE (rouge-score)     | EM/F1, distinct, length |
|--------------|-----------------------------|-------------------------|-------------------------|
| Chinese      | `zh`                        | characters (or `jieba`) | characters (CMRC 2018)  |
| Japanese     | `ja-mecab` (MeCab, IPAdic)  | characters              | characters              |
| Korean       | `ko-mecab` (MeCab-ko)       | characters              | characters              |
| Thai, Lao... | `char`                      | characters              | characters              |
| English...   | `13a` (WMT's)               | its own (a-z0-9, Porter)| SQuAD words             |
| other spaced | `13a`                       | Unicode words           | SQuAD words             |

"Characters" is the mixed segmentation of the Chinese reading-comprehension benchmarks
(CMRC 2018, DRCD): each CJK/Thai character is a unit, a run of other letters or digits (a
Latin word, a number) is one unit, punctuation and spaces are dropped, Latin is lowercased.
chrF needs no choice: it counts character n-grams in every script.

The choice is named in the output (sacreBLEU's signature, `tok:` for the others), and the
eval options or a fine-tuning recipe's `eval.bleu_tokenize` / `eval.rouge_tokenize` override
it.
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from llmkit.errors import UsageError

Script = Literal["zh", "ja", "ko", "th", "nospace", "spaced"]
BleuTokenize = Literal["13a", "intl", "zh", "ja-mecab", "ko-mecab", "char", "none"]
RougeTokenize = Literal["porter", "words", "char", "jieba"]
Units = Literal["words", "char"]

# Code point ranges of the scripts written without spaces between words.
_RANGES: dict[str, tuple[tuple[int, int], ...]] = {
    "han": (
        (0x2E80, 0x2FDF),  # radicals
        (0x3005, 0x3007),  # 々 〆 〇
        (0x3400, 0x4DBF),  # extension A
        (0x4E00, 0x9FFF),  # unified ideographs
        (0xF900, 0xFAFF),  # compatibility ideographs
        (0x20000, 0x323AF),  # extensions B-H
    ),
    "kana": ((0x3040, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F)),
    "hangul": (
        (0x1100, 0x11FF),
        (0x3130, 0x318F),
        (0xA960, 0xA97F),
        (0xAC00, 0xD7AF),
        (0xD7B0, 0xD7FF),
        (0xFFA0, 0xFFDC),
    ),
    "thai": ((0x0E00, 0x0E7F),),
    # Lao, Tibetan, Myanmar, Khmer: no spaces between words either.
    "nospace": ((0x0E80, 0x0EFF), (0x0F00, 0x0FFF), (0x1000, 0x109F), (0x1780, 0x17FF)),
}
_STARTS: list[int] = []
_SPANS: list[tuple[int, str]] = []
for _name, _spans in _RANGES.items():
    for _lo, _hi in _spans:
        _SPANS.append((_lo, _name))
        _SPANS.append((_hi + 1, ""))
_SPANS.sort()
_STARTS = [lo for lo, _ in _SPANS]


def script_of(ch: str) -> str:
    """`han`, `kana`, `hangul`, `thai`, `nospace`, or "" for every other character."""
    i = bisect.bisect_right(_STARTS, ord(ch)) - 1
    return _SPANS[i][1] if i >= 0 else ""


def is_unspaced(ch: str) -> bool:
    """Whether `ch` belongs to a script written without spaces between words."""
    return script_of(ch) != ""


# A script leads when its letters are at least this share of all letters: a Chinese text
# quoting English names is still Chinese, though a Latin word has ~5 letters to a Chinese
# word's 1-2 characters.
_LEADING_SHARE = 0.2
# Japanese writes kana in every sentence (particles, endings: ~40-60% of its characters);
# Chinese has none, so a tenth of kana among the CJK characters says Japanese.
_KANA_SHARE = 0.1


def _class_pattern(name: str) -> re.Pattern[str]:
    return re.compile("[" + "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in _RANGES[name]) + "]")


# Counted by regular expressions (C speed): 10,000 references of ~120 characters in ~0.1 s.
_PATTERNS = {name: _class_pattern(name) for name in _RANGES}
_LETTER = re.compile(r"[^\W\d_]")


def detect_script(texts: Iterable[str]) -> Script:
    """The script family that decides how `texts` are split into words (see module doc)."""
    texts = [t for t in texts if not t.isascii()]
    if not texts:  # ASCII only: English and the like, the common case, at once
        return "spaced"
    joined = "\n".join(texts)
    counts = {name: len(rx.findall(joined)) for name, rx in _PATTERNS.items()}
    letters = max(1, len(_LETTER.findall(joined)))
    cjk = counts["han"] + counts["kana"]
    if counts["hangul"] >= _LEADING_SHARE * letters:
        return "ko"
    if cjk >= _LEADING_SHARE * letters and counts["kana"] >= _KANA_SHARE * cjk:
        return "ja"
    if counts["han"] >= _LEADING_SHARE * letters:
        return "zh"
    if counts["thai"] >= _LEADING_SHARE * letters:
        return "th"
    if counts["nospace"] >= _LEADING_SHARE * letters:
        return "nospace"
    return "spaced"


# sacreBLEU's tokenizer for each script: its own `zh`; MeCab for Japanese and Korean (the
# `ja`/`ko` extras, installed with llmkit); characters where no word tokenizer ships.
BLEU_BY_SCRIPT: dict[Script, str] = {
    "zh": "zh",
    "ja": "ja-mecab",
    "ko": "ko-mecab",
    "th": "char",
    "nospace": "char",
    "spaced": "13a",
}
BLEU_TOKENIZERS: tuple[BleuTokenize, ...] = (
    "13a",
    "intl",
    "zh",
    "ja-mecab",
    "ko-mecab",
    "char",
    "none",
)
ROUGE_TOKENIZERS: tuple[RougeTokenize, ...] = ("porter", "words", "char", "jieba")
# rouge-score's default keeps a-z0-9: text mostly outside ASCII gets Unicode words instead.
_ASCII_SHARE = 0.9


@dataclass(frozen=True)
class TextScheme:
    """How one corpus is split for every metric (see module doc)."""

    script: Script
    bleu: str  # a sacreBLEU tokenizer name
    rouge: RougeTokenize
    units: Units  # EM/F1, distinct-n and length: SQuAD words or CJK characters

    def describe(self) -> dict[str, str]:
        """What metrics.json and the table say about the splitting."""
        return {
            "script": self.script,
            "bleu_tokenize": self.bleu,
            "rouge_tokenize": self.rouge,
            "units": UNITS_TEXT[self.units],
        }


UNITS_TEXT: dict[Units, str] = {
    "words": "words (SQuAD: lowercased, no punctuation or articles, split on spaces)",
    "char": "characters (CMRC 2018: CJK/Thai characters, other words; no punctuation)",
}


def scheme_for(
    references: Sequence[str], *, bleu: str | None = None, rouge: str | None = None
) -> TextScheme:
    """The scheme for a corpus, from its references' script; `bleu`/`rouge` override."""
    script = detect_script(references)
    if bleu is not None and bleu not in BLEU_TOKENIZERS:
        raise UsageError(f"bleu tokenizer '{bleu}' is not one of {', '.join(BLEU_TOKENIZERS)}")
    if rouge is not None and rouge not in ROUGE_TOKENIZERS:
        raise UsageError(f"rouge tokenizer '{rouge}' is not one of {', '.join(ROUGE_TOKENIZERS)}")
    unspaced = script != "spaced"
    if rouge is None:
        rouge = "char" if unspaced else ("porter" if _mostly_ascii(references) else "words")
    return TextScheme(
        script=script,
        bleu=bleu or BLEU_BY_SCRIPT[script],
        rouge=rouge,  # type: ignore[arg-type]  # checked above
        units="char" if unspaced else "words",
    )


def _mostly_ascii(texts: Sequence[str]) -> bool:
    if all(text.isascii() for text in texts):
        return True
    letters = _LETTER.findall("\n".join(texts))
    return not letters or sum(ch.isascii() for ch in letters) >= _ASCII_SHARE * len(letters)


# --- units ---------------------------------------------------------------------------------


def _runs(text: str) -> list[str]:
    """Maximal runs of letters, numbers and combining marks (Thai vowels and tones are
    marks): what is left once punctuation, symbols and spaces split the text."""
    runs, run = [], []
    for ch in text:
        if unicodedata.category(ch)[0] in "LNM":
            run.append(ch)
        elif run:
            runs.append("".join(run))
            run = []
    if run:
        runs.append("".join(run))
    return runs


def char_units(text: str) -> list[str]:
    """CMRC 2018's mixed segmentation: each CJK/Thai character (with its combining marks),
    each other word or number (lowercased); punctuation, symbols and spaces dropped."""
    units: list[str] = []
    for part in _runs(text.lower()):
        word = ""
        for ch in part:
            if not is_unspaced(ch):
                word += ch
                continue
            if word:
                units.append(word)
                word = ""
            if unicodedata.category(ch).startswith("M") and units:
                units[-1] += ch  # a mark joins the character before it
            else:
                units.append(ch)
        if word:
            units.append(word)
    return units


def word_units(text: str) -> list[str]:
    """Unicode words, lowercased (for spaced scripts outside rouge-score's a-z0-9)."""
    return _runs(text.lower())


@functools.cache
def _jieba() -> Any:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)  # "Building prefix dict..." on first use
    return jieba


def jieba_units(text: str) -> list[str]:
    """Chinese words by jieba (accurate mode); other words lowercased; punctuation dropped."""
    return [unit for word in _jieba().lcut(text) for unit in _runs(word.lower())]


def rouge_tokenizer(name: RougeTokenize) -> Any:
    """A rouge-score Tokenizer: `porter` is rouge-score's default (a-z0-9, Porter stemmer,
    memoized: same tokens, half the time), the others split as named."""
    from rouge_score import tokenizers

    if name == "porter":
        return _porter_tokenizer()
    split = {"words": word_units, "char": char_units, "jieba": jieba_units}[name]

    class _Units(tokenizers.Tokenizer):
        def tokenize(self, text: str) -> list[str]:
            return split(text)

    return _Units()


@functools.cache
def _porter_tokenizer() -> Any:
    from nltk.stem import porter
    from rouge_score import tokenize, tokenizers

    class _CachedStemmer:
        def __init__(self) -> None:
            self.stem = functools.lru_cache(maxsize=2**18)(porter.PorterStemmer().stem)

    class _StemCacheTokenizer(tokenizers.Tokenizer):
        """rouge-score's DefaultTokenizer(use_stemmer=True), with a memoized stemmer:
        stemming is ~55% of rouge-score's time and a word always stems the same way."""

        def __init__(self) -> None:
            self._stemmer = _CachedStemmer()

        def tokenize(self, text: str) -> list[str]:
            return list(tokenize.tokenize(text, self._stemmer))

    return _StemCacheTokenizer()


def reset_caches() -> None:
    """Forget the memoized stemmer and segmenter, as a new process starts (benchmarks)."""
    _porter_tokenizer.cache_clear()


# A sentence ends at . ! ? followed by whitespace, or at a CJK full stop, ！ or ？ (no space
# follows those); only ROUGE-Lsum reads sentences.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])\s*")


def split_sentences(text: str) -> str:
    """One sentence per line, as ROUGE-Lsum expects (rouge-score splits Lsum on newlines)."""
    lines = (s for line in text.splitlines() for s in _SENTENCE_END.split(line.strip()))
    return "\n".join(s for s in lines if s)
