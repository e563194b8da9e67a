"""The text memory of a CapDec model: CLIP text embeddings of training captions, stored with the weights, onto which
`generate(..., project_to_memory=True)` projects image embeddings (DeCap's idea; the projection itself is the
model's `project_to_text_memory`).

The memory is chosen at training time (`train_capdec.py --text_memory_size N`: a seeded sample of the distinct
captions left after cleaning) or attached to a saved folder afterwards with `attach_text_memory`.
"""

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .noise import TRAINING_NOISE_FILE, load_modality_map

logger = logging.getLogger(__name__)


def sample_memory_rows(num_rows: int, size: int, seed: int = 0) -> list[int]:
    """Which of `num_rows` candidates go into a memory of at most `size` rows: all of them when they fit, else a
    seeded sample without replacement, in increasing order (the same for the same arguments).

    Example:

    ```python
    >>> sample_memory_rows(3, 10), len(sample_memory_rows(1000, 10, seed=1))
    ([0, 1, 2], 10)
    ```
    """
    if size < 1:
        raise ValueError(f"The text memory size must be >= 1, got {size}.")
    if num_rows <= size:
        return list(range(num_rows))
    return sorted(np.random.default_rng(seed).choice(num_rows, size=size, replace=False).tolist())


def _first_of_each(keys: Sequence[Any]) -> list[int]:
    """Indices of the first occurrence of each distinct key, in order."""
    seen: set = set()
    first = []
    for index, key in enumerate(keys):
        if key not in seen:
            seen.add(key)
            first.append(index)
    return first


def _check_map_given(model: Any, modality_map: Any) -> None:
    if (getattr(model.config, "training_noise", None) or {}).get("modality_map") and modality_map is None:
        raise ValueError(
            "This model was trained on captions mapped by a measured modality map (--noise_map), which was not "
            f"given (a saved folder keeps it in {TRAINING_NOISE_FILE}; folders saved before it was kept have "
            "none): a memory of unmapped captions would not lie where its decoder was trained. Build the memory in "
            "the training run (--text_memory_size N)."
        )


def shifted_like_training(
    embeds: torch.Tensor, model: Any, modality_map: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    r"""Memory rows where the decoder was trained: a model trained with a modality offset (`--noise_offset`,
    `--modality_offset_file`; in `config.training_noise`) saw caption embeddings plus that offset, normalised again,
    so its memory holds them shifted the same way (and images are compared with those). A model trained with a
    modality map (`--noise_map`) saw $\hat t W + b$: the map `(W, b)` is not part of the model, so it is passed
    (`modality_map`: the training run's, or `noise.load_modality_map` of the saved folder); without it this raises.
    Unchanged otherwise.

    Example:

    ```python
    >>> model.config.training_noise = {"modality_offset": [0.0, 1.0]}  # doctest: +SKIP
    >>> shifted_like_training(torch.tensor([[1.0, 0.0]]), model)  # doctest: +SKIP
    tensor([[0.7071, 0.7071]])
    ```
    """
    _check_map_given(model, modality_map)
    offset = (getattr(model.config, "training_noise", None) or {}).get("modality_offset")
    if offset is None and modality_map is None:
        return embeds
    rows = embeds.float()
    if modality_map is not None:  # the map takes unit captions, as the collator's inject_noise gives it
        weight, bias = modality_map
        rows = torch.nn.functional.normalize(rows, dim=-1) @ weight.float() + bias.float()
    if offset is not None:
        rows = rows + torch.tensor(offset, dtype=torch.float32)
    return torch.nn.functional.normalize(rows, dim=-1)


@torch.no_grad()
def text_memory_from_captions(
    captions: Sequence[str],
    model: Any,
    processor: Any,
    size: int,
    seed: int = 0,
    batch_size: int = 256,
    device: Any = None,
    modality_map: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Normalised CLIP text embeddings `(rows, clip_projection_dim)` of at most `size` distinct `captions` (a seeded
    sample when there are more), embedded with the model's CLIP (and shifted by its training's modality offset, if
    any, or by `modality_map`: `shifted_like_training`).

    Example:

    ```python
    >>> memory = text_memory_from_captions(["a red circle", "a blue square", "a red circle"], model, processor, 10)
    >>> memory.shape[0]  # duplicates count once
    2
    ```
    """
    from .data import clip_on_device, embed_captions

    _check_map_given(model, modality_map)  # before embedding what could not be used
    texts = [caption.strip() for caption in captions if isinstance(caption, str) and caption.strip()]
    distinct = [texts[i] for i in _first_of_each(texts)]
    if not distinct:
        raise ValueError("No non-empty caption to build the text memory from.")
    chosen = [distinct[i] for i in sample_memory_rows(len(distinct), size, seed)]
    embeds = embed_captions(chosen, model, processor, batch_size, clip_on_device(model, device))
    return shifted_like_training(embeds, model, modality_map)


def text_memory_for_run(
    model: Any,
    processor: Any,
    train_dataset: Any,
    size: int,
    seed: int = 0,
    batch_size: int = 256,
    modality_map: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The memory of a training run, from the prepared (cleaned) training dataset: the `clip_embeds` already
    computed for a seeded sample of its distinct captions (by decoder tokens), or, when embedding on the fly, the
    `caption` texts embedded now; mapped by the run's `modality_map` if it has one (`--noise_map`). Stored in the
    model with `set_text_memory`, it is saved with the weights.

    Example:

    ```python
    >>> model.set_text_memory(text_memory_for_run(model, processor, train_dataset, size=50_000))  # doctest: +SKIP
    ```
    """
    if "clip_embeds" in train_dataset.column_names:
        distinct = _first_of_each([tuple(ids) for ids in train_dataset["input_ids"][:]])
        rows = [distinct[i] for i in sample_memory_rows(len(distinct), size, seed)]
        embeds = train_dataset.select(rows).with_format("torch", columns=["clip_embeds"])["clip_embeds"][:]
        return shifted_like_training(embeds.float(), model, modality_map)
    captions = train_dataset["caption"][:]
    return text_memory_from_captions(
        captions, model, processor, size, seed, batch_size, modality_map=modality_map
    )


def attach_text_memory(
    model_dir: str | os.PathLike,
    captions: Sequence[str],
    size: int = 50_000,
    output_dir: str | os.PathLike | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> Any:
    """Give a saved CapDec folder a text memory: embed at most `size` distinct `captions` (a seeded sample) with
    the folder's CLIP, store them in the model and save the folder again (to `output_dir`, default in place), so
    that `generate(..., project_to_memory=True)` and the pipeline's `project_to_memory=True` work where it is
    loaded. A model trained with `--noise_map` has its captions mapped by the map saved in the folder's
    `training_noise.safetensors`, as its training mapped them. Returns the model.

    Example:

    ```python
    >>> from modeling_capdec.training.data import load_dataset_source
    >>> captions = load_dataset_source("captions.jsonl")["caption"][:]  # doctest: +SKIP
    >>> model = attach_text_memory("outputs/capdec-coco", captions, size=50_000)  # doctest: +SKIP
    >>> model.config.text_memory_size  # doctest: +SKIP
    50000
    ```
    """
    from ..modeling_capdec import CapDecForConditionalGeneration
    from ..processing_capdec import CapDecProcessor

    model_dir = Path(model_dir)
    model = CapDecForConditionalGeneration.from_pretrained(model_dir)
    processor = CapDecProcessor.from_pretrained(model_dir)
    # --noise_map: the memory holds the captions mapped as in training, by the map saved with the folder
    modality_map = load_modality_map(model_dir)
    memory = text_memory_from_captions(
        captions, model, processor, size, seed, batch_size, modality_map=modality_map
    )
    model.set_text_memory(memory)
    output_dir = Path(output_dir) if output_dir is not None else model_dir
    model.save_pretrained(output_dir)
    if output_dir != model_dir:
        processor.save_pretrained(output_dir)
        if (model_dir / TRAINING_NOISE_FILE).is_file():
            shutil.copyfile(model_dir / TRAINING_NOISE_FILE, output_dir / TRAINING_NOISE_FILE)
    logger.info("Attached a text memory of %d rows to %s.", model.config.text_memory_size, output_dir)
    return model


__all__ = [
    "attach_text_memory",
    "sample_memory_rows",
    "shifted_like_training",
    "text_memory_for_run",
    "text_memory_from_captions",
]
