"""Image-caption eval sets: one entry per image, with its image and its reference captions.

`load_eval_set` reads any of:

- a Karpathy-split JSON (`dataset_coco.json`, `dataset_flickr30k.json`): images of one `split`, ids are
  `cocoid` (else `imgid`), paths `image_root/filepath/filename`;
- a COCO captions annotation file (`captions_val2014.json`): ids are `images[].id`, paths
  `image_root/file_name`, references the `annotations` of each image;
- any `datasets` source with one row per image (a `.jsonl`/`.json`/`.csv`/`.parquet` file, a `save_to_disk`
  folder or a Hub name): an image column (images or paths) and a captions column (a list of strings per row).

This module is the project's one reader of the Karpathy and COCO layouts; `processing.karpathy` uses it too.
"""

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from ..training.data import load_dataset_source

logger = logging.getLogger(__name__)

ImageId = int | str
# Looked for, in this order, when an eval set's image column is not given.
IMAGE_COLUMN_CANDIDATES = ("image", "image_path", "file_name", "filepath", "path")


@dataclass
class CaptionEvalSet:
    """Images to caption and their reference captions, aligned by position, one entry per image.

    `images` holds what `caption_images` loads (paths, PIL images or a lazy `datasets` column); it is `None`
    when only the references were loaded (to score an existing predictions file).

    Example:
        >>> eval_set = CaptionEvalSet(image_ids=[7, 9], references=[["a dog"], ["a cat", "a kitten"]])
        >>> eval_set.references_by_id()
        {7: ['a dog'], 9: ['a cat', 'a kitten']}
    """

    image_ids: list[ImageId]
    references: list[list[str]]
    images: Sequence[Any] | None = None

    def __post_init__(self) -> None:
        if len(self.image_ids) != len(self.references):
            raise ValueError(f"{len(self.image_ids)} image ids but {len(self.references)} reference lists.")
        if self.images is not None and len(self.images) != len(self.image_ids):
            raise ValueError(f"{len(self.images)} images but {len(self.image_ids)} image ids.")
        seen: set[ImageId] = set()
        for index, image_id in enumerate(self.image_ids):
            if image_id in seen:
                raise ValueError(
                    f"Image id {image_id!r} appears twice (again at index {index}); an eval set has one entry "
                    "per image with all its references."
                )
            seen.add(image_id)

    def __len__(self) -> int:
        return len(self.image_ids)

    def references_by_id(self) -> dict[ImageId, list[str]]:
        """`{image_id: [reference, ...]}`, the `references` argument of `compute_caption_metrics`."""
        return dict(zip(self.image_ids, self.references, strict=True))


def load_eval_set(
    source: str | os.PathLike,
    split: str = "test",
    image_root: str | os.PathLike | None = None,
    image_column: str | None = None,
    captions_column: str = "captions",
    image_id_column: str | None = None,
    max_samples: int | None = None,
    cache_dir: str | None = None,
    references_only: bool = False,
) -> CaptionEvalSet:
    """Load an image-caption eval set from a Karpathy/COCO JSON or any `datasets` source (see the module).

    Args:
        source: the file, `save_to_disk` folder or Hub dataset name.
        split: the Karpathy split (`"test"`, `"val"`, ...) or the dataset split; a COCO captions file is one
            split already.
        image_root: folder a Karpathy/COCO file's image paths are relative to (needed unless `references_only`).
        image_column: for a dataset, the images or image paths; default the first of `IMAGE_COLUMN_CANDIDATES`.
        captions_column: for a dataset, the references (a list of strings per row, or one string).
        image_id_column: for a dataset, the ids; default `image_id` when present, else row numbers.
        max_samples: keep only the first `max_samples` images, in file order.
        references_only: load only ids and references (to score an existing results file): no image is read.

    Image paths must exist (`FileNotFoundError` naming the index and path otherwise); dataset images stay lazy.

    Example:
        >>> import json, tempfile
        >>> path = Path(tempfile.mkdtemp()) / "dataset_coco.json"
        >>> image = {"filename": "1.jpg", "imgid": 0, "cocoid": 42, "split": "test",
        ...          "sentences": [{"raw": "A dog."}, {"raw": "A pet."}]}
        >>> _ = path.write_text(json.dumps({"images": [image]}))
        >>> load_eval_set(path, split="test", references_only=True).references_by_id()
        {42: ['A dog.', 'A pet.']}
    """
    annotations = _read_annotation_json(Path(source))
    if annotations is not None:
        return _eval_set_from_annotations(
            annotations, Path(source), split, image_root, max_samples, references_only
        )
    return _eval_set_from_dataset(
        str(source),
        split,
        image_column,
        captions_column,
        image_id_column,
        max_samples,
        cache_dir,
        references_only,
    )


# -- Karpathy and COCO annotation files --------------------------------------------------------------------
def load_karpathy_images(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a Karpathy-split JSON file and return its `images` list, checking the keys used here.

    Raises `FileNotFoundError` for a missing file and `ValueError` naming the file (and the key)
    for invalid JSON, a missing `images` list or an image without `split`/`filename`/`sentences`.

    Example:
        >>> import json, tempfile
        >>> path = Path(tempfile.mkdtemp()) / "k.json"
        >>> image = {"filename": "1.jpg", "imgid": 0, "split": "test", "sentences": [{"raw": "A dog."}]}
        >>> _ = path.write_text(json.dumps({"images": [image]}))
        >>> load_karpathy_images(path)[0]["filename"]
        '1.jpg'
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(f"{path} has no 'images' key; is it a Karpathy split file (dataset_coco.json)?")
    return _checked_karpathy_images(data, path)


def karpathy_split(
    images: list[dict[str, Any]], split: str, source: str
) -> tuple[list[ImageId], list[str], list[list[str]]]:
    """`(image_ids, relative image paths, raw reference captions)` of the images of `split`, in file order.

    Ids are the COCO ids (`cocoid`) when present, else Karpathy's `imgid`, so COCO ids match the official
    annotation files. Paths are `filepath/filename` (`filepath` exists for COCO only). An unknown split raises
    `ValueError` listing the splits present.

    Example:
        >>> image = {"filepath": "val2014", "filename": "1.jpg", "imgid": 0, "cocoid": 42, "split": "test",
        ...          "sentences": [{"raw": "A dog."}]}
        >>> karpathy_split([image], "test", "k.json")
        ([42], ['val2014/1.jpg'], [['A dog.']])
    """
    image_ids, file_names, references = [], [], []
    for image in images:
        if image["split"] != split:
            continue
        image_id = image.get("cocoid", image.get("imgid"))
        if image_id is None:
            raise ValueError(f"{source}: image {image['filename']!r} has neither 'cocoid' nor 'imgid'.")
        image_ids.append(image_id)
        file_names.append(os.path.join(image.get("filepath") or "", image["filename"]))
        references.append([sentence["raw"] for sentence in image["sentences"]])
    if not image_ids:
        present = sorted({image["split"] for image in images})
        raise ValueError(f"No images of split {split!r} in {source}; splits present: {present}")
    return image_ids, file_names, references


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"Annotation file not found: {path}")
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def _read_annotation_json(path: Path) -> dict | None:
    """The parsed file when `path` is a Karpathy or COCO captions JSON (an object with an `images` list);
    None for anything else (a folder, a Hub name, JSON Lines or a JSON list of rows: `datasets` reads those)."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    data = _read_json(path)
    return data if isinstance(data, dict) and "images" in data else None


def _checked_karpathy_images(data: dict, path: Path) -> list[dict[str, Any]]:
    images = data["images"]
    if not isinstance(images, list):
        raise ValueError(f"{path}: 'images' must be a list, got {type(images).__name__}")
    for index, image in enumerate(images):
        for key in ("split", "filename", "sentences"):
            if key not in image:
                raise ValueError(
                    f"{path}: images[{index}] has no '{key}' key; is this a Karpathy split file?"
                )
        if not all(isinstance(sentence, dict) and "raw" in sentence for sentence in image["sentences"]):
            raise ValueError(f"{path}: images[{index}] has a sentence without a 'raw' key")
    return images


def _eval_set_from_annotations(
    data: dict,
    path: Path,
    split: str,
    image_root: str | os.PathLike | None,
    max_samples: int | None,
    references_only: bool,
) -> CaptionEvalSet:
    if "annotations" in data:
        image_ids, file_names, references = _read_coco_captions(data, path)
    else:
        image_ids, file_names, references = karpathy_split(
            _checked_karpathy_images(data, path), split, str(path)
        )
    if max_samples is not None:
        image_ids, file_names, references = (
            image_ids[:max_samples],
            file_names[:max_samples],
            references[:max_samples],
        )
    images = None
    if not references_only:
        if image_root is None:
            raise ValueError(
                f"{path} lists image files: give image_root, the folder their paths are relative to."
            )
        images = [os.path.join(image_root, file_name) for file_name in file_names]
        _check_files_exist(images, image_ids, str(path))
    logger.info("Eval set from %s: %d images, %d references", path, len(image_ids), sum(map(len, references)))
    return CaptionEvalSet(image_ids=image_ids, references=references, images=images)


def _read_coco_captions(data: dict, path: Path) -> tuple[list, list[str], list[list[str]]]:
    if not isinstance(data.get("images"), list):
        raise ValueError(f"{path} has 'annotations' but no 'images' list; is it a COCO captions file?")
    references: dict[ImageId, list[str]] = {image["id"]: [] for image in data["images"]}
    for index, annotation in enumerate(data["annotations"]):
        if annotation.get("image_id") not in references:
            raise ValueError(
                f"{path}: annotations[{index}] is for image id {annotation.get('image_id')!r}, not in 'images'."
            )
        if not isinstance(annotation.get("caption"), str):
            raise ValueError(f"{path}: annotations[{index}] has no 'caption' string.")
        references[annotation["image_id"]].append(annotation["caption"])
    image_ids = [image["id"] for image in data["images"]]
    if not image_ids:
        raise ValueError(f"No images in {path}: there is nothing to evaluate.")
    for image_id in image_ids:
        if not references[image_id]:
            raise ValueError(f"{path}: image id {image_id!r} has no caption in 'annotations'.")
    return image_ids, [image["file_name"] for image in data["images"]], [references[i] for i in image_ids]


def _check_files_exist(paths: Sequence[str], image_ids: Sequence[ImageId], source: str) -> None:
    # Checked before captioning starts, so a bad path fails in seconds rather than after an hour.
    for index, (image_path, image_id) in enumerate(zip(paths, image_ids, strict=True)):
        if not image_path or not os.path.isfile(image_path):
            raise FileNotFoundError(
                f"Eval image {index} (image id {image_id!r}) of {source} does not exist: {image_path!r}"
            )


# -- datasets sources ----------------------------------------------------------------------------------------
def _eval_set_from_dataset(
    source: str,
    split: str,
    image_column: str | None,
    captions_column: str,
    image_id_column: str | None,
    max_samples: int | None,
    cache_dir: str | None,
    references_only: bool,
) -> CaptionEvalSet:
    dataset = load_dataset_source(source, split=split, cache_dir=cache_dir)
    columns = dataset.column_names
    image_column = None if references_only else _image_column(image_column, columns, source)
    if captions_column not in columns:
        raise ValueError(
            f"The eval captions column {captions_column!r} is not in {source}; its columns are {columns}."
        )
    if image_id_column is None and "image_id" in columns:
        image_id_column = "image_id"
    elif image_id_column is not None and image_id_column not in columns:
        raise ValueError(
            f"The eval image id column {image_id_column!r} is not in {source}; its columns are {columns}."
        )
    if len(dataset) == 0:
        raise ValueError(f"The eval set {source} has no rows.")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    references = [
        _reference_list(refs, row, captions_column, source)
        for row, refs in enumerate(dataset[captions_column])
    ]
    image_ids = list(dataset[image_id_column]) if image_id_column else list(range(len(dataset)))
    if image_column is None:
        return CaptionEvalSet(image_ids=image_ids, references=references, images=None)
    images = dataset[image_column]  # a lazy column
    if dataset.features[image_column] == datasets.Value("string"):
        _check_files_exist(list(images), image_ids, f"column {image_column!r} of {source}")
    return CaptionEvalSet(image_ids=image_ids, references=references, images=images)


def _image_column(image_column: str | None, columns: list[str], source: str) -> str:
    if image_column is None:
        image_column = next((name for name in IMAGE_COLUMN_CANDIDATES if name in columns), None)
        if image_column is None:
            raise ValueError(
                f"The eval set {source} has no image column: none of {list(IMAGE_COLUMN_CANDIDATES)} is among "
                f"its columns {columns}. Name it with --eval_image_column."
            )
    elif image_column not in columns:
        raise ValueError(
            f"The eval image column {image_column!r} is not in {source}; its columns are {columns}."
        )
    return image_column


def _reference_list(refs: Any, row: int, captions_column: str, source: str) -> list[str]:
    refs = [refs] if isinstance(refs, str) else refs
    if not isinstance(refs, list) or not refs or not all(isinstance(ref, str) for ref in refs):
        raise ValueError(
            f"Row {row} of the eval captions column {captions_column!r} in {source} holds {refs!r}; expected "
            "a non-empty list of reference strings."
        )
    return refs


__all__ = [
    "CaptionEvalSet",
    "IMAGE_COLUMN_CANDIDATES",
    "karpathy_split",
    "load_eval_set",
    "load_karpathy_images",
]
