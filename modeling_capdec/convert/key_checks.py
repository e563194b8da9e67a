"""The strict check every converter runs before loading foreign weights: which keys are missing, unexpected or
of another shape, so that one error can name them all."""

from collections.abc import Collection, Mapping

import torch


def key_mismatches(
    weights: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    optional: Collection[str] = (),
) -> tuple[list[str], list[str], list[str]]:
    """`(missing, unexpected, shape mismatches)` of `weights` against `expected` (a model's state dict); keys in
    `optional` may be absent. Each list is sorted or in file order, ready to print.

    Example:

    ```python
    >>> key_mismatches({"a": torch.zeros(2), "c": torch.zeros(1)}, {"a": torch.zeros(3), "b": torch.zeros(1)})
    (['b'], ['c'], ['a: (2,) in the file, (3,) in the model'])
    ```
    """
    missing = sorted(set(expected) - set(weights) - set(optional))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = [
        f"{key}: {tuple(value.shape)} in the file, {tuple(expected[key].shape)} in the model"
        for key, value in weights.items()
        if key in expected and value.shape != expected[key].shape
    ]
    return missing, unexpected, mismatched
