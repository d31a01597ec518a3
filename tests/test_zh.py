"""Chinese end to end (issue 22, parts 2-4): the embedded Chinese data, tokenizers that cover
and decode Chinese, whole-word masking by jieba words, and the Chinese README."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmkit import assets
from llmkit.data import examples, words
from llmkit.data.collate import IGNORE_INDEX, MaskedLMCollator
from llmkit.data.sources import expand_sources
from llmkit.data.tokenizer import CJK_NO_SPACE, build_trained_tokenizer

HAN = re.compile("[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def daily_lines() -> list[str]:
    return assets.peoples_daily_files()[0].read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def zh_wordpiece(daily_lines: list[str]) -> Any:
    """A BERT WordPiece tokenizer trained on 3,000 lines of People's Daily (~2 s)."""
    return build_trained_tokenizer(
        daily_lines[:3000], kind="wordpiece", vocab_size=4000, min_frequency=2, masked=True
    )


# --- data ------------------------------------------------------------------------------------


def test_peoples_daily_text_is_the_gold_words_joined(daily_lines: list[str]) -> None:
    gold = assets.peoples_daily_words_file().read_text(encoding="utf-8").splitlines()
    assert len(daily_lines) == len(gold) == 19_484
    assert all(line == g.replace(" ", "") for line, g in zip(daily_lines, gold, strict=True))
    text = "\n".join(daily_lines)
    assert len(text) - text.count("\n") == 1_841_657
    # No `/tag` left and no space between words.
    assert not re.search(r"/[a-zA-Z]{1,3}\b|\s", text.replace("\n", ""))
    assert daily_lines[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    assert gold[0].split()[:3] == ["迈向", "充满", "希望"]
    assert expand_sources(["embedded:peoples-daily"]) == [str(assets.peoples_daily_files()[0])]


def test_reviews_are_labelled_once_and_split_apart() -> None:
    train, held_out = examples.EMBEDDED_ROWS["embedded:reviews-zh"]()
    assert (len(train), len(held_out)) == (15_617, 1_746)
    rows = train + held_out
    assert {r["label"] for r in rows} == {"positive", "negative"}
    assert sum(r["label"] == "positive" for r in rows) == 8_332
    assert len({r["text"] for r in rows}) == len(rows)  # each text once, one label
    assert not {r["text"] for r in train} & {r["text"] for r in held_out}
    assert sum(bool(HAN.search(r["text"])) for r in rows) > 0.99 * len(rows)
    # A capped evaluation (data.max_eval_examples: an even stride) sees both labels in their
    # proportion (47% positive), not one file's worth of negatives.
    capped = held_out[:: len(held_out) // 600][:600]
    assert 0.40 < sum(r["label"] == "positive" for r in capped) / 600 < 0.54


def test_chinese_chat_and_translation_pairs() -> None:
    train, held_out = examples.EMBEDDED_ROWS["embedded:chatterbot-zh"]()
    assert (len(train), len(held_out)) == (461, 45)
    assert not {r["question"] for r in train} & {r["question"] for r in held_out}
    assert all(HAN.search(r["question"] + r["answer"]) for r in train + held_out)
    pairs = assets.translation_pairs("chinese")
    assert len(pairs) == 139
    # Only the files whose conversations line up with the English ones.
    assert {p["topic"] for p in pairs} == {"greetings", "history", "money", "movies"}
    assert any(p["source"] == "stock market" and p["target"] == "股市" for p in pairs)
    assert not any(HAN.search(p["source"]) for p in pairs)
    # The corpus left one line of movies.yml untranslated (French): kept, as it is there.
    assert sum(not HAN.search(p["target"]) for p in pairs) == 1


# --- tokenizers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zh_file(tmp_path_factory: pytest.TempPathFactory, daily_lines: list[str]) -> Path:
    path = tmp_path_factory.mktemp("zh") / "daily.txt"
    path.write_text("\n".join(daily_lines[:1500]) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("kind", "how"),
    [("wordpiece", "the vocabulary holds all of them"), ("bpe", "UTF-8 bytes")],
)
def test_prep_tokenizer_covers_every_chinese_character(
    tmp_path: Path, zh_file: Path, kind: str, how: str
) -> None:
    out = run_cli(
        "prep", "tokenizer", str(zh_file), "-o", str(tmp_path / "tok"), "--kind", kind,
        "--vocab-size", "600", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = zh_file.read_text(encoding="utf-8")
    alphabet = {c for c in text if not c.isspace()}
    assert f"smaller than the text's alphabet ({len(alphabet):,} distinct characters)" in out.stdout
    assert how in out.stdout
    assert f"coverage: all {len(alphabet):,} characters seen encode without [UNK]" in out.stdout
    ratio = float(re.search(r"\(([\d.]+) chars/token\)", out.stdout)[1])  # type: ignore[index]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    lines = text.splitlines()
    ids = tok(lines, add_special_tokens=False)["input_ids"]
    # The report counts the newlines between lines as characters too.
    assert ratio == pytest.approx(sum(map(len, lines)) / sum(map(len, ids)), rel=0.02)
    assert tok.unk_token_id not in {i for row in ids for i in row}
    assert tok.decode(tok(lines[5], add_special_tokens=False)["input_ids"]) == lines[5]


def test_unigram_smaller_than_the_alphabet_is_one_error_line(tmp_path: Path, zh_file: Path) -> None:
    out = run_cli(
        "prep", "tokenizer", str(zh_file), "-o", str(tmp_path / "tok"), "--kind", "unigram",
        "--vocab-size", "600", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: vocab_size 600 ")
    assert "raise vocab_size above" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "tok").exists() or not any((tmp_path / "tok").iterdir())


# Text in many scripts: the WordPiece tokenizer below is trained on these characters.
SCRIPTS = {
    "han": "今天天气很好我们去公园散步吧中国人民日报新年讲话经济发展",
    "cjk_punct": "，。！？、：；「」《》（）",
    "kana": "こんにちはせかいカタカナがぎぐげご",
    "hangul": "안녕하세요세계한국어",
    "thai": "สวัสดีชาวโลกภาษาไทย",
    "latin": "abcdefghijklmnopqrstuvwxyzéüñ",
    "cyrillic": "привет мир",
    "arabic": "مرحبابالعالم",
}


@pytest.fixture(scope="module")
def many_scripts_wordpiece() -> Any:
    alphabet = "".join(SCRIPTS.values()).replace(" ", "")
    # Every character alone and inside a word, so each has its word-start and ##-form.
    corpus = [alphabet, " ".join(alphabet), *(s * 3 for s in SCRIPTS.values())] * 3
    return build_trained_tokenizer(
        corpus, kind="wordpiece", vocab_size=400, min_frequency=1, masked=True
    )


def script_text(names: list[str]) -> st.SearchStrategy[str]:
    chars = "".join(SCRIPTS[n] for n in names).replace(" ", "")
    word = st.text(alphabet=chars, min_size=1, max_size=6)
    return st.lists(st.tuples(word, st.sampled_from(["", " "])), min_size=1, max_size=8).map(
        lambda parts: "".join(w + sep for w, sep in parts).strip()
    )


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=script_text(["han", "cjk_punct", "kana"]))
def test_wordpiece_decodes_chinese_and_japanese_without_spaces(
    many_scripts_wordpiece: Any, text: str
) -> None:
    tok = many_scripts_wordpiece
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    decoded = tok.decode(ids)
    if " " not in text:
        assert decoded == text
    assert decoded.replace(" ", "") == text.replace(" ", "")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=script_text(list(SCRIPTS)))
def test_wordpiece_round_trips_every_script_but_spaces(
    many_scripts_wordpiece: Any, text: str
) -> None:
    """No character is lost or changed (no accent stripping: が stays が, Hangul stays whole);
    only spaces next to CJK characters may differ."""
    tok = many_scripts_wordpiece
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids).replace(" ", "") == text.replace(" ", "")
    if not re.search(f"[{CJK_NO_SPACE}]", text):  # without CJK, spaces come back exactly
        assert tok.decode(ids) == text


# --- whole-word masking ----------------------------------------------------------------------


def gold_starts(gold_line: str) -> set[int]:
    starts, at = set(), 0
    for word in gold_line.split():
        starts.add(at)
        at += len(word)
    return starts


def test_jieba_finds_the_gold_word_boundaries_of_peoples_daily() -> None:
    gold = assets.peoples_daily_words_file().read_text(encoding="utf-8").splitlines()[:2000]
    hit = found = total = 0
    for line in gold:
        g = gold_starts(line)
        j = {a for a, _ in words.chinese_words(line.replace(" ", ""))}
        hit, found, total = hit + len(g & j), found + len(j), total + len(g)
    precision, recall = hit / found, hit / total
    assert precision > 0.93 and recall > 0.88, (precision, recall)


def token_words(flags: list[int]) -> list[list[int]]:
    """Token positions grouped into words by start flags."""
    groups: list[list[int]] = []
    for i, f in enumerate(flags):
        if f or not groups:
            groups.append([])
        groups[-1].append(i)
    return groups


def test_chinese_word_starts_are_jieba_words(zh_wordpiece: Any, daily_lines: list[str]) -> None:
    n_tokens = n_words = 0
    for line in daily_lines[3000:3200]:
        e = zh_wordpiece.backend_tokenizer.encode(line, add_special_tokens=False)
        flags = words.word_start_flags(line, e.offsets, e.word_ids, segment_chinese=True)
        jieba_words = words.chinese_words(line)
        starts = {a for a, _ in jieba_words}
        ends = {b for _, b in jieba_words}
        assert flags == [int(i == 0 or a in starts) for i, (a, _) in enumerate(e.offsets)]
        # Each group of tokens covers whole jieba words (a jieba word never spans two groups).
        for group in token_words(flags):
            a, b = e.offsets[group[0]][0], e.offsets[group[-1]][1]
            assert a in starts and b in ends
        plain = words.word_start_flags(line, e.offsets, e.word_ids, segment_chinese=False)
        assert sum(plain) >= sum(flags)  # BERT's own words: one per character
        n_tokens, n_words = n_tokens + len(flags), n_words + sum(flags)
    # People's Daily words are ~1.6 characters: far fewer word starts than tokens.
    assert 1.4 < n_tokens / n_words < 2.0


@settings(max_examples=150, deadline=None)
@given(text=script_text(list(SCRIPTS)))
def test_word_starts_in_every_script(many_scripts_wordpiece: Any, text: str) -> None:
    """Chinese lines get jieba's words; any other line (kana, Hangul, Thai, Latin, ...) keeps
    the pre-tokenizer's words, as before."""
    e = many_scripts_wordpiece.backend_tokenizer.encode(text, add_special_tokens=False)
    flags = words.word_start_flags(text, e.offsets, e.word_ids, segment_chinese=True)
    plain = words.word_start_flags(text, e.offsets, e.word_ids, segment_chinese=False)
    assert len(flags) == len(e.ids) and flags[:1] == [1]
    if words.is_chinese(text):
        starts = {a for a, _ in words.chinese_words(text)}
        assert flags == [int(i == 0 or a in starts) for i, (a, _) in enumerate(e.offsets)]
    else:
        assert flags == plain


def test_whole_word_masking_masks_whole_jieba_words(
    zh_wordpiece: Any, daily_lines: list[str]
) -> None:
    items = []
    for line in daily_lines[3200:3264]:
        e = zh_wordpiece.backend_tokenizer.encode(line, add_special_tokens=False)
        ids = [zh_wordpiece.cls_token_id, *e.ids[:120], zh_wordpiece.sep_token_id]
        flags = [
            1,
            *words.word_start_flags(line, e.offsets, e.word_ids, segment_chinese=True)[:120],
            1,
        ]
        items.append({"input_ids": np.array(ids), "word_starts": np.array(flags)})
    collator = MaskedLMCollator(
        tokenizer=zh_wordpiece, mlm_probability=0.15, whole_word_mask=True, seed=0
    )
    batch = collator(items)
    masked = (batch["labels"] != IGNORE_INDEX).numpy()
    multi = 0
    for row, item in enumerate(items):
        for group in token_words(list(item["word_starts"])):
            hits = {bool(masked[row, i]) for i in group}
            assert len(hits) == 1, (row, group)  # all of a word or none of it
            multi += len(group) > 1 and hits == {True}
    share = masked.sum() / sum(len(i["input_ids"]) - 2 for i in items)
    assert 0.08 < share < 0.25 and multi > 20


def test_prep_with_whole_word_mask_stores_jieba_word_starts(tmp_path: Path, zh_file: Path) -> None:
    def prep(wwm: bool) -> tuple[np.ndarray, int, str]:
        out = run_cli(
            "prep", str(REPO / "recipes/pretrain/bert-mlm-shakespeare.yaml"),
            "--set", f"data.sources=[{zh_file}]", "--set", "tokenizer.vocab_size=3000",
            "--set", f"masking.whole_word_mask={str(wwm).lower()}", cwd=tmp_path,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        cache = Path(re.search(r"cached in (\S+)", out.stdout)[1])  # type: ignore[index]
        lengths = np.load(cache / "train_lengths.npy")
        starts = np.load(cache / "train_word_starts.npy")
        body = np.arange(starts.shape[1])[None, :] < (lengths[:, None] - 1)
        body[:, 0] = False
        return starts[body], json.loads((cache / "meta.json").read_text())["n_tokens"], out.stdout

    plain, n_plain, first = prep(False)
    wwm, n_wwm, _ = prep(True)
    alphabet = {c for c in zh_file.read_text(encoding="utf-8") if not c.isspace()}
    assert f"{len(alphabet):,} distinct characters in the text" in first
    assert len(alphabet) == 2_928 and "is smaller than the text's alphabet" not in first
    assert n_plain == n_wwm and len(plain) == len(wwm)
    assert plain.mean() > 0.99  # BERT's pre-tokenizer: every Chinese character is a word
    assert 0.5 < wwm.mean() < 0.75  # jieba: ~1.6 characters a word


# --- README.zh-CN.md -------------------------------------------------------------------------


def command_table(path: Path) -> set[str]:
    """The `llmkit ...` commands in the first column of a markdown table."""
    found = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*`(llmkit [a-z]+(?: [a-z]+)?)", line)
        if m:
            found.add(m[1])
    return found


def test_chinese_readme_lists_every_command_of_the_readme() -> None:
    english = command_table(REPO / "README.md")
    chinese = command_table(REPO / "README.zh-CN.md")
    assert len(english) >= 10
    assert english <= chinese, sorted(english - chinese)
    assert "README.zh-CN.md" in (REPO / "README.md").read_text(encoding="utf-8")[:3000]


def test_eval_scores_a_model_on_the_chinese_held_out_pairs(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """`--data embedded:chatterbot-zh`: the held-out split no Chinese fine-tune trained on,
    scored with the Chinese tokenizers (here a random model: what matters is the plumbing)."""
    out = tmp_path / "eval"
    proc = run_cli(
        "eval", "--model", str(tiny_llama_dir), "--data", "embedded:chatterbot-zh",
        "--limit", "4", "--max-new-tokens", "4", "--metrics", "bleu,rouge",
        "--output-dir", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    held_out = examples.EMBEDDED_ROWS["embedded:chatterbot-zh"]()[1]
    assert data["data"]["data"].startswith("embedded:chatterbot-zh held-out split")
    assert f"4 of {len(held_out)} rows" in data["data"]["data"]
    assert data["details"]["text"]["bleu_tokenize"] == "zh"
    rows = [json.loads(line) for line in (out / "predictions.jsonl").open(encoding="utf-8")]
    assert [r["reference"] for r in rows] == [r["answer"] for r in held_out[:4]]
