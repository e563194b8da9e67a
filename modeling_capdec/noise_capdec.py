"""CapDec's noise injection: the one operation that makes text-only training transfer to images."""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def inject_noise(
    embeds: torch.Tensor,
    variance: float,
    noise_type: str = "gaussian",
    modality_offset: torch.Tensor | Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Noise a batch of CLIP embeddings as in CapDec (Nukrai et al. 2022, Sec. 3):

    $$x' = \frac{\hat x + n + o}{\lVert \hat x + n + o \rVert_2}, \qquad \hat x = x / \lVert x \rVert_2$$

    where $n \sim \mathcal N(0, \epsilon I)$ (std $\sqrt\epsilon$) for `noise_type="gaussian"`, or $n$ uniform in
    the ball of radius $\sqrt\epsilon$ for `"uniform"`, and $o$ is the optional modality offset. With
    `variance == 0` and no offset the result is just $\hat x$ (no noise).

    Args:
        embeds: `(batch, dim)` CLIP embeddings (normalised or not).
        variance: ε, the noise variance (0.016 in the paper).
        noise_type: `"gaussian"` or `"uniform"`.
        modality_offset: optional `(dim,)` vector added after the noise.
        generator: a `torch.Generator` for reproducible noise.

    Returns:
        `(batch, dim)` unit-norm embeddings, in the dtype of `embeds`.

    Example:

    ```python
    >>> import torch
    >>> from modeling_capdec import inject_noise
    >>> x = inject_noise(torch.randn(4, 512), variance=0.016, generator=torch.Generator().manual_seed(0))
    >>> x.shape, torch.allclose(x.norm(dim=-1), torch.ones(4))
    (torch.Size([4, 512]), True)
    ```
    """
    if variance < 0:
        raise ValueError(f"Noise variance must be >= 0, got {variance}.")
    if noise_type not in ("gaussian", "uniform"):
        raise ValueError(f"noise_type must be 'gaussian' or 'uniform', got {noise_type!r}.")
    dtype = embeds.dtype
    # Noise in float32: in bf16, sqrt(0.016) * N(0,1) added to entries of size ~1/sqrt(512) loses most bits.
    x = F.normalize(embeds.float(), dim=-1)
    if variance == 0 and modality_offset is None:
        return x.to(dtype)
    std = math.sqrt(variance)
    # Draw on the generator's device (a CPU generator cannot fill a CUDA tensor), then move.
    noise_device = generator.device if generator is not None else x.device
    if variance > 0:
        if noise_type == "gaussian":
            noise = torch.randn(x.shape, generator=generator, device=noise_device) * std
        else:
            noise = _uniform_ball(x.shape, std, generator, noise_device)
        x = x + noise.to(x.device)
    if modality_offset is not None:
        x = x + torch.as_tensor(modality_offset, dtype=x.dtype, device=x.device)
    return F.normalize(x, dim=-1).to(dtype)


def _uniform_ball(
    shape: torch.Size, radius: float, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Samples uniform in a `dim`-ball: an isotropic direction times radius * U^(1/dim)."""
    direction = F.normalize(torch.randn(shape, generator=generator, device=device), dim=-1)
    u = torch.rand((*shape[:-1], 1), generator=generator, device=device)
    return direction * radius * u.pow(1.0 / shape[-1])


__all__ = ["inject_noise"]
