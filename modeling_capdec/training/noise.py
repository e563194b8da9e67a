"""CapDec's noise injection: the one operation that makes text-only training transfer to images.

Noise is drawn in one place, the training collator (`training.collator.CapDecDataCollator`), with the functions
here; the model only ever receives embeddings that are already noised. The noise of one example is a pure
function of `(seed, epoch, example_id)` (`example_noise_generator`), so runs reproduce and resume exactly.
"""

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

NOISE_TYPES = ("gaussian", "uniform")
# The dataset column that names each example for its noise (written by `training.data.prepare_training_dataset`).
EXAMPLE_ID_COLUMN = "example_id"
# The measured tensors of a run's noise (`--noise_map`, `--noise_shape measured`), saved beside its weights: too big
# for config.json, which records only their summary.
TRAINING_NOISE_FILE = "training_noise.safetensors"


def check_noise_settings(variance: float, noise_type: str = "gaussian") -> None:
    """The one validation of the noise settings: ε finite and >= 0, a known noise type.

    Example:

    ```python
    >>> check_noise_settings(float("inf"))
    Traceback (most recent call last):
    ...
    ValueError: noise_variance must be a finite number >= 0, got inf.
    ```
    """
    if not (isinstance(variance, (int, float)) and math.isfinite(variance) and variance >= 0):
        raise ValueError(f"noise_variance must be a finite number >= 0, got {variance}.")
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"noise_type must be one of {list(NOISE_TYPES)}, got {noise_type!r}.")


def check_noise_shape(noise_shape: torch.Tensor, dim: int, noise_type: str = "gaussian") -> None:
    """A noise shape is a finite `(dim, dim)` matrix, for Gaussian noise (a uniform ball has no covariance to shape).

    Example:

    ```python
    >>> check_noise_shape(torch.eye(3), 4)
    Traceback (most recent call last):
    ...
    ValueError: noise_shape must be a (4, 4) matrix for 4-d embeddings, got (3, 3).
    ```
    """
    if tuple(noise_shape.shape) != (dim, dim):
        raise ValueError(
            f"noise_shape must be a ({dim}, {dim}) matrix for {dim}-d embeddings, got {tuple(noise_shape.shape)}."
        )
    if not bool(torch.isfinite(noise_shape).all()):
        raise ValueError("noise_shape holds values that are not finite (inf or NaN).")
    if noise_type != "gaussian":
        raise ValueError(f"noise_shape shapes Gaussian noise; noise_type is {noise_type!r}.")


def shape_effective_rank(noise_shape: torch.Tensor) -> float:
    r"""How many directions the shaped noise spreads over: $(\sum_k \lambda_k)^2 / \sum_k \lambda_k^2$ for the
    eigenvalues $\lambda_k$ of $A^\top A$ (the dimension for isotropic noise, 1 for noise along one line).

    Example:

    ```python
    >>> shape_effective_rank(torch.eye(8)), shape_effective_rank(torch.diag(torch.tensor([2.0, 0.0, 0.0])))
    (8.0, 1.0)
    ```
    """
    eigenvalues = torch.linalg.eigvalsh((noise_shape.T @ noise_shape).double()).clamp(min=0)
    return float(eigenvalues.sum() ** 2 / eigenvalues.pow(2).sum())


def check_modality_map(modality_map: Sequence[torch.Tensor], dim: int) -> None:
    """A modality map is a finite `(weight (dim, dim), bias (dim,))` pair.

    Example:

    ```python
    >>> check_modality_map((torch.eye(4), torch.zeros(3)), 4)
    Traceback (most recent call last):
    ...
    ValueError: modality_map must be (weight (4, 4), bias (4,)) for 4-d embeddings, got ((4, 4), (3,)).
    ```
    """
    shapes = tuple(tuple(part.shape) for part in modality_map)
    if shapes != ((dim, dim), (dim,)):
        raise ValueError(
            f"modality_map must be (weight ({dim}, {dim}), bias ({dim},)) for {dim}-d embeddings, got "
            f"{', '.join(map(str, shapes)).join('()')}."
        )
    if not all(bool(torch.isfinite(part).all()) for part in modality_map):
        raise ValueError("modality_map holds values that are not finite (inf or NaN).")


def example_noise_generator(seed: int, epoch: int, example_id: int) -> torch.Generator:
    """The generator that draws the noise of one example in one epoch.

    The noise of an example is a pure function of `(seed, epoch, example_id)`: it does not depend on which
    batch, dataloader worker or process the example lands in, nor on whether the run was interrupted and
    resumed, yet every epoch sees fresh noise. `SeedSequence` mixes the three numbers so that nearby ids give
    unrelated streams.

    Example:

    ```python
    >>> import torch
    >>> a = torch.randn(3, generator=example_noise_generator(0, 1, 7))
    >>> b = torch.randn(3, generator=example_noise_generator(0, 1, 7))
    >>> torch.equal(a, b), torch.equal(a, torch.randn(3, generator=example_noise_generator(0, 2, 7)))
    (True, False)
    ```
    """
    if min(seed, epoch, example_id) < 0:
        raise ValueError(f"seed, epoch and example_id must be >= 0, got {(seed, epoch, example_id)}.")
    high, low = np.random.SeedSequence([seed, epoch, example_id]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(high) << 32) | int(low))


def inject_noise(
    embeds: torch.Tensor,
    variance: float,
    noise_type: str = "gaussian",
    modality_offset: torch.Tensor | Sequence[float] | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    noise_shape: torch.Tensor | None = None,
    modality_map: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    r"""Noise a batch of CLIP embeddings as in CapDec (Nukrai et al. 2022, Sec. 3):

    $$x' = \frac{\hat x + n + o}{\lVert \hat x + n + o \rVert_2}, \qquad \hat x = x / \lVert x \rVert_2$$

    where $n \sim \mathcal N(0, \epsilon I)$ (std $\sqrt\epsilon$) for `noise_type="gaussian"`, or $n$ uniform in
    the ball of radius $\sqrt\epsilon$ for `"uniform"`, and $o$ is the optional modality offset. With
    `variance == 0` and no offset the result is just $\hat x$ (no noise). With `noise_shape` $A$ (`(dim, dim)`,
    $\lVert A\rVert_F^2 = $ dim) the Gaussian noise becomes $nA \sim \mathcal N(0, \epsilon A^\top A)$: the same
    expected squared length $\epsilon\,d$, spread along the directions $A$ favours (`noise_shape="measured"`:
    those in which images differ from their captions). With `modality_map` $(W, b)$ (`--noise_map`) the caption
    is first mapped, $\hat x W + b$ taking the place of $\hat x$.

    Args:
        embeds: `(batch, dim)` CLIP embeddings (normalised or not).
        variance: ε, the noise variance (0.016 in the paper).
        noise_type: `"gaussian"` or `"uniform"`.
        modality_offset: optional `(dim,)` vector added after the noise.
        generator: a `torch.Generator` for reproducible noise.
        noise: the `(batch, dim)` noise $n$ already drawn (by [`sample_noise`]), instead of drawing it here.
        noise_shape: optional `(dim, dim)` matrix $A$ the noise is multiplied by (Gaussian noise only).
        modality_map: optional `((dim, dim) W, (dim,) b)` applied to $\hat x$ before the noise.

    Returns:
        `(batch, dim)` unit-norm embeddings, in the dtype of `embeds`.

    Example:

    ```python
    >>> import torch
    >>> from modeling_capdec.training.noise import inject_noise
    >>> x = inject_noise(torch.randn(4, 512), variance=0.016, generator=torch.Generator().manual_seed(0))
    >>> x.shape, torch.allclose(x.norm(dim=-1), torch.ones(4))
    (torch.Size([4, 512]), True)
    ```
    """
    check_noise_settings(variance, noise_type)
    if noise_shape is not None:
        check_noise_shape(noise_shape, embeds.shape[-1], noise_type)
    if modality_map is not None:  # a (dim, k) weight would give k-d embeddings without an error
        check_modality_map(modality_map, embeds.shape[-1])
    dtype = embeds.dtype
    # Noise in float32: in bf16, sqrt(0.016) * N(0,1) added to entries of size ~1/sqrt(512) loses most bits.
    x = F.normalize(embeds.float(), dim=-1)
    if modality_map is not None:
        weight, bias = modality_map
        x = x @ weight.to(x.device, torch.float32) + bias.to(x.device, torch.float32)
    if variance == 0 and modality_offset is None:
        return F.normalize(x, dim=-1).to(dtype)
    if variance > 0:
        if noise is None:
            # Draw on the generator's device (a CPU generator cannot fill a CUDA tensor), then move.
            noise_device = generator.device if generator is not None else x.device
            noise = sample_noise(x.shape, variance, noise_type, generator, noise_device)
        elif noise.shape != x.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, the embeddings {tuple(x.shape)}.")
        if noise_shape is not None:
            noise = noise.to(torch.float32) @ noise_shape.to(noise.device, torch.float32)
        x = x + noise.to(x.device, torch.float32)
    if modality_offset is not None:
        x = x + torch.as_tensor(modality_offset, dtype=x.dtype, device=x.device)
    return F.normalize(x, dim=-1).to(dtype)


def sample_noise(
    shape: Sequence[int],
    variance: float,
    noise_type: str = "gaussian",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""The noise $n$ of [`inject_noise`], float32 of `shape` `(..., dim)`: $\mathcal N(0, \epsilon I)$, or uniform
    in the ball of radius $\sqrt\epsilon$ for `noise_type="uniform"`."""
    std = math.sqrt(variance)
    if noise_type == "gaussian":
        return torch.randn(tuple(shape), generator=generator, device=device) * std
    return _uniform_ball(torch.Size(shape), std, generator, device)


def _uniform_ball(
    shape: torch.Size, radius: float, generator: torch.Generator | None, device: torch.device | str | None
) -> torch.Tensor:
    """Samples uniform in a `dim`-ball: an isotropic direction times radius * U^(1/dim)."""
    direction = F.normalize(torch.randn(shape, generator=generator, device=device), dim=-1)
    u = torch.rand((*shape[:-1], 1), generator=generator, device=device)
    return direction * radius * u.pow(1.0 / shape[-1])


def save_training_noise(
    folder: str | os.PathLike,
    modality_map: Sequence[torch.Tensor] | None = None,
    noise_shape: torch.Tensor | None = None,
) -> Path | None:
    """Write the measured noise tensors a run trained with to `folder/training_noise.safetensors`: the modality map
    as `modality_map.weight` `(dim, dim)` and `modality_map.bias` `(dim,)`, the noise shape as `noise_shape`
    `(dim, dim)`. Returns the path, or None (nothing written) when there are none.

    Example:

    ```python
    >>> import tempfile, torch
    >>> folder = tempfile.mkdtemp()
    >>> path = save_training_noise(folder, modality_map=(torch.eye(2), torch.zeros(2)))
    >>> load_modality_map(folder)[0]
    tensor([[1., 0.],
            [0., 1.]])
    ```
    """
    from safetensors.torch import save_file

    tensors = training_noise_tensors(modality_map, noise_shape)
    if not tensors:
        return None
    path = Path(folder) / TRAINING_NOISE_FILE
    save_file(tensors, str(path))
    return path


def training_noise_tensors(
    modality_map: Sequence[torch.Tensor] | None = None, noise_shape: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of `training_noise.safetensors` by name (float32, CPU), only those given: what
    `save_training_noise` writes and a resumed run compares with the file."""
    tensors = {}
    if modality_map is not None:
        tensors["modality_map.weight"], tensors["modality_map.bias"] = modality_map
    if noise_shape is not None:
        tensors["noise_shape"] = noise_shape
    return {name: tensor.detach().float().cpu().contiguous() for name, tensor in tensors.items()}


def load_modality_map(folder: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The modality map `(weight, bias)` a run trained with (`--noise_map`), from the `training_noise.safetensors`
    of its saved folder; None when the folder has none (no map, or saved before the map was kept)."""
    from safetensors.torch import load_file

    path = Path(folder) / TRAINING_NOISE_FILE
    if not path.is_file():
        return None
    tensors = load_file(str(path))
    if "modality_map.weight" not in tensors:
        return None
    modality_map = (tensors["modality_map.weight"], tensors["modality_map.bias"])
    check_modality_map(modality_map, modality_map[0].shape[-1])
    return modality_map


__all__ = [
    "EXAMPLE_ID_COLUMN",
    "NOISE_TYPES",
    "TRAINING_NOISE_FILE",
    "check_modality_map",
    "check_noise_settings",
    "check_noise_shape",
    "example_noise_generator",
    "inject_noise",
    "load_modality_map",
    "sample_noise",
    "save_training_noise",
    "shape_effective_rank",
    "training_noise_tensors",
]
