"""The arguments of `capdec-evaluate` (`evaluate_capdec.py`)."""

from dataclasses import dataclass, field
from typing import Any, Literal

# --dtype values and the torch dtypes they name (strings here, so that parsing the arguments imports no torch).
DTYPES = ("float32", "bfloat16", "float16")


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
            ".parquet file, compressed or not, a glob, a save_to_disk folder or a Hub name).",
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
    clip_rerank: int | None = field(
        default=None,
        metadata={
            "help": "Decode K candidates per image (beam search with --num_beams K unless set higher, or K samples "
            "with --do_sample) and keep the one CLIP puts nearest the image."
        },
    )
    clip_rerank_tolerance: float = field(
        default=0.0,
        metadata={
            "help": "With --clip_rerank: keep the decoder's first candidate (beam search: the most probable) among "
            "those within this CLIP cosine of the best; 0: CLIP's best."
        },
    )
    max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Longest caption in decoder tokens (the model's own default if not set)."},
    )
    do_sample: bool = field(
        default=False,
        metadata={"help": "Sample the captions (with --top_p/--temperature) instead of searching."},
    )
    top_p: float | None = field(
        default=None, metadata={"help": "Nucleus sampling: keep the smallest token set of this probability."}
    )
    temperature: float | None = field(
        default=None, metadata={"help": "Sampling temperature (>0; below 1 sharper, above 1 more varied)."}
    )
    seed: int | None = field(
        default=None, metadata={"help": "Random seed, so that sampled captions repeat from run to run."}
    )
    dtype: Literal["float32", "bfloat16", "float16"] | None = field(
        default=None,
        metadata={
            "help": "Run the model in this dtype (bfloat16/float16 halve memory on a GPU); the saved one if not set."
        },
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
        sampling = [name for name in ("top_p", "temperature") if getattr(self, name) is not None]
        if sampling and not self.do_sample:
            # generate would ignore them with a warning: a run that looks sampled but is not.
            raise ValueError(
                f"{', '.join('--' + name for name in sampling)} only apply when sampling: add --do_sample."
            )
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"--top_p must be in (0, 1], got {self.top_p}.")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"--temperature must be greater than 0, got {self.temperature}.")
        if self.clip_rerank is not None and (isinstance(self.clip_rerank, bool) or self.clip_rerank < 2):
            raise ValueError(f"--clip_rerank is a number of candidates, at least 2; got {self.clip_rerank}.")
        if self.clip_rerank is not None and 1 < self.num_beams < self.clip_rerank and not self.do_sample:
            raise ValueError(
                f"--clip_rerank {self.clip_rerank} needs {self.clip_rerank} beams, but --num_beams is "
                f"{self.num_beams}: raise --num_beams or leave it out."
            )
        if self.clip_rerank_tolerance < 0:
            raise ValueError(f"--clip_rerank_tolerance must be at least 0, got {self.clip_rerank_tolerance}.")
        if self.clip_rerank_tolerance and self.clip_rerank is None:
            raise ValueError(
                "--clip_rerank_tolerance applies to --clip_rerank's candidates: give --clip_rerank too."
            )
        if self.dtype is not None and self.dtype not in DTYPES:  # a caller that bypasses the parser
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}.")

    def generate_kwargs(self) -> dict[str, Any]:
        """What `model.generate` receives for each batch: only the settings given, so that the model's own
        generation defaults (its caption length among them) apply to the rest."""
        kwargs: dict[str, Any] = {"num_beams": self.num_beams}
        if self.clip_rerank is not None:
            kwargs["clip_rerank"] = self.clip_rerank
            if self.clip_rerank_tolerance:
                kwargs["clip_rerank_tolerance"] = self.clip_rerank_tolerance
            if self.num_beams == 1:  # the default: as many beams as candidates
                kwargs.pop("num_beams")
        if self.max_new_tokens is not None:
            kwargs["max_new_tokens"] = self.max_new_tokens
        if self.do_sample:
            kwargs["do_sample"] = True
            kwargs.update(
                {
                    name: getattr(self, name)
                    for name in ("top_p", "temperature")
                    if getattr(self, name) is not None
                }
            )
        return kwargs


__all__ = ["DTYPES", "EvaluateArguments"]
