"""COCO caption toolkit metrics as an `evaluate` metric: BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE).

Load it offline from the installed package (`CAPTION_METRIC_PATH` is this folder):

    >>> import evaluate
    >>> from modeling_capdec.evaluation import CAPTION_METRIC_PATH
    >>> metric = evaluate.load(CAPTION_METRIC_PATH)  # doctest: +SKIP
    >>> metric.compute(predictions=["a dog on the beach"], references=[["a dog running on the beach"]])  # doctest: +SKIP

The numbers come from `modeling_capdec.evaluation.metrics.compute_caption_metrics`; see it for the rules on bad
input. `evaluate` copies this script into its module cache before importing it, so the import below must be
absolute: it needs the `capdec` package installed with its `[eval]` extra.
"""

import datasets
import evaluate

from modeling_capdec.evaluation.metrics import compute_caption_metrics

_DESCRIPTION = """\
Caption metrics computed by the COCO caption toolkit (pycocoevalcap) on PTB-tokenised captions: BLEU-1..4,
METEOR, ROUGE-L, CIDEr-D (reported as "CIDEr", document frequencies from the evaluated references), and SPICE
when its Stanford models are installed. Scores are on the toolkit's scale (CIDEr up to 10). Needs Java.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated captions, one per image.
    references: list of lists of reference captions, one list per image (any number per image).
    metrics: optional subset of "BLEU", "METEOR", "ROUGE-L", "CIDEr", "SPICE".
Returns:
    dict with "BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr" (and "SPICE").
"""

_CITATION = """\
@article{chen2015microsoft,
  title={Microsoft COCO Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh and
          Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  journal={arXiv preprint arXiv:1504.00325},
  year={2015}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CaptionMetric(evaluate.Metric):
    """The COCO caption toolkit's metrics for `evaluate.load`."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://github.com/tylin/coco-caption"],
        )

    def _compute(self, predictions, references, metrics=None) -> dict[str, float]:
        return compute_caption_metrics(
            list(predictions), [list(refs) for refs in references], metrics=metrics
        )
