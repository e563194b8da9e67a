"""The arguments of `capdec-evaluate` (`evaluate_capdec.py`)."""

from dataclasses import dataclass, field


@dataclass
class EvaluateArguments:
    """Caption an eval set with a saved model (`--model`) or score an existing results file (`--predictions`)."""

    model: str | None = field(
        default=None, metadata={"help": "Saved CapDec model folder or Hub name to caption the images with."}
    )
    predictions: str | None = field(
        default=None,
        metadata={
            "help": "Score this COCO results file ([{'image_id', 'caption'}]) instead of running a model."
        },
    )
    eval_file: str | None = field(
        default=None,
        metadata={
            "aliases": ["--annotations", "--dataset"],
            "help": "The eval set, as training's --eval_file: a Karpathy split JSON (dataset_coco.json), a COCO "
            "captions JSON (captions_val2014.json), or a datasets source with one row per image (a .jsonl/.csv/"
            ".parquet file, a save_to_disk folder or a Hub name).",
        },
    )
    split: str = field(default="test", metadata={"help": "Karpathy split, or the dataset split."})
    image_root: str | None = field(
        default=None,
        metadata={
            "help": "Folder the image paths of a Karpathy/COCO JSON are relative to (needed with --model)."
        },
    )
    image_column: str | None = field(
        default=None,
        metadata={
            "help": "Dataset column with images or image paths (first of image, image_path, ... present)."
        },
    )
    captions_column: str = field(
        default="captions", metadata={"help": "Dataset column with the list of reference captions per image."}
    )
    image_id_column: str | None = field(
        default=None,
        metadata={"help": "Dataset column of image ids ('image_id' if present, else row number)."},
    )
    output_dir: str = field(
        default="outputs/eval", metadata={"help": "Where predictions.json and metrics.json go."}
    )
    max_samples: int | None = field(
        default=None,
        metadata={
            "aliases": ["--limit"],
            "help": "Evaluate only the first N images (quick looks); --predictions for others are ignored.",
        },
    )
    batch_size: int = field(default=32, metadata={"help": "Images per generate call."})
    num_beams: int = field(default=1, metadata={"help": "Beam width (1: greedy)."})
    max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Longest caption in decoder tokens (the model's own default if not set)."},
    )
    device: str | None = field(
        default=None, metadata={"help": "torch device (cuda when available, else cpu)."}
    )
    metrics: list[str] | None = field(
        default=None,
        metadata={
            "help": "Subset of BLEU METEOR ROUGE-L CIDEr SPICE (all; SPICE if its models are installed)."
        },
    )

    def __post_init__(self) -> None:
        if (self.model is None) == (self.predictions is None):
            raise ValueError(
                "Give either --model (to caption the images) or --predictions (to score a results file)."
            )
        if self.eval_file is None:
            raise ValueError("Give the eval set with --eval_file (or its aliases --annotations, --dataset).")

    def generate_kwargs(self) -> dict:
        """What `model.generate` receives for each batch."""
        kwargs = {"num_beams": self.num_beams}
        if self.max_new_tokens is not None:
            kwargs["max_new_tokens"] = self.max_new_tokens
        return kwargs


__all__ = ["EvaluateArguments"]
