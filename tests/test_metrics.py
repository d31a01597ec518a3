"""llmkit.evaluation gives the numbers the reference libraries give on the same data.

BLEU/chrF are checked against sacreBLEU, ROUGE against rouge-score, perplexity against the
model's own loss window by window; EM/F1 against answers worked out by hand.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from llmkit import assets
from llmkit.errors import UsageError
from llmkit.evaluation import metrics, perplexity
from llmkit.models.load import LoadedModel, load_generator


def shakespeare_sentences(n: int) -> list[str]:
    """Real lines of verse as one-sentence strings: inner . ! ? removed, one '.' at the end."""
    text = assets.shakespeare_files()[0].read_text(encoding="utf-8")
    lines = [" ".join(line.split()) for line in text.splitlines()]
    lines = [line.translate(str.maketrans("", "", ".!?")) for line in lines if len(line) > 30]
    return [line + "." for line in lines[200 : 200 + n]]  # past the list of characters


def perturb(sentence: str, rng: random.Random) -> str:
    """Drop one word and swap two neighbours: a plausible, imperfect system output (still one
    sentence, ending in its '.')."""
    words = sentence.removesuffix(".").split()
    del words[rng.randrange(len(words))]
    i = rng.randrange(len(words) - 1)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words) + "."


@pytest.fixture(scope="module")
def pairs() -> tuple[list[list[str]], list[list[str]]]:
    """36 (prediction, reference) pairs of 1-3 sentences each, as sentence lists; every 6th
    prediction is an unrelated line, so scores are far from 0 and from 100."""
    rng = random.Random(0)
    sentences = shakespeare_sentences(200)
    refs, preds = [], []
    for i in range(36):
        ref = sentences[3 * i : 3 * i + 1 + i % 3]
        pred = [perturb(s, rng) for s in ref] if i % 6 else [sentences[150 + i]]
        refs.append(ref)
        preds.append(pred)
    return preds, refs


def joined(texts: list[list[str]], sep: str = " ") -> list[str]:
    return [sep.join(t) for t in texts]


def test_bleu_and_chrf_equal_sacrebleu_called_directly(
    pairs: tuple[list[list[str]], list[list[str]]],
) -> None:
    import sacrebleu

    preds, refs = joined(pairs[0]), joined(pairs[1])
    bleu = metrics.bleu(preds, refs)
    chrf = metrics.chrf(preds, refs)

    assert bleu.score == sacrebleu.corpus_bleu(preds, [refs]).score
    assert chrf.score == sacrebleu.corpus_chrf(preds, [refs]).score
    assert 20 < bleu.score < 90 and 20 < chrf.score < 95
    assert bleu.signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert chrf.signature.startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")


def test_rouge_is_the_mean_of_rouge_score_per_pair(
    pairs: tuple[list[list[str]], list[list[str]]],
) -> None:
    from rouge_score import rouge_scorer

    # rouge-score wants one sentence per line for Lsum; llmkit gets plain text and splits it.
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    per_pair = [
        scorer.score(ref, pred)
        for pred, ref in zip(joined(pairs[0], "\n"), joined(pairs[1], "\n"), strict=True)
    ]
    expected = {
        t: 100 * sum(s[t].fmeasure for s in per_pair) / len(per_pair)
        for t in ("rouge1", "rouge2", "rougeL", "rougeLsum")
    }

    got = metrics.rouge(joined(pairs[0]), joined(pairs[1]))

    assert got == pytest.approx(expected, abs=1e-9)
    assert got["rougeLsum"] != pytest.approx(got["rougeL"])  # the sentence split mattered
    assert 20 < got["rouge2"] < got["rouge1"] < 100


def test_rouge_gives_identical_numbers_on_one_or_two_processes(
    pairs: tuple[list[list[str]], list[list[str]]],
) -> None:
    preds, refs = joined(pairs[0]), joined(pairs[1])
    assert metrics.rouge(preds, refs, workers=2) == metrics.rouge(preds, refs, workers=1)


def test_exact_match_and_f1_on_hand_checked_squad_examples() -> None:
    preds = ["The Eiffel Tower!", "in Paris, France", "an apple a day", "", "blue"]
    refs = ["eiffel tower", "Paris", "the apple", "", "red"]
    # normalized: "eiffel tower" = "eiffel tower"      -> EM 1, F1 1
    #             "in paris france" vs "paris"          -> EM 0, P 1/3, R 1 -> F1 1/2
    #             "apple day" vs "apple"                -> EM 0, P 1/2, R 1 -> F1 2/3
    #             "" vs ""                              -> EM 1, F1 1 (SQuAD v2.0)
    #             "blue" vs "red"                       -> EM 0, F1 0
    assert metrics.exact_match(preds, refs) == pytest.approx(40.0)
    assert metrics.token_f1(preds, refs) == pytest.approx(100 * (1 + 1 / 2 + 2 / 3 + 1) / 5)
    assert metrics.normalize_answer("  The  Cat's   hat, an  ode. ") == "cats hat ode"


def test_accuracy_counts_exact_labels_and_length_counts_words() -> None:
    assert metrics.accuracy(["pos", " neg", "Pos"], ["pos", "neg", "pos"]) == pytest.approx(200 / 3)
    assert metrics.avg_length(["one two three", "four", ""]) == pytest.approx(4 / 3)


def test_distinct_n_is_unique_over_all_ngrams() -> None:
    outputs = ["a b a b", "a b c"]
    # unigrams a b a b a b c: 3 unique of 7; bigrams ab ba ab ab bc: 3 unique of 5
    assert metrics.distinct_n(outputs, 1) == pytest.approx(3 / 7)
    assert metrics.distinct_n(outputs, 2) == pytest.approx(3 / 5)
    assert metrics.distinct_n(["a", "b"], 2) == 0.0


def test_self_bleu_is_100_for_copies_and_lower_for_varied_outputs() -> None:
    lines = shakespeare_sentences(12)
    assert metrics.self_bleu([lines[0]] * 6).score == pytest.approx(100.0)
    assert metrics.self_bleu(lines).score < 20


def test_unknown_metric_name_lists_the_valid_ones() -> None:
    assert metrics.parse_metric_names("BLEU, rouge") == ["bleu", "rouge"]
    with pytest.raises(UsageError, match=r"unknown metric blue \(valid: bleu, chrf, rouge, em"):
        metrics.parse_metric_names("blue,rouge")


def test_mismatched_lengths_are_a_usage_error() -> None:
    with pytest.raises(UsageError, match="2 predictions but 3 references"):
        metrics.bleu(["a", "b"], ["a", "b", "c"])


# --- perplexity ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_gpt2_dir: Path) -> LoadedModel:
    return load_generator(str(tiny_gpt2_dir))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    plays = assets.shakespeare_files()
    return [plays[0].read_text(encoding="utf-8")[:600], plays[1].read_text(encoding="utf-8")[:300]]


def direct_sliding_nll(loaded: LoadedModel, text: str, max_length: int, stride: int) -> float:
    """The Hugging Face guide's loop, one window at a time through model(labels=...), with
    the scored-token count read off the labels (targets after the model's internal shift)."""
    import torch

    ids = torch.tensor([loaded.tokenizer(text)["input_ids"]])
    n = ids.size(1)
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        window = ids[:, begin:end]
        labels = window.clone()
        labels[:, : -(end - prev_end)] = -100
        scored = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            total += float(loaded.model(window, labels=labels).loss) * scored
        count += scored
        prev_end = end
        if end == n:
            break
    assert count == n - 1
    return total / count


def test_sliding_perplexity_equals_the_models_own_loss(tiny: LoadedModel, texts: list[str]) -> None:
    n_tokens = len(tiny.tokenizer("\n\n".join(texts))["input_ids"])
    assert n_tokens % 16 != 0  # the last window is a short one

    result = perplexity.perplexity_sliding(
        tiny.model, tiny.tokenizer, texts, max_length=48, stride=16
    )

    expected = direct_sliding_nll(tiny, "\n\n".join(texts), 48, 16)
    assert result.nll == pytest.approx(expected, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(expected), rel=1e-5)
    assert result.tokens == n_tokens - 1


def test_per_document_perplexity_equals_the_models_own_loss(
    tiny: LoadedModel, texts: list[str]
) -> None:
    import torch

    total, count = 0.0, 0
    for text in texts:
        ids = tiny.tokenizer(text)["input_ids"]
        for start in range(0, len(ids), 48):
            chunk = torch.tensor([ids[start : start + 48]])
            if chunk.size(1) < 2:
                continue
            with torch.no_grad():
                total += float(tiny.model(chunk, labels=chunk).loss) * (chunk.size(1) - 1)
            count += chunk.size(1) - 1

    result = perplexity.perplexity_per_document(tiny.model, tiny.tokenizer, texts, max_length=48)

    assert result.tokens == count
    assert result.ppl == pytest.approx(math.exp(total / count), rel=1e-5)


def test_batch_size_does_not_change_perplexity(tiny: LoadedModel, texts: list[str]) -> None:
    one = perplexity.perplexity_sliding(
        tiny.model, tiny.tokenizer, texts, max_length=48, stride=16, batch_tokens=48
    )
    many = perplexity.perplexity_sliding(
        tiny.model, tiny.tokenizer, texts, max_length=48, stride=16, batch_tokens=4096
    )
    assert many.ppl == pytest.approx(one.ppl, rel=1e-5)
    assert many.tokens == one.tokens


def test_windows_score_every_token_after_the_first_exactly_once() -> None:
    for n, length, stride in [(100, 32, 8), (100, 32, 31), (33, 32, 16), (5, 32, 16)]:
        windows = perplexity.sliding_windows(n, length, stride)
        scored = [t for begin, end, k in windows for t in range(max(end - k, begin + 1), end)]
        assert scored == list(range(1, n)), (n, length, stride)
    # Without overlap each chunk's first token has no context: 0, 32, 64 and 96 go unscored.
    chunks = perplexity.sliding_windows(100, 32, 32)
    assert [(b, e) for b, e, _ in chunks] == [(0, 32), (32, 64), (64, 96), (96, 100)]


def test_stride_longer_than_the_window_is_refused(tiny: LoadedModel) -> None:
    with pytest.raises(UsageError, match=r"stride must be between 1 and max_length \(32\)"):
        perplexity.perplexity_sliding(
            tiny.model, tiny.tokenizer, ["a b c"], max_length=32, stride=64
        )
