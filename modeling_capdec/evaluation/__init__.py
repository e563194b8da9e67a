"""The evaluation layer (`pip install capdec[eval]`): eval sets, batch captioning and the COCO caption metrics.

- `eval_sets`: `load_eval_set` (Karpathy / COCO JSON or any `datasets` source) and `CaptionEvalSet`;
- `captioning`: `caption_images`, and predictions in the COCO results format;
- `metrics`: `compute_caption_metrics` (BLEU, METEOR, ROUGE-L, CIDEr, SPICE through `pycocoevalcap`) and
  `compute_caption_metrics_many` (several runs on the same images, Java started once);
- `caption_metric/`: the same metrics as an `evaluate` module: `evaluate.load(CAPTION_METRIC_PATH)`.

Importing this package imports none of them.
"""

from pathlib import Path

CAPTION_METRIC_PATH = str(Path(__file__).resolve().parent / "caption_metric")

__all__ = ["CAPTION_METRIC_PATH"]
