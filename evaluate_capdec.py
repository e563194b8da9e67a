"""Caption an eval set with a CapDec model and score it with the COCO caption toolkit.

Writes `predictions.json` (COCO results format) and `metrics.json` (BLEU-1..4, METEOR, ROUGE-L, CIDEr, and
SPICE when its models are installed; toolkit scale, CIDEr up to 10) to `--output_dir`.

    # Karpathy test split of COCO
    python evaluate_capdec.py --model outputs/capdec-coco --annotations data/dataset_coco.json \\
        --image_root data/coco --split test --num_beams 5 --output_dir outputs/eval-coco
    # COCO captions annotation file
    python evaluate_capdec.py --model outputs/capdec-coco --annotations captions_val2014.json \\
        --image_root data/coco/val2014
    # a `datasets` dataset (save_to_disk folder or Hub name), one row per image
    python evaluate_capdec.py --model outputs/capdec-coco --dataset data/coco_test \\
        --image_column image_path --captions_column captions
    # score an existing results file: no model, no images
    python evaluate_capdec.py --predictions outputs/eval-coco/predictions.json \\
        --annotations data/dataset_coco.json --split test
    # all arguments from a file
    python evaluate_capdec.py eval.yaml
"""

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from modeling_capdec.evaluation_capdec import (
    caption_images,
    load_annotations,
    load_caption_dataset,
    read_coco_results,
    write_coco_results,
)
from modeling_capdec.metrics_capdec import compute_caption_metrics

logger = logging.getLogger("evaluate_capdec")


@dataclass
class EvaluateArguments:
    """Arguments of `python evaluate_capdec.py`."""

    model: str | None = field(
        default=None, metadata={"help": "Saved CapDec model folder or Hub name to caption the images with."}
    )
    predictions: str | None = field(
        default=None,
        metadata={
            "help": "Score this COCO results file ([{'image_id', 'caption'}]) instead of running a model."
        },
    )
    annotations: str | None = field(
        default=None,
        metadata={
            "help": "Karpathy split JSON (dataset_coco.json) or COCO captions JSON (captions_val2014.json)."
        },
    )
    dataset: str | None = field(
        default=None, metadata={"help": "`datasets` eval set: a save_to_disk folder or a load_dataset name."}
    )
    split: str = field(
        default="test",
        metadata={"help": "Karpathy split, or the dataset split (ignored for COCO captions JSON)."},
    )
    image_root: str | None = field(
        default=None,
        metadata={"help": "Folder the --annotations image paths are relative to (needed with --model)."},
    )
    image_column: str = field(
        default="image", metadata={"help": "--dataset column with images or image paths."}
    )
    captions_column: str = field(
        default="captions",
        metadata={"help": "--dataset column with the list of reference captions per image."},
    )
    image_id_column: str | None = field(
        default=None,
        metadata={"help": "--dataset column of image ids (default: 'image_id' if present, else row number)."},
    )
    output_dir: str = field(
        default="outputs/eval", metadata={"help": "Where predictions.json and metrics.json go."}
    )
    limit: int | None = field(
        default=None,
        metadata={
            "help": "Evaluate only the first N images (quick looks); --predictions for others are ignored."
        },
    )
    batch_size: int = field(default=32, metadata={"help": "Images per generate call."})
    num_beams: int = field(default=1, metadata={"help": "Beam width (1: greedy)."})
    max_new_tokens: int = field(default=30, metadata={"help": "Longest caption, in decoder tokens."})
    device: str | None = field(
        default=None, metadata={"help": "torch device (default: cuda if available, else cpu)."}
    )
    metrics: list[str] | None = field(
        default=None,
        metadata={
            "help": "Subset of BLEU METEOR ROUGE-L CIDEr SPICE (default: all, SPICE if its models are installed)."
        },
    )

    def __post_init__(self) -> None:
        if (self.model is None) == (self.predictions is None):
            raise ValueError(
                "Give either --model (to caption the images) or --predictions (to score a results file)."
            )
        if (self.annotations is None) == (self.dataset is None):
            raise ValueError("Give the eval set as either --annotations FILE.json or --dataset NAME_OR_DIR.")
        if self.model is not None and self.annotations is not None and self.image_root is None:
            raise ValueError("--image_root is needed to caption the images listed in --annotations.")


def main(args: EvaluateArguments) -> dict[str, float]:
    """Load the eval set, caption it (or read --predictions), score, and write the results; returns the metrics.

    Example:
        >>> args = EvaluateArguments(predictions="outputs/eval/predictions.json",
        ...                          annotations="data/dataset_coco.json", output_dir="outputs/eval")
        >>> main(args)["CIDEr"]  # doctest: +SKIP
        0.91
    """
    # Scoring a results file needs only the references: no image is opened.
    need_images = args.model is not None
    if args.annotations is not None:
        eval_set = load_annotations(
            args.annotations,
            args.split,
            image_root=args.image_root if need_images else None,
            limit=args.limit,
        )
    else:
        eval_set = load_caption_dataset(
            args.dataset,
            args.split,
            image_column=args.image_column if need_images else None,
            captions_column=args.captions_column,
            image_id_column=args.image_id_column,
            limit=args.limit,
        )
    output_dir = Path(args.output_dir)

    if args.predictions is not None:
        predictions = read_coco_results(args.predictions)
        if args.limit is not None:  # the file may cover the whole set
            predictions = {i: predictions[i] for i in eval_set.image_ids if i in predictions}
    else:
        import torch

        from modeling_capdec import CapDecForConditionalGeneration, CapDecProcessor

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = CapDecForConditionalGeneration.from_pretrained(args.model).to(device).eval()
        processor = CapDecProcessor.from_pretrained(args.model)
        captions = caption_images(
            model,
            processor,
            eval_set.images,
            batch_size=args.batch_size,
            num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens,
        )
        predictions = dict(zip(eval_set.image_ids, captions, strict=True))
        write_coco_results(predictions, output_dir / "predictions.json")
        logger.info("Wrote %d captions to %s", len(predictions), output_dir / "predictions.json")

    metrics = compute_caption_metrics(predictions, eval_set.references_by_id(), metrics=args.metrics)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    logger.info(
        "%d images: %s", len(eval_set), ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
    )
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = HfArgumentParser(EvaluateArguments)
    if len(sys.argv) == 2 and sys.argv[1].endswith((".json", ".yaml", ".yml")):
        (arguments,) = (
            parser.parse_yaml_file(sys.argv[1])
            if sys.argv[1].endswith(("yaml", "yml"))
            else parser.parse_json_file(sys.argv[1])
        )
    else:
        (arguments,) = parser.parse_args_into_dataclasses()
    main(arguments)
