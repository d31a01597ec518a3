"""A local `evaluate` module wrapping sacreBLEU's corpus BLEU, as the hub's `sacrebleu`
module does (that one is fetched from the hub, so it cannot load offline). One reference per
prediction; `tokenize` as sacreBLEU's (default 13a)."""

import datasets
import evaluate
import sacrebleu


class SacrebleuModule(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="sacreBLEU corpus BLEU, one reference per prediction",
            citation="Post, 2018: A Call for Clarity in Reporting BLEU Scores",
            inputs_description="predictions: list of str; references: list of str",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, tokenize="13a"):
        bleu = sacrebleu.corpus_bleu(predictions, [references], tokenize=tokenize)
        return {"score": bleu.score, "bp": bleu.bp, "sys_len": bleu.sys_len}
