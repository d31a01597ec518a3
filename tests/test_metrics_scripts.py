"""Metrics in every script (issue 22): Chinese, Japanese, Korean and Thai are split into words
or characters as their standard tools split them, and the output says how.

Each language is checked against the reference implementation run directly: sacreBLEU with
that language's standard tokenizer, and rouge-score on the text split into characters (the
CMRC 2018 convention) or jieba words by the test itself. Property tests then generate text in
many scripts and check that llmkit's numbers equal those libraries' with the tokenizer llmkit
reports, and that text sharing something never scores 0.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pytest
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmkit.evaluation import metrics
from llmkit.evaluation.text import char_units, detect_script, rouge_tokenizer, scheme_for

# (language, predictions, references, sacreBLEU tokenizer): natural paraphrases.
TABLE = {
    "zh": (
        ["今天天气不错，我们去公园走走吧。", "他昨天买了一本新书。", "这家饭店的菜很好吃。"],
        ["今天天气很好，我们去公园散步吧。", "他昨天买了一本书。", "这家餐厅的菜非常好吃。"],
        "zh",
    ),
    "ja": (
        ["今日はとても良い天気ですね。", "私は毎朝コーヒーを飲みます。"],
        ["今日はいい天気ですね。", "私は毎朝コーヒーを飲んでいます。"],
        "ja-mecab",
    ),
    "ko": (
        ["오늘 날씨가 정말 좋네요.", "저는 매일 아침 커피를 마셔요."],
        ["오늘은 날씨가 아주 좋네요.", "저는 아침마다 커피를 마십니다."],
        "ko-mecab",
    ),
    "th": (
        ["วันนี้อากาศดีมาก", "ฉันดื่มกาแฟทุกเช้า"],
        ["วันนี้อากาศดี", "ฉันดื่มกาแฟทุกวัน"],
        "char",
    ),
    "en": (
        ["the cat sat on the mat today", "he bought a new book yesterday"],
        ["the cat sat on the mat", "he bought a book yesterday"],
        "13a",
    ),
}

UNSPACED = re.compile(r"[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def _chars_by_hand(text: str) -> str:
    """The test's own character split: each CJK/Thai letter alone (a Thai
    mark joins the letter before it), runs of other letters and digits as words, the rest
    dropped; space-joined."""
    out: list[str] = []
    word = ""
    for ch in text.lower():
        cat = unicodedata.category(ch)
        if UNSPACED.match(ch):
            if word:
                out.append(word)
                word = ""
            if cat.startswith("M") and out:
                out[-1] += ch
            else:
                out.append(ch)
        elif cat[0] in "LNM":
            word += ch
        elif word:
            out.append(word)
            word = ""
    if word:
        out.append(word)
    return " ".join(out)


def _rouge_of_split(preds: list[str], refs: list[str], split: object) -> dict[str, float]:
    """rouge-score itself on text the test split: its tokenizer only splits on spaces."""
    from rouge_score import rouge_scorer, tokenizers

    class Spaces(tokenizers.Tokenizer):
        def tokenize(self, text: str) -> list[str]:
            return text.split()

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=Spaces())
    scores = [
        scorer.score(split(r), split(p))  # type: ignore[operator]
        for p, r in zip(preds, refs, strict=True)
    ]
    return {k: 100 * sum(s[k].fmeasure for s in scores) / len(scores) for k in scores[0]}


@pytest.mark.parametrize("lang", TABLE)
def test_bleu_equals_sacrebleu_with_the_languages_standard_tokenizer(lang: str) -> None:
    from sacrebleu.metrics import BLEU

    preds, refs, tokenizer = TABLE[lang]
    direct = BLEU(tokenize=tokenizer).corpus_score(preds, [refs])
    got = metrics.bleu(preds, refs)
    assert got.score == pytest.approx(direct.score, abs=1e-6)
    assert f"tok:{tokenizer}" in got.signature
    assert got.score > 10  # paraphrases share words: nothing scores 0 any more


@pytest.mark.parametrize("lang", ["zh", "ja", "ko", "th"])
def test_rouge_and_f1_count_characters_as_cmrc_does(lang: str) -> None:
    preds, refs, _ = TABLE[lang]
    got = metrics.rouge(preds, refs)
    expected = _rouge_of_split(preds, refs, _chars_by_hand)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    assert metrics.token_f1(preds, refs) == pytest.approx(expected["rouge1"], abs=1e-6)


def test_english_keeps_rouge_scores_own_tokenizer_and_squad_words() -> None:
    from rouge_score import rouge_scorer

    preds, refs, _ = TABLE["en"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    direct = [scorer.score(r, p) for p, r in zip(preds, refs, strict=True)]
    got = metrics.rouge(preds, refs)
    assert got["rouge1"] == pytest.approx(100 * sum(d["rouge1"].fmeasure for d in direct) / 2)
    assert metrics.avg_length(preds) == pytest.approx((7 + 6) / 2)  # whitespace words


def test_the_issues_chinese_pairs_score_as_sacrebleu_zh_does() -> None:
    """The report: BLEU 0.00, ROUGE 0.00, F1 0.00, distinct-2 0, length 1 word."""
    preds, refs, _ = TABLE["zh"]
    s = scheme_for(refs)
    assert (s.script, s.bleu, s.rouge, s.units) == ("zh", "zh", "char", "char")
    assert metrics.distinct_n(preds, 2) > 0.9
    assert metrics.avg_length(preds) == pytest.approx(
        (14 + 9 + 9) / 3
    )  # characters, punctuation aside


def test_jieba_words_are_the_chinese_word_option() -> None:
    import jieba

    preds, refs, _ = TABLE["zh"]
    got = metrics.rouge(preds, refs, scheme_for(refs, rouge="jieba"))

    def words(text: str) -> str:
        return " ".join(w for w in jieba.lcut(text) if unicodedata.category(w[0])[0] in "LN")

    expected = _rouge_of_split(preds, refs, words)
    assert got["rouge1"] == pytest.approx(expected["rouge1"], abs=1e-6)
    assert got["rouge1"] != metrics.rouge(preds, refs)["rouge1"]  # words, not characters


def test_rouge_lsum_splits_chinese_sentences_at_full_stops() -> None:
    pred = "今天天气很好。我们去公园吧！"
    ref = "我们去公园吧！今天天气很好。"
    got = metrics.rouge([pred], [ref])
    assert got["rougeLsum"] == pytest.approx(100.0)  # each sentence matches one of the other's
    assert got["rougeL"] < 100.0  # one sequence: the order differs


def test_script_detection_reads_the_references_as_a_whole() -> None:
    assert detect_script(["The model is 很好 and 非常快"]) == "zh"  # Chinese among English
    assert detect_script(["東京は日本の首都です"]) == "ja"  # kana among kanji
    assert detect_script(["Привет, как дела?"]) == "spaced"
    assert detect_script(["ສະບາຍດີ"]) == "nospace"  # Lao
    assert detect_script(["", "123 456"]) == "spaced"


def test_eval_on_chinese_files_reports_the_tokenizers_it_used(tmp_path: Path) -> None:
    preds, refs, _ = TABLE["zh"]
    (tmp_path / "p.txt").write_text("\n".join(preds) + "\n", encoding="utf-8")
    (tmp_path / "r.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
    out = tmp_path / "eval"
    proc = run_cli(
        "eval",
        "--preds",
        str(tmp_path / "p.txt"),
        "--refs",
        str(tmp_path / "r.txt"),
        "--output-dir",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "tok:zh" in proc.stdout and "tok:char" in proc.stdout
    data = json.loads((out / "metrics.json").read_text())
    assert data["details"]["text"]["bleu_tokenize"] == "zh"
    assert data["metrics"]["bleu"] == pytest.approx(metrics.bleu(preds, refs).score)
    assert data["metrics"]["f1"] > 50 and data["metrics"]["rouge1"] > 50
    # The flags override the choice, and the signature follows.
    forced = run_cli(
        "eval",
        "--preds",
        str(tmp_path / "p.txt"),
        "--refs",
        str(tmp_path / "r.txt"),
        "--bleu-tokenize",
        "char",
        "--rouge-tokenize",
        "jieba",
        "--output-dir",
        str(tmp_path / "e2"),
    )
    assert forced.returncode == 0, forced.stderr
    data = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert "tok:char" in data["signatures"]["bleu"] and "tok:jieba" in data["signatures"]["rouge"]
    bad = run_cli("eval", "--preds", str(tmp_path / "p.txt"), "--bleu-tokenize", "klingon")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


# --- properties over generated text in many scripts ----------------------------------------

ALPHABETS = {
    "latin": "abcdefghij",
    "han": "的一是不了人我在有他这中大来上国个到说们",
    "kana": "あいうえおかきくけこアイウエオカキクケコ",
    "hangul": "가나다라마바사아자차카타파하",
    "thai": "กขคงจฉชซญฎ",
}


@st.composite
def sentences(draw: st.DrawFn, alphabet: str) -> str:
    words = draw(st.lists(st.text(alphabet, min_size=1, max_size=4), min_size=1, max_size=8))
    sep = "" if alphabet in (ALPHABETS["han"], ALPHABETS["kana"], ALPHABETS["thai"]) else " "
    return sep.join(words)


def _pairs(alphabet: str) -> st.SearchStrategy[tuple[list[str], list[str]]]:
    return st.lists(
        st.tuples(sentences(alphabet), sentences(alphabet)), min_size=1, max_size=4
    ).map(lambda rows: ([p for p, _ in rows], [r for _, r in rows]))


MIXED = ALPHABETS["han"] + ALPHABETS["latin"] + "，。 "


@pytest.mark.parametrize("script", [*ALPHABETS, "mixed"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_llmkit_equals_the_libraries_with_the_tokenizers_it_reports(
    script: str, data: st.DataObject
) -> None:
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    alphabet = MIXED if script == "mixed" else ALPHABETS[script]
    preds, refs = data.draw(_pairs(alphabet))
    result = metrics.score_texts(preds, refs, ["bleu", "rouge", "f1"])
    scheme = scheme_for(refs)  # what llmkit reports in metrics.json (details.text)
    assert f"tok:{scheme.bleu}" in (result["bleu"].signature or "")
    assert f"tok:{scheme.rouge}|" in (result["rouge"].signature or "")
    direct = BLEU(tokenize=scheme.bleu).corpus_score(preds, [refs]).score
    assert result["bleu"].values["bleu"] == pytest.approx(direct, abs=1e-6)
    scorer = rouge_scorer.RougeScorer(["rouge1"], tokenizer=rouge_tokenizer(scheme.rouge))
    expected = [scorer.score(r, p)["rouge1"].fmeasure for p, r in zip(preds, refs, strict=True)]
    assert result["rouge"].values["rouge1"] == pytest.approx(100 * sum(expected) / len(expected))
    # Text that shares a unit with its reference never scores 0.
    for p, r in zip(preds, refs, strict=True):
        shared = (
            set(char_units(p)) & set(char_units(r))
            if scheme.units == "char"
            else set(metrics.normalize_answer(p).split()) & set(metrics.normalize_answer(r).split())
        )
        if shared:
            assert metrics.token_f1([p], [r], scheme) > 0
            assert metrics.rouge([p], [r], scheme)["rouge1"] > 0
            assert metrics.chrf([p], [r]).score > 0


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_char_units_keep_every_letter_of_any_text(text: str) -> None:
    """No letter or digit is lost or invented, in any script (marks join their letter)."""
    kept = "".join(char_units(text))
    letters = "".join(ch for ch in text.lower() if unicodedata.category(ch)[0] in "LNM")
    assert kept == letters
