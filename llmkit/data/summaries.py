"""`embedded:aclsum`: document/summary pairs from the ACLSum package on PyPI (aclsum==0.1.2, MIT).

ACLSum (Takeshita et al., NAACL 2024) annotates 250 ACL Anthology papers with three one-sentence
summaries each: the paper's challenge, its approach and its outcome. The package ships them as
aclsum/dataset/{train,val,test}.jsonl (100 + 50 + 100 papers, no paper in two files), each with
the paper's abstract, introduction and conclusion as sentence lists. Only the files are read:
the package's own loader needs `sienna`, which we do not install.

A pair is document = the abstract, summary = the three summaries joined in the order
challenge, approach, outcome. Why those:
  - the abstract (~170 SmolLM2 tokens on average; 1 of 250 papers is longer than 500) fits a
    small model's prompt with its summary in data.max_length 384; the introduction (~700
    tokens) would not;
  - an abstract covers all three aspects, so a summary of it is all three (~82 tokens); the
    approach sentence alone (~27 tokens) would score a model down for stating the problem.

The corpus comes sentence-split and tokenized ("( NER ) systems , ..."): spaces before
punctuation and inside brackets are removed again, so the model reads and writes normal text.
"""

from __future__ import annotations

import json
import re

from llmkit import assets

ASPECTS = ("challenge", "approach", "outcome")
SPLITS = ("train", "val", "test")

# Tokenized text back to plain text: "word ," -> "word,", "( x )" -> "(x)", "paper 's" ->
# "paper's", "n't" joined; hyphens and numbers ("F 1") are left as the corpus has them.
_DETOKENIZE = (
    (re.compile(r" ([.,;:!?%)\]])"), r"\1"),
    (re.compile(r"([(\[]) "), r"\1"),
    (re.compile(r" ('s|'re|'ve|'ll|'d|'m|n't)\b"), r"\1"),
)


def detokenize(text: str) -> str:
    text = " ".join(text.split())
    for pattern, repl in _DETOKENIZE:
        text = pattern.sub(repl, text)
    return text


def aclsum_pairs(split: str) -> list[dict[str, str]]:
    """One split's pairs: [{"id", "title", "source" (the abstract), "target" (the three
    summaries), "challenge", "approach", "outcome"}], in the file's order."""
    path = assets.package_dir("aclsum") / "dataset" / f"{split}.jsonl"
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        paper = json.loads(line)
        summary = {k: detokenize(paper["summary"][k]) for k in ASPECTS}
        pairs.append(
            {
                "id": paper["id"],
                "title": detokenize(paper.get("title") or ""),
                "source": detokenize(" ".join(paper["sentences"]["abstract"])),
                "target": " ".join(summary[k] for k in ASPECTS),
                **summary,
            }
        )
    return pairs


def aclsum_split() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, held_out): the authors' train + validation papers (150) to learn from, their
    test papers (100) held out. Their split, not a hash: published ACLSum scores use it."""
    return aclsum_pairs("train") + aclsum_pairs("val"), aclsum_pairs("test")
