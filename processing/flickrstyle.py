"""FlickrStyle10k humorous / romantic captions -> a text-only corpus per style.

The public release holds 7,000 captions per style (the other 3,000 images of "10k" were never
released), one caption per line, in the order of the image names pickled in ``humor/train.p``::

    FlickrStyle_v0.9/humor/funny_train.txt        7000 lines, latin-1 / cp1252 bytes in places
    FlickrStyle_v0.9/romantic/romantic_train.txt  7000 lines
    FlickrStyle_v0.9/humor/train.p                pickled list of the 7000 image names

Split convention: CapDec trains its style decoders text-only on the style captions. The common
convention for the released 7,000, implemented here, is the first ``num_train=6000`` lines for training
and the remaining 1,000 for testing; ``split="train"`` / ``"test"`` / ``"all"`` pick one side (or everything). The cut is
made on line numbers before empty lines are dropped, so it stays aligned with the image order.

``train.p`` is never unpickled here: unpickling a downloaded file can run arbitrary code. To keep the
image names, convert the list once yourself to a text file with one name per line and pass it as
``image_names`` / ``--image_names_file``; the corpus then gets an ``image_name`` column.

CLI::

    python -m processing.flickrstyle --root FlickrStyle_v0.9 --style romantic --split train \\
        --num_train 6000 --output_dir data/romantic_train
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import HfArgumentParser

from processing.io_utils import OutputArguments, read_text, save_dataset

logger = logging.getLogger(__name__)

STYLE_CAPTION_FILES = {"humor": "humor/funny_train.txt", "romantic": "romantic/romantic_train.txt"}
SPLITS = ("train", "test", "all")
PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")


def _read_lines(path: str | os.PathLike, encoding: str | None = None) -> list[str]:
    # Split on "\n" only: str.splitlines would also break on \x0b, \x1c or U+2028 that can hide in a
    # caption, and shift every later caption against its image. Trailing blank lines are not entries.
    lines = [line.rstrip("\r") for line in read_text(path, encoding).split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def read_image_names(path: str | os.PathLike) -> list[str]:
    """Read image names from a plain text file, one per line; pickle files are refused, never loaded.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "names.txt"
        >>> _ = path.write_text("1000092795.jpg\\n10002456.jpg\\n")
        >>> read_image_names(path)
        ['1000092795.jpg', '10002456.jpg']
    """
    path = Path(path)
    # Pickles start with the PROTO opcode 0x80 (protocol 2+); refuse them however they are named.
    if path.suffix in PICKLE_SUFFIXES or (path.is_file() and path.read_bytes()[:1] == b"\x80"):
        raise ValueError(
            f"{path} looks like a pickle, which is not loaded (unpickling can run code). "
            "Write the image names to a text file, one per line, and pass that instead."
        )
    return [line.strip() for line in _read_lines(path)]


def flickrstyle_corpus(
    root: str | os.PathLike | None,
    style: str,
    split: str = "train",
    num_train: int = 6000,
    image_names: list[str] | None = None,
    caption_file: str | os.PathLike | None = None,
    encoding: str | None = None,
) -> Dataset:
    """Captions of one style as a dataset with columns ``caption`` and ``style`` (+ ``image_name``).

    Args:
        root: the FlickrStyle release directory (holding ``humor/`` and ``romantic/``).
        style: ``"humor"`` or ``"romantic"``.
        split: ``"train"`` (first ``num_train`` lines), ``"test"`` (the rest) or ``"all"``.
        num_train: lines in the training part; 6000 of 7000 by convention.
        image_names: names aligned with the caption lines (e.g. ``train.p`` converted to text).
        caption_file: read this file instead of ``root/<style file>``.
        encoding: force an encoding; by default UTF-8 with a cp1252/latin-1 fallback per line.

    Whitespace is stripped and collapsed; empty lines are dropped after the split is cut.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "humor").mkdir()
        >>> _ = (root / "humor/funny_train.txt").write_bytes(b"a dog dreams of bones .\\n\\nna\\xefve cat\\n")
        >>> flickrstyle_corpus(root, "humor", split="all")["caption"][:]
        ['a dog dreams of bones .', 'naïve cat']
    """
    if style not in STYLE_CAPTION_FILES:
        raise ValueError(f"Unknown style {style!r}; choose one of {sorted(STYLE_CAPTION_FILES)}")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {list(SPLITS)}")
    if caption_file is None:
        if root is None:
            raise ValueError("Give the FlickrStyle root directory or a caption_file.")
        caption_file = Path(root) / STYLE_CAPTION_FILES[style]
    lines = _read_lines(caption_file, encoding)
    if image_names is not None and len(image_names) != len(lines):
        raise ValueError(
            f"{len(image_names)} image names for {len(lines)} caption lines in {caption_file}; "
            "they must be aligned line by line."
        )
    if split != "all" and not 0 <= num_train <= len(lines):
        raise ValueError(f"num_train={num_train} is outside 0..{len(lines)} (lines in {caption_file})")
    start, stop = {"train": (0, num_train), "test": (num_train, len(lines)), "all": (0, len(lines))}[split]

    rows: dict[str, list[str]] = {"caption": [], "style": []}
    if image_names is not None:
        rows["image_name"] = []
    for index in range(start, stop):
        caption = " ".join(lines[index].split())
        if not caption:
            continue
        rows["caption"].append(caption)
        rows["style"].append(style)
        if image_names is not None:
            rows["image_name"].append(image_names[index])
    logger.info(
        "%s %s (lines %d-%d of %s): %d captions, %d empty lines dropped",
        style,
        split,
        start,
        stop,
        caption_file,
        len(rows["caption"]),
        stop - start - len(rows["caption"]),
    )
    return Dataset.from_dict(rows)


@dataclass
class FlickrStyleArguments:
    """Arguments of ``python -m processing.flickrstyle``."""

    style: str = field(metadata={"help": "Caption style.", "choices": sorted(STYLE_CAPTION_FILES)})
    root: str | None = field(
        default=None, metadata={"help": "FlickrStyle release directory (FlickrStyle_v0.9)."}
    )
    caption_file: str | None = field(
        default=None, metadata={"help": "Caption file to read instead of ROOT/<style file>."}
    )
    split: str = field(
        default="train", metadata={"help": "Part of the lines to keep.", "choices": list(SPLITS)}
    )
    num_train: int = field(default=6000, metadata={"help": "Lines in the training part (the rest is test)."})
    image_names_file: str | None = field(
        default=None, metadata={"help": "Text file of image names aligned with the captions (not train.p)."}
    )
    encoding: str | None = field(
        default=None,
        metadata={"help": "Force an encoding (default: UTF-8, per-line cp1252/latin-1 fallback)."},
    )


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; ``argv`` defaults to ``sys.argv[1:]``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, output = HfArgumentParser((FlickrStyleArguments, OutputArguments)).parse_args_into_dataclasses(
        args=argv
    )
    image_names = read_image_names(args.image_names_file) if args.image_names_file else None
    corpus = flickrstyle_corpus(
        args.root,
        args.style,
        split=args.split,
        num_train=args.num_train,
        image_names=image_names,
        caption_file=args.caption_file,
        encoding=args.encoding,
    )
    save_dataset(corpus, output.output_dir, output.output_jsonl)


if __name__ == "__main__":
    main(sys.argv[1:])
