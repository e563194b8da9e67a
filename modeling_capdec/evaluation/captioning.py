"""Batch captioning of an eval set, and predictions in the COCO results format
(`[{"image_id": ..., "caption": ...}, ...]`)."""

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..pipeline_capdec import (
    candidate_generate_kwargs,
    check_rerank_tolerance,
    clip_rerank_order,
    clip_scores_of_captions,
)
from ..processing_capdec import load_image
from .eval_sets import ImageId

logger = logging.getLogger(__name__)


def caption_images(
    model: Any,
    processor: Any,
    images: Sequence[Any],
    batch_size: int = 16,
    clip_rerank: int | None = None,
    clip_rerank_tolerance: float = 0.0,
    **generate_kwargs: Any,
) -> list[str]:
    """Caption `images` in batches with a tqdm progress bar; one caption per image, in order.

    Args:
        model: a `CapDecForConditionalGeneration` (anything with `generate(pixel_values=...)`, `device`,
            `dtype`).
        processor: a `CapDecProcessor` (`processor(images=...)["pixel_values"]`, `batch_decode`).
        images: paths, PIL images or a `datasets` image column; loaded one batch at a time, and an image that
            cannot be read raises `ImageLoadError` naming its index in `images`.
        clip_rerank: K decodes K candidates per image (`num_beams=K` unless set, or K samples) and keeps the one
            CLIP finds nearest the image, as the pipeline's `clip_rerank` (`model.clip_scores`).
        clip_rerank_tolerance: with `clip_rerank`, keep the decoder's first candidate (beam search: the most
            probable) among those within this CLIP cosine of the best, as the pipeline's (`clip_rerank_order`).
        generate_kwargs: passed to `model.generate`, e.g. `max_new_tokens=30, num_beams=5`.

    Example:
        >>> from modeling_capdec import CapDecForConditionalGeneration, CapDecProcessor
        >>> model = CapDecForConditionalGeneration.from_pretrained("outputs/capdec-coco")  # doctest: +SKIP
        >>> processor = CapDecProcessor.from_pretrained("outputs/capdec-coco")  # doctest: +SKIP
        >>> caption_images(model, processor, ["cat.jpg"], num_beams=5)  # doctest: +SKIP
        ['a cat sitting on a couch']
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    check_rerank_tolerance(clip_rerank_tolerance, clip_rerank)
    if clip_rerank is not None:
        generate_kwargs = dict(generate_kwargs)
        if candidate_generate_kwargs(generate_kwargs, clip_rerank) != 1:
            raise ValueError("caption_images keeps one caption per image: leave num_return_sequences unset.")
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
            if clip_rerank is not None and len(batch_captions) == clip_rerank * len(batch):
                scores = clip_scores_of_captions(model, processor, pixel_values, batch_captions)
                best = clip_rerank_order(scores.cpu(), clip_rerank_tolerance)[:, 0]
                batch_captions = [
                    batch_captions[row * clip_rerank + b] for row, b in enumerate(best.tolist())
                ]
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


__all__ = ["caption_images", "read_coco_results", "write_coco_results"]
