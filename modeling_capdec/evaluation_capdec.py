"""Helpers of `evaluate_capdec.py`: load an image-caption eval set, caption it in batches, read/write COCO results.

An eval set comes from one of:

- a Karpathy-split JSON (`dataset_coco.json`, `dataset_flickr30k.json`): images of one `split`, ids are
  `cocoid` (else `imgid`), paths `image_root/filepath/filename`;
- a COCO captions annotation file (`captions_val2014.json`): ids are `images[].id`, paths
  `image_root/file_name`, references the `annotations` of each image;
- a `datasets` dataset (a `save_to_disk` folder or a Hub / `load_dataset` name) with one row per image, an
  image column (images or paths) and a captions column (a list of strings per row).

Predictions are written and read in the COCO results format, `[{"image_id": ..., "caption": ...}, ...]`.
Nothing here imports torch until `caption_images` runs, so scoring an existing results file needs no model.
"""

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

ImageId = int | str


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


def load_annotations(
    path: str | os.PathLike,
    split: str = "test",
    image_root: str | os.PathLike | None = None,
    limit: int | None = None,
) -> CaptionEvalSet:
    """Load an eval set from a Karpathy-split JSON or a COCO captions annotation JSON (layout detected).

    Args:
        path: the JSON file.
        split: the Karpathy split to keep (`"test"`, `"val"`, ...); ignored for a COCO annotation file, which
            is one split already.
        image_root: folder the image paths are relative to. Without it only references are loaded
            (`images` is `None`); with it every image file must exist (`FileNotFoundError` naming the index
            and path otherwise).
        limit: keep only the first `limit` images, in file order.

    Example:
        >>> import json, tempfile
        >>> path = Path(tempfile.mkdtemp()) / "dataset_coco.json"
        >>> image = {"filename": "1.jpg", "imgid": 0, "cocoid": 42, "split": "test",
        ...          "sentences": [{"raw": "A dog."}, {"raw": "A pet."}]}
        >>> _ = path.write_text(json.dumps({"images": [image]}))
        >>> load_annotations(path, split="test").references_by_id()
        {42: ['A dog.', 'A pet.']}
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Annotation file not found: {path}")
    with path.open(encoding="utf-8") as handle:
        data = json.load(handle)
    if isinstance(data, dict) and "annotations" in data:
        image_ids, file_names, references = _read_coco_captions(data, path)
    elif isinstance(data, dict) and isinstance(data.get("images"), list):
        image_ids, file_names, references = _read_karpathy_split(data, split, path)
    else:
        raise ValueError(
            f"{path} is neither a Karpathy split file ({{'images': [{{'split', 'filename', 'sentences', ...}}]}}) "
            "nor a COCO captions file ({'images': [{'id', 'file_name'}], 'annotations': [{'image_id', 'caption'}]})."
        )
    if not image_ids:
        raise ValueError(f"No images in {path}: there is nothing to evaluate.")
    if limit is not None:
        image_ids, file_names, references = image_ids[:limit], file_names[:limit], references[:limit]
    images = None
    if image_root is not None:
        images = [os.path.join(image_root, file_name) for file_name in file_names]
        _check_files_exist(images, image_ids)
    logger.info("Eval set from %s: %d images, %d references", path, len(image_ids), sum(map(len, references)))
    return CaptionEvalSet(image_ids=image_ids, references=references, images=images)


def _read_karpathy_split(data: dict, split: str, path: Path) -> tuple[list, list[str], list[list[str]]]:
    image_ids, file_names, references = [], [], []
    for index, image in enumerate(data["images"]):
        missing = [key for key in ("split", "filename", "sentences") if key not in image]
        if missing:
            raise ValueError(
                f"{path}: images[{index}] has no {missing} key(s); is this a Karpathy split file?"
            )
        if image["split"] != split:
            continue
        image_id = image.get("cocoid", image.get("imgid"))  # COCO ids match the official annotation files
        if image_id is None:
            raise ValueError(f"{path}: images[{index}] has neither 'cocoid' nor 'imgid'.")
        image_ids.append(image_id)
        file_names.append(os.path.join(image.get("filepath") or "", image["filename"]))
        references.append([sentence["raw"] for sentence in image["sentences"]])
    if not image_ids:
        present = sorted({image["split"] for image in data["images"]})
        raise ValueError(f"No images of split {split!r} in {path}; splits present: {present}")
    return image_ids, file_names, references


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
    for image_id in image_ids:
        if not references[image_id]:
            raise ValueError(f"{path}: image id {image_id!r} has no caption in 'annotations'.")
    return image_ids, [image["file_name"] for image in data["images"]], [references[i] for i in image_ids]


def load_caption_dataset(
    name_or_path: str,
    split: str = "test",
    image_column: str | None = "image",
    captions_column: str = "captions",
    image_id_column: str | None = None,
    limit: int | None = None,
) -> CaptionEvalSet:
    """Load an eval set from a `datasets` dataset with one row per image (`data_capdec.load_eval_set` for one
    name-or-folder argument, as `evaluate_capdec.py` takes it).

    Args:
        name_or_path: a `save_to_disk` folder (a `DatasetDict` is indexed by `split`) or a name or folder for
            `datasets.load_dataset(name_or_path, split=split)`.
        image_column: the images (an `Image` feature, or paths that must exist); `None` to load references
            only. `processing.karpathy` eval sets keep paths in `image_path`.
        captions_column: a list of reference strings per row.
        image_id_column: the ids to report; `None` uses `image_id` when the dataset has it, else row numbers.
        limit: keep only the first `limit` rows.

    Example:
        >>> import datasets, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> datasets.Dataset.from_dict({"image_id": [5], "captions": [["a dog"]]}).save_to_disk(folder)
        >>> load_caption_dataset(folder, image_column=None).references_by_id()
        {5: ['a dog']}
    """
    from .data_capdec import load_eval_set

    is_saved = any(os.path.isfile(os.path.join(name_or_path, f)) for f in ("state.json", "dataset_dict.json"))
    return load_eval_set(
        eval_dataset_dir=name_or_path if is_saved else None,
        eval_dataset_name=None if is_saved else name_or_path,
        split=split,
        image_column=image_column,
        captions_column=captions_column,
        image_id_column=image_id_column,
        max_samples=limit,
        references_only=image_column is None,
    )


def _check_files_exist(paths: Sequence[str], image_ids: Sequence[ImageId]) -> None:
    # Checked before captioning starts, so a bad path fails in seconds rather than after an hour.
    for index, (image_path, image_id) in enumerate(zip(paths, image_ids, strict=True)):
        if not os.path.isfile(image_path):
            raise FileNotFoundError(f"Image {index} (image id {image_id!r}) does not exist: {image_path}")


def caption_images(
    model: Any,
    processor: Any,
    images: Sequence[Any],
    batch_size: int = 16,
    **generate_kwargs: Any,
) -> list[str]:
    """Caption `images` in batches with a tqdm progress bar; one caption per image, in order.

    Args:
        model: a `CapDecForConditionalGeneration` (anything with `generate(pixel_values=...)`, `device`,
            `dtype`).
        processor: a `CapDecProcessor` (`processor(images=...)["pixel_values"]`, `batch_decode`).
        images: paths, PIL images or a `datasets` image column; loaded one batch at a time, and an image that
            cannot be read raises `ImageLoadError` naming its index in `images`.
        generate_kwargs: passed to `model.generate`, e.g. `max_new_tokens=30, num_beams=5`.

    Example:
        >>> from modeling_capdec import CapDecForConditionalGeneration, CapDecProcessor
        >>> model = CapDecForConditionalGeneration.from_pretrained("outputs/capdec-coco")  # doctest: +SKIP
        >>> processor = CapDecProcessor.from_pretrained("outputs/capdec-coco")  # doctest: +SKIP
        >>> caption_images(model, processor, ["cat.jpg"], num_beams=5)  # doctest: +SKIP
        ['a cat sitting on a couch']
    """
    import torch

    from .processing_capdec import load_image

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    captions: list[str] = []
    with torch.inference_mode(), tqdm(total=len(images), desc="Captioning", unit="image") as progress:
        for start in range(0, len(images), batch_size):
            batch = [
                load_image(image, start + i) for i, image in enumerate(images[start : start + batch_size])
            ]
            pixel_values = processor(images=batch, return_tensors="pt")["pixel_values"]
            pixel_values = pixel_values.to(device=model.device, dtype=model.dtype)
            batch_captions = processor.batch_decode(
                model.generate(pixel_values=pixel_values, **generate_kwargs)
            )
            if len(batch_captions) != len(batch):
                # e.g. num_return_sequences > 1: captions would land on the wrong images.
                raise ValueError(
                    f"The model returned {len(batch_captions)} captions for a batch of {len(batch)} images "
                    f"(images {start}..{start + len(batch) - 1}); captioning needs exactly one per image."
                )
            captions.extend(batch_captions)
            progress.update(len(batch))
    return captions


def write_coco_results(predictions: Mapping[ImageId, str], path: str | os.PathLike) -> None:
    """Write `{image_id: caption}` as a COCO results file, `[{"image_id": ..., "caption": ...}, ...]`.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "predictions.json"
        >>> write_coco_results({42: "a dog"}, path)
        >>> read_coco_results(path)
        {42: 'a dog'}
    """
    results = [{"image_id": image_id, "caption": caption} for image_id, caption in predictions.items()]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1, ensure_ascii=False)


def read_coco_results(path: str | os.PathLike) -> dict[ImageId, str]:
    """Read a COCO results file into `{image_id: caption}`; a malformed entry or a repeated id raises, naming it.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "results.json"
        >>> _ = path.write_text('[{"image_id": 1, "caption": "a dog"}]')
        >>> read_coco_results(path)
        {1: 'a dog'}
    """
    with open(path, encoding="utf-8") as handle:
        results = json.load(handle)
    if not isinstance(results, list):
        raise ValueError(
            f"{path}: a COCO results file is a list of {{'image_id', 'caption'}}, got {type(results).__name__}."
        )
    predictions: dict[ImageId, str] = {}
    for index, entry in enumerate(results):
        if (
            not isinstance(entry, dict)
            or "image_id" not in entry
            or not isinstance(entry.get("caption"), str)
        ):
            raise ValueError(f"{path}: entry {index} is not {{'image_id': ..., 'caption': str}}: {entry!r}")
        if entry["image_id"] in predictions:
            raise ValueError(
                f"{path}: image id {entry['image_id']!r} has two captions (again at entry {index})."
            )
        predictions[entry["image_id"]] = entry["caption"]
    return predictions


__all__ = [
    "CaptionEvalSet",
    "caption_images",
    "load_annotations",
    "load_caption_dataset",
    "read_coco_results",
    "write_coco_results",
]
