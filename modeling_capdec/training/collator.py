"""Training batches for CapDec: dynamic padding, caption labels and fresh CLIP-embedding noise every batch."""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from .noise import (
    EXAMPLE_ID_COLUMN,
    check_modality_map,
    check_noise_settings,
    check_noise_shape,
    example_noise_generator,
    inject_noise,
    sample_noise,
    shape_effective_rank,
)


def _as_tensor(values: Any, dtype: torch.dtype) -> torch.Tensor:
    # Rows arrive as Python lists, numpy arrays or tensors depending on the dataset's format.
    if isinstance(values, torch.Tensor):
        return values.to(dtype)
    return torch.as_tensor(np.asarray(values), dtype=dtype)


@dataclass
class CapDecDataCollator:
    r"""
    Collate CapDec training examples: pad the captions per batch and noise the CLIP embeddings.

    Each example holds `input_ids` (the caption in the decoder's vocabulary, ending with eos) and either
    `clip_embeds` (a precomputed normalised CLIP embedding) or, with `embed_on_the_fly=True`, `caption` (the
    text, CLIP-tokenised here and embedded by the model).

    Text mode (CapDec, Nukrai et al. 2022, Sec. 3) noises every embedding afresh in every batch:

    $$x' = \frac{\hat x + n + o}{\lVert \hat x + n + o \rVert_2}, \qquad n \sim \mathcal N(0, \epsilon I)$$

    with $\hat x$ the normalised CLIP text embedding, $\epsilon$ = `noise_variance` (std $\sqrt\epsilon$; 0.016 in
    the paper), $o$ the optional `modality_offset`; with `noise_type="uniform"` $n$ is uniform in the ball of
    radius $\sqrt\epsilon$. `noise_variance=0` and no offset or map leave the embeddings untouched. With
    `noise_shape` $A$ (`--noise_shape measured`) the Gaussian noise is $nA$, of covariance $\epsilon A^\top A$.
    With `modality_map` $(W, b)$ (`--noise_map`) $\hat x$ is first mapped to $\hat x W + b$. The formula is
    [`inject_noise`]'s.

    Supervised mode (`mode="supervised"`, the ClipCap reference) passes precomputed CLIP *image* embeddings
    through unchanged.

    Reproducibility: the noise of an example is drawn from [`example_noise_generator`]`(seed, epoch,
    example_id)`, so it is the same whatever the batch composition, the number of dataloader workers or
    processes, and after a resume. `epoch` is set by `training.trainer.CapDecNoiseCallback` at each epoch
    start. Examples without an `example_id` fall back to one generator seeded with `seed`, which
    reproduces a fixed sequence of calls but not a resumed run.

    Padding: to the batch's longest caption by default; rounded up to a multiple of `pad_to_multiple_of`; or, with
    `pad_to_buckets` (e.g. `(16, 24, 32, 48, 65)`), up to the smallest bucket that holds the longest caption, so
    that a compiled model (`--torch_compile`) sees a few shapes only and reuses their graphs. A batch longer than
    the largest bucket keeps its own length. Padding is masked (attention mask 0, labels -100), so neither option
    changes the loss.

    Output (`B` examples, `L` the padded length above):
    `input_ids`, `attention_mask`, `labels` `(B, L)` (labels are -100 on padding, found from each caption's
    length: padding and eos are the same GPT-2 token, and the final eos must stay a target so the model
    learns to stop), and `clip_embeds` `(B, d)` float32, already noised. With `embed_on_the_fly=True` the
    batch holds `clip_input_ids`, `clip_attention_mask` (and `example_id`) instead: `CapDecTrainer` embeds
    them with CLIP on the training device and noises them with this collator's `add_noise`, so the noise
    is drawn here in both cases and the model never adds any.

    Example:

    ```python
    >>> collator = CapDecDataCollator(processor, noise_variance=0.016, seed=0)
    >>> batch = collator([
    ...     {"input_ids": [31, 7, 0], "clip_embeds": [0.6, 0.8] + [0.0] * 14, "example_id": 0},
    ...     {"input_ids": [5, 0], "clip_embeds": [1.0] + [0.0] * 15, "example_id": 1},
    ... ])
    >>> batch["labels"].tolist(), batch["clip_embeds"].shape
    ([[31, 7, 0], [5, 0, -100]], torch.Size([2, 16]))
    ```
    """

    processor: Any
    noise_variance: float = 0.016
    noise_type: Literal["gaussian", "uniform"] = "gaussian"
    modality_offset: Sequence[float] | None = None
    noise_shape: torch.Tensor | None = None
    modality_map: tuple[torch.Tensor, torch.Tensor] | None = None
    mode: Literal["text", "supervised"] = "text"
    embed_on_the_fly: bool = False
    seed: int = 0
    epoch: int = 0
    pad_to_multiple_of: int | None = None
    pad_to_buckets: Sequence[int] | None = None
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in ("text", "supervised"):
            raise ValueError(f"mode must be 'text' or 'supervised', got {self.mode!r}.")
        check_noise_settings(self.noise_variance, self.noise_type)
        if self.modality_offset is not None and not all(map(math.isfinite, self.modality_offset)):
            raise ValueError("modality_offset holds a value that is not finite (inf or NaN).")
        if self.noise_shape is not None:
            self.noise_shape = torch.as_tensor(self.noise_shape, dtype=torch.float32)
            check_noise_shape(self.noise_shape, self.noise_shape.shape[-1], self.noise_type)
        if self.modality_map is not None:
            weight, bias = (torch.as_tensor(part, dtype=torch.float32) for part in self.modality_map)
            check_modality_map((weight, bias), weight.shape[-1])
            self.modality_map = (weight, bias)
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}.")
        if self.embed_on_the_fly and self.mode != "text":
            raise ValueError("embed_on_the_fly embeds caption text: it exists for mode='text' only.")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}.")
        if self.pad_to_buckets is not None:
            if self.pad_to_multiple_of is not None:
                raise ValueError("Give pad_to_multiple_of or pad_to_buckets, not both.")
            if not self.pad_to_buckets or any(int(bucket) < 1 for bucket in self.pad_to_buckets):
                raise ValueError(f"pad_to_buckets must be lengths >= 1, got {list(self.pad_to_buckets)}.")
            self.pad_to_buckets = tuple(sorted({int(bucket) for bucket in self.pad_to_buckets}))
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def adds_noise(self) -> bool:
        """Whether batches are noised at all (text mode with ε > 0, a modality offset or a modality map)."""
        return self.mode == "text" and (
            self.noise_variance > 0 or self.modality_offset is not None or self.modality_map is not None
        )

    def settings(self) -> dict[str, Any]:
        """The noise this collator draws, as plain values (recorded in the saved config and the model card)."""
        return {
            "mode": self.mode,
            "noise_variance": self.noise_variance,
            "noise_type": self.noise_type,
            "modality_offset": list(self.modality_offset) if self.modality_offset is not None else None,
            "noise_shape_effective_rank": None
            if self.noise_shape is None
            else round(shape_effective_rank(self.noise_shape), 2),
            "modality_map": None if self.modality_map is None else "measured",
            "seed": self.seed,
        }

    def set_epoch(self, epoch: int) -> None:
        """Start drawing the noise of `epoch` (called by `CapDecNoiseCallback` at each epoch start)."""
        self.epoch = int(epoch)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("Cannot collate an empty batch.")
        batch = self.pad_captions([feature["input_ids"] for feature in features])
        if self.embed_on_the_fly:
            captions = [self._get(feature, "caption", index) for index, feature in enumerate(features)]
            clip_inputs = self.processor(clip_text=captions, return_tensors="pt")
            batch["clip_input_ids"] = clip_inputs["clip_input_ids"]
            batch["clip_attention_mask"] = clip_inputs["clip_attention_mask"]
            example_ids = self._example_ids(features)
            if example_ids is not None:
                batch[EXAMPLE_ID_COLUMN] = torch.tensor(example_ids)
            return batch
        clip_embeds = torch.stack(
            [
                _as_tensor(self._get(feature, "clip_embeds", index), torch.float32)
                for index, feature in enumerate(features)
            ]
        )
        if self.adds_noise:
            clip_embeds = self.add_noise(clip_embeds, self._example_ids(features))
        batch["clip_embeds"] = clip_embeds
        return batch

    def pad_captions(self, sequences: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Right-pad caption ids to the batch's padded length (see the class docstring): `input_ids`,
        `attention_mask`, `labels`."""
        rows = [_as_tensor(ids, torch.long).reshape(-1) for ids in sequences]
        length = max(len(row) for row in rows)
        if self.pad_to_multiple_of:
            length = math.ceil(length / self.pad_to_multiple_of) * self.pad_to_multiple_of
        elif self.pad_to_buckets:
            length = next((bucket for bucket in self.pad_to_buckets if bucket >= length), length)
        pad_id = self.processor.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.processor.tokenizer.eos_token_id
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, : len(row)] = row
            attention_mask[index, : len(row)] = 1
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def add_noise(self, clip_embeds: torch.Tensor, example_ids: Sequence[int] | None = None) -> torch.Tensor:
        """Noise `(batch, d)` embeddings with this collator's ε, noise type and offset (see the class docstring).

        With `example_ids`, row `i` draws from `example_noise_generator(seed, epoch, example_ids[i])`;
        without, all rows draw from the collator's own generator.
        """
        if example_ids is None:
            return inject_noise(
                clip_embeds,
                self.noise_variance,
                self.noise_type,
                self.modality_offset,
                generator=self.generator,
                noise_shape=self.noise_shape,
                modality_map=self.modality_map,
            )
        if len(example_ids) != len(clip_embeds):
            raise ValueError(f"{len(example_ids)} example ids for {len(clip_embeds)} embeddings.")
        noise = None
        if self.noise_variance > 0:
            # Only the draws are per example; the arithmetic runs once on the whole batch.
            noise = torch.cat(
                [
                    sample_noise(
                        (1, clip_embeds.shape[-1]),
                        self.noise_variance,
                        self.noise_type,
                        generator=example_noise_generator(self.seed, self.epoch, example_id),
                    )
                    for example_id in example_ids
                ]
            )
        return inject_noise(
            clip_embeds,
            self.noise_variance,
            self.noise_type,
            self.modality_offset,
            noise=noise,
            noise_shape=self.noise_shape,
            modality_map=self.modality_map,
        )

    @staticmethod
    def _example_ids(features: list[dict[str, Any]]) -> list[int] | None:
        if all(EXAMPLE_ID_COLUMN in feature for feature in features):
            return [int(feature[EXAMPLE_ID_COLUMN]) for feature in features]
        return None

    def _get(self, feature: dict[str, Any], key: str, index: int) -> Any:
        if key not in feature:
            hint = {
                "clip_embeds": "precompute them (training.data.prepare_training_dataset) or set embed_on_the_fly=True",
                "caption": "embed_on_the_fly=True needs the caption text in the dataset",
            }[key]
            raise KeyError(f"Example {index} of the batch has no {key!r} (keys: {sorted(feature)}): {hint}.")
        return feature[key]


__all__ = ["CapDecDataCollator"]
