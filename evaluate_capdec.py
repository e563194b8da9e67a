"""Caption an eval set with a CapDec model and score it with the COCO caption toolkit.

Writes `predictions.json` (COCO results format) and `metrics.json` (BLEU-1..4, METEOR, ROUGE-L, CIDEr, and
SPICE when its models are installed; toolkit scale, CIDEr up to 10) to `--output_dir`.

    # Karpathy test split of COCO (`capdec-evaluate` is the same command, installed)
    capdec-evaluate --model outputs/capdec-coco --eval_file data/dataset_coco.json \\
        --image_root data/coco --split test --num_beams 5 --output_dir outputs/eval-coco
    # COCO captions annotation file
    capdec-evaluate --model outputs/capdec-coco --eval_file captions_val2014.json --image_root data/coco/val2014
    # a `datasets` eval set (a .jsonl/.jsonl.gz file, save_to_disk folder or Hub name), one row per image
    capdec-evaluate --model outputs/capdec-coco --eval_file data/coco_test --image_column image_path
    # bfloat16, and sampled captions that repeat from run to run
    capdec-evaluate --model outputs/capdec-coco --eval_file eval.jsonl --dtype bfloat16 \\
        --do_sample --top_p 0.9 --temperature 0.7 --seed 0
    # score an existing results file: no model, no images
    capdec-evaluate --predictions outputs/eval-coco/predictions.json --eval_file data/dataset_coco.json
    # a recipe file, optionally followed by overrides
    capdec-evaluate eval.yaml --max_samples 100
"""

import json
import logging
from pathlib import Path

import modeling_capdec
from modeling_capdec.commands.recipes import parse_recipe_and_args
from modeling_capdec.evaluation.arguments import EvaluateArguments
from modeling_capdec.evaluation.captioning import caption_images, read_coco_results, write_coco_results
from modeling_capdec.evaluation.eval_sets import load_eval_set
from modeling_capdec.evaluation.metrics import compute_caption_metrics

logger = logging.getLogger("evaluate_capdec")


def evaluate(args: EvaluateArguments) -> dict[str, float]:
    """Load the eval set, caption it (or read --predictions), score, and write the results; returns the metrics.

    Example:
        >>> args = EvaluateArguments(predictions="outputs/eval/predictions.json",
        ...                          eval_file="data/dataset_coco.json", output_dir="outputs/eval")
        >>> evaluate(args)["CIDEr"]  # doctest: +SKIP
        0.91
    """
    # Scoring a results file needs only the references: no image is opened.
    eval_set = load_eval_set(
        args.eval_file,
        args.split,
        image_root=args.image_root,
        image_column=args.image_column,
        captions_column=args.captions_column,
        image_id_column=args.image_id_column,
        max_samples=args.max_samples,
        references_only=args.model is None,
    )
    output_dir = Path(args.output_dir)
    if args.predictions is not None:
        predictions = read_coco_results(args.predictions)
        if args.max_samples is not None:  # the file may cover the whole set
            predictions = {i: predictions[i] for i in eval_set.image_ids if i in predictions}
    else:
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = modeling_capdec.CapDecForConditionalGeneration.from_pretrained(args.model).to(device).eval()
        if args.dtype is not None:
            # Cast after loading: CLIP, the mapper and the decoder all follow (pixel values are cast to it too).
            model = model.to(dtype=getattr(torch, args.dtype))
        if args.seed is not None:
            from transformers import set_seed

            set_seed(args.seed)
        processor = modeling_capdec.CapDecProcessor.from_pretrained(args.model)
        modeling_capdec.check_processor_matches_model(processor, model)
        captions = caption_images(
            model, processor, eval_set.images, args.batch_size, **args.generate_kwargs()
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


def main(argv: list[str] | None = None) -> dict[str, float]:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (args,) = parse_recipe_and_args((EvaluateArguments,), argv, description=__doc__)
    return evaluate(args)


if __name__ == "__main__":
    main()
