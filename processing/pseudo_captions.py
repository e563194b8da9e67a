"""Unlabelled images captioned by a trained CapDec model -> a corpus for one round of self-training.

Text-only training never shows the decoder an image embedding: the noise only approximates where images land.
Where the target domain's unlabelled images are at hand (the ones ``--noise_images`` measures the noise on), one
round of self-training lets the decoder see them: caption each image with the text-only model (CLIP-reranked
beam search by default: K beams, the caption CLIP finds nearest the image, or with ``--clip_rerank_tolerance``
the most probable of those CLIP puts near the best), then continue training on those (image, own caption)
pairs in supervised mode. No human caption of an image is used at any point.

CLI::

    python -m processing.pseudo_captions --model out --images unlabelled/ --output_jsonl pseudo.jsonl
    capdec-train --mode supervised --init_from out --train_file pseudo.jsonl --image_column image \\
        --learning_rate 5e-4 --warmup_steps 50 --max_steps 1000 --output_dir out-self-trained

Each jsonl row is ``{"image": "<absolute path>", "caption": "..."}``. An image that cannot be read stops the run
with an error naming its file, before the model loads; with ``--skip_unreadable`` it is left out instead, and the
run reports how many were and names them.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import HfArgumentParser

from processing.io_utils import OutputArguments, save_dataset

logger = logging.getLogger(__name__)


@dataclass
class PseudoCaptionArguments:
    model: str = field(metadata={"help": "A trained CapDec folder (or Hub name) that captions the images."})
    images: str = field(metadata={"help": "A folder of unlabelled images (searched recursively, by suffix)."})
    clip_rerank: int = field(
        default=5,
        metadata={
            "help": "Beams per image, of which CLIP keeps the nearest to the image; 1: greedy decoding."
        },
    )
    clip_rerank_tolerance: float = field(
        default=0.0,
        metadata={
            "help": "Keep the decoder's first beam among those within this CLIP cosine of the best (CLIP tells "
            "content apart but hardly the wording of paraphrases); 0: CLIP's best."
        },
    )
    max_images: int | None = field(
        default=None, metadata={"help": "Caption a seeded sample of this many images (default: all)."}
    )
    batch_size: int = field(default=64, metadata={"help": "Images per generate call."})
    max_new_tokens: int = field(default=32, metadata={"help": "Longest caption, in decoder tokens."})
    seed: int = field(default=0, metadata={"help": "Seed of the --max_images sample."})
    skip_unreadable: bool = field(
        default=False,
        metadata={
            "help": "Leave out (and count) images that cannot be read, instead of stopping at the first."
        },
    )

    def __post_init__(self) -> None:
        # Before the model loads, and naming the flags (1 means greedy here; caption_images' clip_rerank needs 2+).
        if self.clip_rerank < 1:
            raise ValueError(f"--clip_rerank must be at least 1 (1: greedy), got {self.clip_rerank}.")
        if self.clip_rerank_tolerance < 0:
            raise ValueError(f"--clip_rerank_tolerance must be at least 0, got {self.clip_rerank_tolerance}.")
        if self.clip_rerank_tolerance and self.clip_rerank == 1:
            raise ValueError(
                "--clip_rerank_tolerance applies to --clip_rerank's beams: give --clip_rerank 2 or more."
            )
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be at least 1, got {self.batch_size}.")


def pseudo_captions(
    model: str,
    images: str | Path,
    clip_rerank: int = 5,
    clip_rerank_tolerance: float = 0.0,
    max_images: int | None = None,
    batch_size: int = 64,
    max_new_tokens: int = 32,
    seed: int = 0,
    skip_unreadable: bool = False,
) -> Dataset:
    """Caption every image of the folder `images` with the CapDec model `model`; one row per image, columns
    `image` (the absolute path) and `caption`. With `clip_rerank` K > 1 each caption is CLIP's choice among K
    beams; `clip_rerank_tolerance` δ keeps the most probable beam among those within δ of CLIP's best score.

    Every image is read once before the model loads: one that cannot be read raises `ImageLoadError` naming it,
    or with `skip_unreadable` is left out, counted and named in a warning.

    Example:
        >>> corpus = pseudo_captions("outputs/capdec-coco", "unlabelled/")  # doctest: +SKIP
        >>> corpus[0]  # doctest: +SKIP
        {'image': '/data/unlabelled/0001.jpg', 'caption': 'a dog runs on the beach'}
    """
    from modeling_capdec import CapDecForConditionalGeneration, CapDecProcessor
    from modeling_capdec.evaluation.captioning import caption_images
    from modeling_capdec.training.noise_estimate import image_folder_files

    files = readable_images(
        [str(path.resolve()) for path in image_folder_files(images, max_images, seed)], skip_unreadable
    )
    captioner = CapDecForConditionalGeneration.from_pretrained(model).eval()
    processor = CapDecProcessor.from_pretrained(model)
    decoding = (
        {"clip_rerank": clip_rerank, "clip_rerank_tolerance": clip_rerank_tolerance}
        if clip_rerank > 1
        else {}
    )
    captions = caption_images(
        captioner, processor, files, batch_size=batch_size, max_new_tokens=max_new_tokens, **decoding
    )
    logger.info(
        "Captioned %d images of %s with %s (%s).",
        len(files),
        images,
        model,
        f"CLIP rerank of {clip_rerank} beams, tolerance {clip_rerank_tolerance:g}" if decoding else "greedy",
    )
    return Dataset.from_dict({"image": files, "caption": captions})


def readable_images(files: list[str], skip_unreadable: bool) -> list[str]:
    """`files` that load as images, in order. A bad one raises `ImageLoadError` naming it (hours into captioning
    is too late to find it), or with `skip_unreadable` is dropped and reported with the count."""
    from tqdm.auto import tqdm

    from modeling_capdec.processing_capdec import ImageLoadError, load_image

    readable, problems = [], []
    for index, path in enumerate(tqdm(files, desc="Reading images", unit="image")):
        try:
            load_image(path, index)
        except ImageLoadError as error:
            if not skip_unreadable:
                raise
            problems.append(str(error))
            continue
        readable.append(path)
    if problems:
        shown = "\n  ".join(problems[:10]) + ("\n  ..." if len(problems) > 10 else "")
        logger.warning("Skipped %d of %d images that cannot be read:\n  %s", len(problems), len(files), shown)
    if not readable:
        raise ValueError(f"None of the {len(files)} images can be read; the first: {problems[0]}")
    return readable


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; ``argv`` defaults to ``sys.argv[1:]``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, output = HfArgumentParser((PseudoCaptionArguments, OutputArguments)).parse_args_into_dataclasses(
        args=argv
    )
    corpus = pseudo_captions(**asdict(args))  # the fields are the function's parameters
    save_dataset(corpus, output.output_dir, output.output_jsonl)


if __name__ == "__main__":
    main(sys.argv[1:])
