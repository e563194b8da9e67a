"""Karpathy-split COCO / Flickr30k JSON -> a text-only training corpus and an image-caption eval set.

The Karpathy files (``dataset_coco.json``, ``dataset_flickr30k.json``) look like::

    {"dataset": "coco",
     "images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "imgid": 0,
                 "cocoid": 391895, "split": "test",
                 "sentences": [{"raw": "A man with a red helmet ...", "tokens": [...]}, ...]}, ...]}

``filepath`` and ``cocoid`` exist for COCO only. Splits are ``train``, ``restval`` (COCO only: the part of
COCO val2014 that is not in Karpathy val/test, usually trained on), ``val`` and ``test``.

CapDec trains on the captions alone, so the corpus is one row per caption of the training images
(column ``caption``); the eval set keeps one row per image with all its reference captions.

CLI::

    python -m processing.karpathy --karpathy_json dataset_coco.json \\
        --corpus_output_dir data/coco_train_text \\
        --eval_split test --image_root /data/coco --eval_output_dir data/coco_test
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset
from transformers import HfArgumentParser

from modeling_capdec.evaluation.eval_sets import karpathy_split, load_karpathy_images
from processing.io_utils import save_dataset

logger = logging.getLogger(__name__)

TRAIN_SPLITS = ("train", "restval")


def split_counts(images: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Count images and captions per split, e.g. ``{"train": {"images": 2, "captions": 10}, ...}``.

    Example:
        >>> split_counts([{"split": "val", "sentences": [{"raw": "a"}, {"raw": "b"}]}])
        {'val': {'images': 1, 'captions': 2}}
    """
    counts: dict[str, dict[str, int]] = {}
    for image in images:
        split = counts.setdefault(image["split"], {"images": 0, "captions": 0})
        split["images"] += 1
        split["captions"] += len(image["sentences"])
    return counts


def _check_splits(images: list[dict[str, Any]], wanted: tuple[str, ...], path_hint: str) -> None:
    present = sorted({image["split"] for image in images})
    unknown = [split for split in wanted if split not in present]
    if unknown:
        raise ValueError(f"Unknown split {unknown} in {path_hint}; splits present: {present}")


def _clean_caption(raw: str) -> str:
    # Some COCO raw captions carry newlines, doubled or trailing spaces; one space between words.
    return " ".join(raw.split())


def _images_and_source(images_or_path: list[dict[str, Any]] | str | os.PathLike) -> tuple[list, str]:
    # Both public functions accept a path or an already loaded list, so the CLI reads the JSON once.
    if isinstance(images_or_path, list):
        return images_or_path, "the given images"
    return load_karpathy_images(images_or_path), str(images_or_path)


def karpathy_text_corpus(
    images_or_path: list[dict[str, Any]] | str | os.PathLike, include_restval: bool = True
) -> Dataset:
    """One row per training caption, column ``caption``, in file order.

    ``restval`` counts as training data unless ``include_restval=False`` (Karpathy's and CapDec's
    COCO training set is train + restval: 113,287 images). A split absent from the file (Flickr30k has
    no ``restval``) is skipped; it is an error only if no training split is present. Empty captions
    are dropped.

    Example:
        >>> image = {"filename": "1.jpg", "split": "train", "sentences": [{"raw": " A dog runs. "}]}
        >>> karpathy_text_corpus([image])["caption"][:]
        ['A dog runs.']
    """
    images, source = _images_and_source(images_or_path)
    wanted = TRAIN_SPLITS if include_restval else ("train",)
    present = {image["split"] for image in images}
    if not present.intersection(wanted):
        raise ValueError(f"No training split {list(wanted)} in {source}; splits present: {sorted(present)}")
    captions, dropped = [], 0
    for image in images:
        if image["split"] not in wanted:
            continue
        for sentence in image["sentences"]:
            caption = _clean_caption(sentence["raw"])
            if caption:
                captions.append(caption)
            else:
                dropped += 1
    logger.info(
        "Text corpus from splits %s of %s: %d captions (%d empty dropped)",
        [split for split in wanted if split in present],
        source,
        len(captions),
        dropped,
    )
    return Dataset.from_dict({"caption": captions})


def karpathy_eval_set(
    images_or_path: list[dict[str, Any]] | str | os.PathLike,
    split: str = "test",
    image_root: str | os.PathLike | None = None,
) -> Dataset:
    """One row per image of ``split``: ``image_id``, ``image_path``, ``captions`` (list of raw strings).

    ``image_id`` is the COCO id (``cocoid``) when the file has one, else Karpathy's ``imgid``, so COCO
    ids match the official annotation files used by the caption metrics. ``image_path`` is
    ``image_root/filepath/filename`` (``filepath`` only exists for COCO); without ``image_root`` the
    relative path is kept. An unknown ``split`` raises ``ValueError`` listing the splits present.

    Example:
        >>> image = {"filepath": "val2014", "filename": "1.jpg", "imgid": 0, "cocoid": 42,
        ...          "split": "test", "sentences": [{"raw": "A dog."}, {"raw": "A pet."}]}
        >>> karpathy_eval_set([image], "test", image_root="/coco")[0]
        {'image_id': 42, 'image_path': '/coco/val2014/1.jpg', 'captions': ['A dog.', 'A pet.']}
    """
    images, source = _images_and_source(images_or_path)
    image_ids, file_names, references = karpathy_split(images, split, source)
    root = [str(image_root)] if image_root is not None else []
    rows = {
        "image_id": image_ids,
        "image_path": [os.path.join(*root, file_name) for file_name in file_names],
        "captions": [[_clean_caption(raw) for raw in refs] for refs in references],
    }
    logger.info(
        "Eval set '%s' of %s: %d images, %d captions",
        split,
        source,
        len(rows["image_id"]),
        sum(map(len, rows["captions"])),
    )
    return Dataset.from_dict(rows)


@dataclass
class KarpathyArguments:
    """Arguments of ``python -m processing.karpathy``."""

    karpathy_json: str = field(metadata={"help": "Path of dataset_coco.json / dataset_flickr30k.json."})
    include_restval: bool = field(
        default=True,
        metadata={"help": "Count 'restval' as training data (use --no_include_restval to drop)."},
    )
    corpus_output_dir: str | None = field(
        default=None, metadata={"help": "save_to_disk directory for the training text corpus."}
    )
    corpus_output_jsonl: str | None = field(
        default=None, metadata={"help": "jsonl file for the text corpus."}
    )
    eval_split: str = field(default="test", metadata={"help": "Split for the eval set: 'val' or 'test'."})
    image_root: str | None = field(
        default=None, metadata={"help": "Prefix of image paths (the directory holding val2014/ for COCO)."}
    )
    eval_output_dir: str | None = field(
        default=None, metadata={"help": "save_to_disk directory for the eval set."}
    )
    eval_output_jsonl: str | None = field(default=None, metadata={"help": "jsonl file for the eval set."})

    def __post_init__(self) -> None:
        outputs = (
            self.corpus_output_dir,
            self.corpus_output_jsonl,
            self.eval_output_dir,
            self.eval_output_jsonl,
        )
        if not any(outputs):
            raise ValueError(
                "Nothing to write: give --corpus_output_dir/--corpus_output_jsonl and/or --eval_output_*."
            )


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; ``argv`` defaults to ``sys.argv[1:]``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (args,) = HfArgumentParser(KarpathyArguments).parse_args_into_dataclasses(args=argv)
    images = load_karpathy_images(args.karpathy_json)  # read once for the counts and the corpus
    for split, counts in sorted(split_counts(images).items()):
        logger.info(
            "%s: %-8s %7d images %8d captions",
            args.karpathy_json,
            split,
            counts["images"],
            counts["captions"],
        )
    if args.corpus_output_dir or args.corpus_output_jsonl:
        corpus = karpathy_text_corpus(images, include_restval=args.include_restval)
        save_dataset(corpus, args.corpus_output_dir, args.corpus_output_jsonl)
    if args.eval_output_dir or args.eval_output_jsonl:
        # Check the split before building anything so the error names the file, not "the given images".
        _check_splits(images, (args.eval_split,), args.karpathy_json)
        eval_set = karpathy_eval_set(images, split=args.eval_split, image_root=args.image_root)
        save_dataset(eval_set, args.eval_output_dir, args.eval_output_jsonl)


if __name__ == "__main__":
    main(sys.argv[1:])
