r"""Choosing the noise variance ε from data, before training (`train_capdec.py --noise_variance auto`, and the
`capdec-estimate-noise` command, which only reports).

The rule: a unit vector $\hat x$ in $d$ dimensions plus $n \sim \mathcal N(0, \epsilon
I)$, normalised again, keeps a cosine of about $1/\sqrt{1 + d\epsilon}$ with $\hat x$. Noise that moves a caption's
embedding as far as an image is from its own caption (cosine $c$) therefore has

$$\epsilon = \frac{1/c^2 - 1}{d}.$$

The estimators differ only in how they get $c$ without image-caption pairs:

- `pseudo_pairs` (unlabelled target-domain images): each image's best-matching corpus caption stands in for its own
  caption; $c$ is the mean of those best cosines.
- `centroids` (unlabelled images): the image cloud is taken as the caption cloud shifted by the gap
  $g = \mu_I - \mu_T$ plus independent spread; for unit vectors $E\lVert i - t\rVert^2 = \lVert g\rVert^2 +
  \max(0, \lVert\mu_T\rVert^2 - \lVert\mu_I\rVert^2)$ and $c = 1 - E\lVert i - t\rVert^2 / 2$.
- `caption_groups` (corpus only, where captions come in groups of one image or scene): two captions of one scene,
  each the scene's embedding plus noise, have cosine $c_2 \approx c^2$, with $c$ a caption's cosine to its scene;
  $c = \sqrt{\bar c_2}$ from the mean within-group pairwise cosine $\bar c_2$ (then $\epsilon$ is the captions'
  spread around their scene).

With `shift_by_offset` (`--noise_offset`) training also adds the measured modality offset $o = \mu_I - \mu_T$ to
every caption (as the authors' `--add_modality_offset` does with theirs), so the noise only has to cover what is
left: `pseudo_pairs` then pairs each image with its best *shifted* caption $s = \hat t + o$ (cosine $c$), and since
the collator noises $s$, of norm $m$ below 1, the same rule becomes $\epsilon = \overline{m^2}\,(1/c^2 - 1)/d$.

With `measure_shape` (`--noise_shape measured`) the noise also takes the *shape* of the gap: the covariance
$\Sigma$ of each image's residual orthogonal to its pseudo-paired caption, $r = i - (i\cdot\hat s)\,\hat s$. The
noise becomes $nA$ with $A = \Sigma^{1/2}$ scaled to $\lVert A\rVert_F^2 = d$: the same expected length as
isotropic noise of variance ε, along the few directions in which images actually differ from their captions (on
the demo's world, an effective rank of about 11 of 512).

With `map_captions` (`--noise_map`) the offset becomes a measured affine map: each caption $\hat t$ becomes
$\hat t W + b$, fitted by least squares on the pseudo-pairs (images and their best shifted captions), with a ridge
penalty chosen by leave-one-out error (`fit_modality_map`). An offset moves every caption by the same vector; the
map also turns and rescales the directions in which the modalities differ (on the demo's world the cosine between
an image and its own mapped caption is about 0.95, against 0.57 with the offset alone). ε then covers what the
map leaves: $c$ is the mean cosine between each image and its *leave-one-out* mapped pseudo-caption (the fit
without that pair, so that the map's overfitting does not hide any gap), and the noise is scaled by the mapped
captions' $\overline{m^2}$ as with the offset; `measure_shape` takes the shape from the same leave-one-out residuals.

The functions on embedding tensors are pure (testable on synthetic clouds); `estimate_noise_from_data` embeds a
corpus and an image folder with the run's CLIP. Which estimator predicts the best ε is measured on the shapes world
by `python -m demo.estimate_noise_study` (README, "Choosing ε from data").
"""

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .noise import shape_effective_rank

logger = logging.getLogger(__name__)

ESTIMATORS = ("pseudo_pairs", "centroids", "caption_groups")
# With images the study's choice; without, the one estimator that needs none.
DEFAULT_IMAGE_ESTIMATOR = "pseudo_pairs"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class NoiseEstimate:
    """An estimated ε and what it was computed from (recorded in config.json's `training_noise` and the card).

    `cosine` is the statistic $c$ of the rule $\\epsilon = (1/c^2 - 1)/d$; `modality_offset` (mean image embedding
    minus mean caption embedding, normalised embeddings) is there when images were given; `shifted` says that ε
    was measured around the captions shifted by it, which training then adds (`--noise_offset`); `noise_shape`
    (`--noise_shape measured`) is the `(d, d)` matrix that shapes the noise like the images' residuals;
    `modality_map` (`--noise_map`) the affine map that training applies to the captions, ε measured around it.
    """

    estimator: str
    noise_variance: float
    cosine: float
    dim: int
    num_captions: int
    num_images: int = 0
    num_groups: int = 0
    modality_offset: list[float] | None = field(default=None, repr=False)
    shifted: bool = False
    noise_shape: torch.Tensor | None = field(default=None, repr=False)
    modality_map: "ModalityMap | None" = field(default=None, repr=False)

    def summary(self) -> str:
        """One line: the estimate and its inputs.

        Example:

        ```python
        >>> NoiseEstimate("pseudo_pairs", 0.0021, 0.937, 64, 20000, num_images=300).summary()
        'ε = 0.0021 (pseudo_pairs: cosine 0.9370, d = 64, 20000 captions, 300 images)'
        ```
        """
        counts = [f"{self.num_captions} captions"]
        if self.num_images:
            counts.append(f"{self.num_images} images")
        if self.num_groups:
            counts.append(f"{self.num_groups} caption groups")
        if self.shifted:
            counts.append(
                f"captions shifted by the modality offset, norm {np.linalg.norm(self.modality_offset):.4f}"
            )
        if self.modality_map is not None:
            counts.append(
                f"captions mapped by the measured modality map (ridge {self.modality_map.ridge:.3g})"
            )
        if self.noise_shape is not None:
            counts.append(
                f"noise shaped like the residuals, effective rank {shape_effective_rank(self.noise_shape):.1f}"
            )
        return (
            f"ε = {self.noise_variance:.4g} ({self.estimator}: cosine {self.cosine:.4f}, d = {self.dim}, "
            + ", ".join(counts)
            + ")"
        )

    def as_record(self) -> dict[str, Any]:
        """Plain values for config.json (the offset as its norm; the vector itself is written with
        `--modality_offset_output` by the command, never into the config)."""
        record = asdict(self)
        offset = record.pop("modality_offset")
        record["modality_offset_norm"] = float(np.linalg.norm(offset)) if offset is not None else None
        shape = record.pop("noise_shape")
        record["noise_shape_effective_rank"] = shape_effective_rank(shape) if shape is not None else None
        mapping = record.pop("modality_map")
        record["modality_map_ridge"] = mapping["ridge"] if mapping is not None else None
        return record


@dataclass
class ModalityMap:
    r"""An affine map from normalised caption embeddings towards image embeddings, $\hat t \mapsto \hat t W + b$
    (`fit_modality_map`); `ridge` is the penalty it was fitted with. Training applies it to every caption embedding
    before the noise (`--noise_map`); a model trained so does not need it at inference, where images come as
    they are.

    Example:

    ```python
    >>> import torch
    >>> mapping = ModalityMap(weight=2 * torch.eye(2), bias=torch.tensor([0.0, 1.0]), ridge=0.1)
    >>> mapping(torch.tensor([[1.0, 0.0]]))
    tensor([[2., 1.]])
    ```
    """

    weight: torch.Tensor
    bias: torch.Tensor
    ridge: float

    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        return embeds @ self.weight.to(embeds) + self.bias.to(embeds)

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(weight, bias)` in float32, as the collator and `inject_noise` take them."""
        return self.weight.float(), self.bias.float()


def variance_from_cosine(cosine: float, dim: int) -> float:
    """The noise variance whose re-normalised noise keeps cosine `cosine` with the clean embedding:
    $(1/c^2 - 1)/d$.

    Example:

    ```python
    >>> round(variance_from_cosine(0.3, 640), 4)  # real CLIP RN50x4: the paper's 0.016
    0.0158
    ```
    """
    if not (0 < cosine <= 1):
        raise ValueError(
            f"The cosine statistic must be in (0, 1] to give a noise variance, got {cosine:.4f}: the two "
            "embedding clouds share no direction (are they embeddings of the same CLIP?)."
        )
    if dim < 1:
        raise ValueError(f"The embedding size must be >= 1, got {dim}.")
    return (1.0 / cosine**2 - 1.0) / dim


def _unit_rows(embeds: torch.Tensor, name: str) -> torch.Tensor:
    if embeds.dim() != 2 or embeds.shape[0] == 0:
        raise ValueError(f"{name} must have shape (rows >= 1, dim), got {tuple(embeds.shape)}.")
    if not bool(torch.isfinite(embeds).all()):
        raise ValueError(f"{name} hold values that are not finite (inf or NaN).")
    return F.normalize(embeds.double(), dim=-1)


def _unit_pair(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both clouds checked (one CLIP's space, finite rows) and normalised: `(images, texts)`."""
    if image_embeds.shape[-1] != text_embeds.shape[-1]:
        raise ValueError(
            f"The image embeddings have {image_embeds.shape[-1]} dimensions and the caption embeddings "
            f"{text_embeds.shape[-1]}: they must come from one CLIP."
        )
    return _unit_rows(image_embeds, "image_embeds"), _unit_rows(text_embeds, "text_embeds")


def pseudo_pair_cosine(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, chunk_size: int = 1024
) -> float:
    """Mean over images of the cosine to the most similar caption: each unlabelled image's best-matching corpus
    caption stands in for its own caption. `(images, d)` and `(captions, d)` embeddings, normalised here.

    Example:

    ```python
    >>> import torch
    >>> text = torch.eye(3)
    >>> round(pseudo_pair_cosine(torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.0, 1.0]]), text), 4)
    0.9975
    ```
    """
    images, texts = _unit_pair(image_embeds, text_embeds)
    return float(_best_matches(images, texts, chunk_size)[0].mean())


def _best_matches(
    images: torch.Tensor, texts: torch.Tensor, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each unit image's best cosine with the unit captions and that caption's index (the pseudo-pairs)."""
    values, indices = [], []
    for start in range(0, len(images), chunk_size):  # (chunk, captions) similarities at a time
        best = (images[start : start + chunk_size] @ texts.T).max(dim=-1)
        values.append(best.values)
        indices.append(best.indices)
    return torch.cat(values), torch.cat(indices)


def residual_noise_shape(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    r"""The `(d, d)` noise shape $A = \Sigma^{1/2}$, scaled to $\lVert A\rVert_F^2 = d$, of the residuals of each
    image orthogonal to its best-matching caption (the pseudo-pairs of `pseudo_pair_cosine`), float32.

    Example:

    ```python
    >>> import torch
    >>> text = torch.eye(4)
    >>> images = torch.tensor([[1.0, 0.0, 0.0, 0.3], [0.0, 1.0, 0.0, -0.3]])  # both off along the last axis
    >>> residual_noise_shape(images, text).diagonal()
    tensor([0., 0., 0., 2.])
    ```
    """
    images, texts = _unit_pair(image_embeds, text_embeds)
    return _residual_shape(images, texts[_best_matches(images, texts, chunk_size)[1]])


def _residual_shape(images: torch.Tensor, paired: torch.Tensor) -> torch.Tensor:
    r"""The scaled $\Sigma^{1/2}$ of `residual_noise_shape` for unit images and their unit paired captions."""
    residuals = images - paired * (images * paired).sum(dim=-1, keepdim=True)
    covariance = residuals.T @ residuals / len(residuals)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    root = eigenvectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T
    scale = float(root.pow(2).sum() / root.shape[0]) ** 0.5
    if scale == 0:
        raise ValueError(
            "Every image coincides with a caption: there is no residual to shape the noise with."
        )
    return (root / scale).float()


def centroid_cosine(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> float:
    r"""The matched image-caption cosine implied by the two clouds' centroids, without pairs: images as the
    captions shifted by $g = \mu_I - \mu_T$ plus independent spread, so (unit vectors, $\operatorname{tr}\Sigma =
    1 - \lVert\mu\rVert^2$) $E\lVert i - t\rVert^2 = \lVert g\rVert^2 + \max(0, \lVert\mu_T\rVert^2 -
    \lVert\mu_I\rVert^2)$ and $c = 1 - E\lVert i - t\rVert^2/2$.

    Example:

    ```python
    >>> import torch
    >>> text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> centroid_cosine(text, text)  # the same cloud: no gap
    1.0
    ```
    """
    images, texts = _unit_pair(image_embeds, text_embeds)
    image_mean, text_mean = images.mean(dim=0), texts.mean(dim=0)
    gap = float((image_mean - text_mean).pow(2).sum())
    extra_spread = max(0.0, float(text_mean.pow(2).sum() - image_mean.pow(2).sum()))
    return 1.0 - (gap + extra_spread) / 2.0


def caption_group_cosine(text_embeds: torch.Tensor, group_ids: Sequence[Any]) -> tuple[float, int]:
    """A caption's cosine to its scene, from captions that come in groups (several captions of one image or
    scene): the square root of the mean cosine between two captions of one group, over all such pairs.
    Returns `(cosine, number of groups with at least two captions)`.

    Example:

    ```python
    >>> import torch
    >>> text = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    >>> cosine, groups = caption_group_cosine(text, ["a", "a", "b"])
    >>> round(cosine ** 2, 4), groups  # the one pair of group "a"
    (0.6, 1)
    ```
    """
    texts = _unit_rows(text_embeds, "text_embeds")
    if len(group_ids) != len(texts):
        raise ValueError(f"{len(group_ids)} group ids for {len(texts)} caption embeddings.")
    keys: dict[Any, int] = {}
    index = torch.tensor([keys.setdefault(key, len(keys)) for key in group_ids])
    sums = torch.zeros(len(keys), texts.shape[1], dtype=texts.dtype).index_add_(0, index, texts)
    sizes = torch.bincount(index, minlength=len(keys)).to(texts.dtype)
    # Over a group of n unit vectors, the sum of pairwise cosines is (|Σ t|² - n) / 2, over n(n-1)/2 pairs.
    pairs = sizes * (sizes - 1)
    if float(pairs.sum()) == 0:
        raise ValueError(
            "No group holds two captions: caption_groups needs several captions per image or scene (a list "
            "of captions per row, or --noise_group_column naming an image or scene id)."
        )
    mean_pair_cosine = float((sums.pow(2).sum(dim=-1) - sizes).sum() / pairs.sum())
    if mean_pair_cosine <= 0:
        raise ValueError(
            f"Captions of one group have a mean cosine of {mean_pair_cosine:.4f}: the groups do not look like "
            "captions of one image or scene."
        )
    return math.sqrt(min(1.0, mean_pair_cosine)), int((sizes > 1).sum())


def modality_offset(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> list[float]:
    """The modality offset: mean normalised image embedding minus mean normalised caption embedding (what
    `--modality_offset_file` adds to caption embeddings in training).

    Example:

    ```python
    >>> import torch
    >>> modality_offset(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]))
    [-1.0, 1.0]
    ```
    """
    images, texts = _unit_pair(image_embeds, text_embeds)
    return (images.mean(dim=0) - texts.mean(dim=0)).tolist()


# Ridge penalties tried by `fit_modality_map`, as multiples of the pseudo-captions' mean variance per direction
# (tr(XᵀX)/d of the centred inputs), so that the grid does not depend on the number of pairs or on d.
RIDGE_SCALES = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def fit_modality_map(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    chunk_size: int = 1024,
    ridge_scales: Sequence[float] = RIDGE_SCALES,
) -> tuple[ModalityMap, torch.Tensor]:
    r"""Fit the affine map $\hat t \mapsto \hat t W + b$ that takes captions to images, from unlabelled images:
    each image is paired with its best-matching caption after the modality offset (the pseudo-pairs of
    `shift_by_offset`), and $W, b$ solve ridge regression of the images on their pseudo-captions. The penalty is the
    one of `ridge_scales` (times the inputs' mean variance per direction) with the lowest leave-one-out error,
    computed in closed form from the leverages ($e_i / (1 - h_{ii})$, exact for ridge regression with an
    unpenalised intercept).

    Returns the map and, for every image, its leave-one-out prediction: the map fitted without that pair, applied
    to its pseudo-caption (what the gap looks like to a caption the map has not seen).

    Example:

    ```python
    >>> import torch
    >>> from torch.nn.functional import cosine_similarity, normalize
    >>> generator = torch.Generator().manual_seed(0)
    >>> text = normalize(torch.randn(400, 16, generator=generator), dim=-1)
    >>> turn = torch.eye(16) + 0.3 * torch.randn(16, 16, generator=generator)
    >>> images = normalize(text[:300] @ turn + 0.3, dim=-1)  # the first 300 captions' images: turned and shifted
    >>> mapping, held_out = fit_modality_map(images, text)
    >>> offset = images.mean(dim=0) - text.mean(dim=0)  # the offset alone, against the map (leave-one-out)
    >>> [round(float(cosine_similarity(guess.float(), images).mean()), 2) for guess in (text[:300] + offset, held_out)]
    [0.76, 0.89]
    ```
    """
    images, texts = _unit_pair(image_embeds, text_embeds)
    shifted = F.normalize(texts + (images.mean(dim=0) - texts.mean(dim=0)), dim=-1)
    inputs = texts[_best_matches(images, shifted, chunk_size)[1]]
    input_mean, target_mean = inputs.mean(dim=0), images.mean(dim=0)
    x, y = inputs - input_mean, images - target_mean
    # One eigendecomposition serves every penalty: (XᵀX + λI)⁻¹ = V diag(1/(e + λ)) Vᵀ.
    eigenvalues, eigenvectors = torch.linalg.eigh(x.T @ x)
    eigenvalues = eigenvalues.clamp(min=0)
    rotated_inputs, rotated_cross = x @ eigenvectors, eigenvectors.T @ (x.T @ y)
    mean_variance = float(eigenvalues.sum()) / x.shape[1]
    if mean_variance == 0:
        raise ValueError(
            f"All {len(images)} images have the same best-matching caption: a modality map needs images of "
            "varied content, as the corpus describes it."
        )
    best = None
    for scale in ridge_scales:
        ridge = scale * mean_variance
        inverse = 1.0 / (eigenvalues + ridge)
        weight = eigenvectors @ (inverse[:, None] * rotated_cross)
        # The leverage of pair i: its share of its own prediction, 1/n for the (unpenalised) intercept.
        leverage = 1.0 / len(x) + (rotated_inputs.pow(2) * inverse).sum(dim=-1)
        held_out_residuals = (y - x @ weight) / (1.0 - leverage).clamp(min=1e-6)[:, None]
        error = float(held_out_residuals.pow(2).sum(dim=-1).mean())
        if best is None or error < best[0]:
            best = (error, ridge, weight, held_out_residuals)
    _, ridge, weight, held_out_residuals = best
    mapping = ModalityMap(weight=weight, bias=target_mean - input_mean @ weight, ridge=ridge)
    return mapping, images - held_out_residuals


def estimate_noise(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor | None = None,
    group_ids: Sequence[Any] | None = None,
    estimator: str | None = None,
    shift_by_offset: bool = False,
    measure_shape: bool = False,
    map_captions: bool = False,
) -> NoiseEstimate:
    """ε from CLIP embeddings of the training captions `(captions, d)` and, optionally, of unlabelled
    target-domain images `(images, d)` and a group id per caption (captions of one image or scene).

    `estimator` is one of `ESTIMATORS`; by default `pseudo_pairs` when images are given, else `caption_groups`.
    `shift_by_offset` (`pseudo_pairs` only) measures ε around the captions shifted by the modality offset, for a
    training that adds it; `measure_shape` (`pseudo_pairs` only) also measures the noise shape from the same
    pseudo-pairs; `map_captions` (`pseudo_pairs` only, instead of the shift) fits the modality map and measures ε
    (and the shape) around the mapped captions (module docstring).

    Example:

    ```python
    >>> import torch
    >>> generator = torch.Generator().manual_seed(0)
    >>> text = torch.nn.functional.normalize(torch.randn(500, 64, generator=generator), dim=-1)
    >>> images = text[:200] + torch.randn(200, 64, generator=generator) * 0.002 ** 0.5  # ε = 0.002
    >>> estimate = estimate_noise(text, images)
    >>> estimate.estimator, round(estimate.noise_variance, 3)
    ('pseudo_pairs', 0.002)
    ```
    """
    if estimator is None:
        estimator = DEFAULT_IMAGE_ESTIMATOR if image_embeds is not None else "caption_groups"
    if estimator not in ESTIMATORS:
        raise ValueError(f"Unknown noise estimator {estimator!r}: choose one of {list(ESTIMATORS)}.")
    if shift_by_offset and image_embeds is None:
        raise ValueError(
            "Shifting the captions by the modality offset (--noise_offset) measures it on unlabelled images: give "
            "a folder of them (--noise_images)."
        )
    if shift_by_offset and estimator != "pseudo_pairs":
        raise ValueError(
            f"Shifting the captions by the modality offset (--noise_offset) needs the pseudo_pairs estimator, got "
            f"{estimator}: after the shift the centroids coincide, and caption_groups sees no images."
        )
    if map_captions and (image_embeds is None or estimator != "pseudo_pairs" or shift_by_offset):
        raise ValueError(
            "Mapping the captions (--noise_map) fits the map on unlabelled images and their best-matching captions: "
            f"it needs --noise_images and the pseudo_pairs estimator (got {estimator}), and replaces "
            "--noise_offset (the map includes the offset)."
        )
    if measure_shape and (image_embeds is None or estimator != "pseudo_pairs"):
        raise ValueError(
            "Measuring the noise shape (--noise_shape measured) compares unlabelled images with their "
            f"best-matching captions: it needs --noise_images and the pseudo_pairs estimator (got {estimator})."
        )
    if estimator != "caption_groups" and image_embeds is None:
        raise ValueError(
            f"The {estimator} estimator compares images with captions: give a folder of unlabelled "
            "target-domain images (--noise_images), or use --noise_estimator caption_groups."
        )
    if estimator == "caption_groups" and group_ids is None:
        raise ValueError(
            "The caption_groups estimator needs captions grouped by image or scene: a list of captions per row, "
            "or --noise_group_column naming an image or scene id column."
        )
    num_groups = 0
    dim = text_embeds.shape[-1]
    offset = modality_offset(image_embeds, text_embeds) if image_embeds is not None else None
    captions, norm_sq = text_embeds, 1.0
    if shift_by_offset:  # the collator noises t + o, of norm m: the rule's ε scales with m²
        captions = _unit_rows(text_embeds, "text_embeds") + torch.tensor(offset, dtype=torch.float64)
        norm_sq = float(captions.pow(2).sum(dim=-1).mean())
    mapping, noise_shape = None, None
    if map_captions:  # the collator noises t̂W + b: ε and the shape from the leave-one-out predictions
        mapping, held_out = fit_modality_map(image_embeds, text_embeds)
        images = _unit_rows(image_embeds, "image_embeds")
        norm_sq = float(mapping(_unit_rows(text_embeds, "text_embeds")).pow(2).sum(dim=-1).mean())
        cosine = float(F.cosine_similarity(images, held_out, dim=-1).mean())
        if measure_shape:
            noise_shape = _residual_shape(images, F.normalize(held_out, dim=-1))
    elif estimator == "pseudo_pairs":
        cosine = pseudo_pair_cosine(image_embeds, captions)
        if measure_shape:
            noise_shape = residual_noise_shape(image_embeds, captions)
    elif estimator == "centroids":
        cosine = centroid_cosine(image_embeds, text_embeds)
    else:
        cosine, num_groups = caption_group_cosine(text_embeds, group_ids)
    return NoiseEstimate(
        estimator=estimator,
        noise_variance=norm_sq * variance_from_cosine(cosine, dim),
        cosine=cosine,
        dim=dim,
        num_captions=text_embeds.shape[0],
        num_images=image_embeds.shape[0] if image_embeds is not None else 0,
        num_groups=num_groups,
        modality_offset=offset,
        shifted=shift_by_offset,
        noise_shape=noise_shape,
        modality_map=mapping,
    )


# -- the thin layer: a corpus and an image folder, embedded with the run's CLIP ---------------------------------
def corpus_caption_groups(
    corpus: Any,
    caption_column: str = "caption",
    group_column: str | None = None,
    max_captions: int | None = 20_000,
    seed: int = 0,
) -> tuple[list[str], list[Any]]:
    """The captions of a corpus (a `datasets.Dataset` or a list of rows) and a group id per caption: the row's
    `group_column` value, or the row itself when it holds a list of captions. Empty or non-text captions are
    skipped. With more than `max_captions` captions, whole groups are drawn at random (seeded) until that many.

    Example:

    ```python
    >>> rows = {"caption": [["a dog", "a brown dog"], ["a cat"]]}
    >>> corpus_caption_groups(rows)
    (['a dog', 'a brown dog', 'a cat'], [0, 0, 1])
    ```
    """
    is_dataset = hasattr(corpus, "column_names")
    columns = corpus.column_names if is_dataset else list(corpus)
    for name in (caption_column, group_column):
        if name is not None and name not in columns:
            raise ValueError(f"The corpus has no column {name!r}; its columns are {columns}.")

    def column(name: str) -> list[Any]:
        return corpus[name][:] if is_dataset else list(corpus[name])

    keys = column(group_column) if group_column else None
    groups: dict[Any, list[str]] = {}
    for row, captions in enumerate(column(caption_column)):
        key = row if keys is None else json.dumps(keys[row], sort_keys=True, default=str)
        texts = captions if isinstance(captions, (list, tuple)) else [captions]
        groups.setdefault(key, []).extend(t.strip() for t in texts if isinstance(t, str) and t.strip())
    order = list(groups)
    total = sum(len(texts) for texts in groups.values())
    if max_captions is not None and total > max_captions:
        order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    captions, group_ids = [], []
    for number, key in enumerate(order):
        if max_captions is not None and len(captions) >= max_captions:
            break
        captions.extend(groups[key])
        group_ids.extend([number] * len(groups[key]))
    if not captions:
        raise ValueError(f"The corpus column {caption_column!r} holds no non-empty caption.")
    return captions, group_ids


def image_folder_files(folder: str | os.PathLike, max_images: int | None = None, seed: int = 0) -> list[Path]:
    """The image files under `folder` (recursively, by suffix: jpg, png, ...), sorted; with more than
    `max_images`, a seeded random sample of that many (in sorted order).

    Example:

    ```python
    >>> image_folder_files("unlabelled_photos/", max_images=1000)  # doctest: +SKIP
    [PosixPath('unlabelled_photos/0001.jpg'), ...]
    ```
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
    if max_images is not None and len(files) > max_images:
        chosen = np.random.default_rng(seed).choice(len(files), size=max_images, replace=False)
        files = [files[i] for i in sorted(chosen)]
    return files


@torch.no_grad()
def embed_images(
    images: Sequence[Any], model: Any, processor: Any, batch_size: int = 64, device: Any = None
) -> torch.Tensor:
    """Normalised CLIP image embeddings `(len(images), d)` float32 on the CPU of paths or PIL images; a file that
    cannot be read raises `ImageLoadError` naming its index.

    Example:

    ```python
    >>> embed_images(["a.jpg", "b.png"], model, processor).shape  # doctest: +SKIP
    torch.Size([2, 512])
    ```
    """
    from ..processing_capdec import load_image
    from .data import clip_on_device

    device = clip_on_device(model, device)
    rows = []
    for start in range(0, len(images), batch_size):
        batch = [load_image(image, start + i) for i, image in enumerate(images[start : start + batch_size])]
        pixel_values = processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
        rows.append(model.get_image_embeds(pixel_values, normalize=True).float().cpu())
    return torch.cat(rows)


def embed_for_estimate(
    model: Any,
    processor: Any,
    corpus: Any,
    caption_column: str = "caption",
    image_folder: str | os.PathLike | None = None,
    group_column: str | None = None,
    max_captions: int | None = 20_000,
    max_images: int | None = 2_000,
    batch_size: int = 256,
    device: Any = None,
    seed: int = 0,
) -> tuple[torch.Tensor, list[Any], torch.Tensor | None]:
    """What the estimators read, embedded with the model's CLIP: `(caption embeddings, group ids, image embeddings
    or None)` for at most `max_captions` captions (whole groups) and `max_images` images, sampled with `seed`.

    Example:

    ```python
    >>> text_embeds, group_ids, image_embeds = embed_for_estimate(model, processor, corpus, image_folder="photos/")  # doctest: +SKIP
    ```
    """
    from .data import clip_on_device, embed_captions

    device = clip_on_device(model, device)
    captions, group_ids = corpus_caption_groups(corpus, caption_column, group_column, max_captions, seed)
    text_embeds = embed_captions(captions, model, processor, batch_size, device)
    image_embeds = None
    if image_folder is not None:
        files = image_folder_files(image_folder, max_images, seed)
        image_embeds = embed_images(files, model, processor, batch_size, device)
    return text_embeds, group_ids, image_embeds


def estimate_noise_from_data(
    model: Any,
    processor: Any,
    corpus: Any,
    caption_column: str = "caption",
    image_folder: str | os.PathLike | None = None,
    group_column: str | None = None,
    estimator: str | None = None,
    shift_by_offset: bool = False,
    measure_shape: bool = False,
    map_captions: bool = False,
    **embedding_kwargs: Any,
) -> NoiseEstimate:
    """[`estimate_noise`] on a caption corpus and (optionally) a folder of unlabelled target-domain images,
    embedded with the model's CLIP ([`embed_for_estimate`], whose `max_captions`, `max_images`, `batch_size`,
    `device` and `seed` are passed on).

    Example:

    ```python
    >>> corpus = load_dataset_source("captions.jsonl")  # doctest: +SKIP
    >>> print(estimate_noise_from_data(model, processor, corpus, image_folder="photos/").summary())  # doctest: +SKIP
    ε = 0.0173 (pseudo_pairs: cosine 0.2950, d = 512, 20000 captions, 2000 images)
    ```
    """
    text_embeds, group_ids, image_embeds = embed_for_estimate(
        model, processor, corpus, caption_column, image_folder, group_column, **embedding_kwargs
    )
    return estimate_noise(
        text_embeds, image_embeds, group_ids, estimator, shift_by_offset, measure_shape, map_captions
    )


__all__ = [
    "DEFAULT_IMAGE_ESTIMATOR",
    "ESTIMATORS",
    "ModalityMap",
    "NoiseEstimate",
    "RIDGE_SCALES",
    "caption_group_cosine",
    "centroid_cosine",
    "corpus_caption_groups",
    "embed_for_estimate",
    "embed_images",
    "estimate_noise",
    "estimate_noise_from_data",
    "fit_modality_map",
    "image_folder_files",
    "modality_offset",
    "pseudo_pair_cosine",
    "residual_noise_shape",
    "variance_from_cosine",
]
