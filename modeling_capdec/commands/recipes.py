"""One parser for the commands: an optional recipe file (JSON or YAML) whose values become the defaults of
`HfArgumentParser` dataclasses, then command-line flags that override them."""

import argparse
import json
import math
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

RECIPE_SUFFIXES = (".json", ".yaml", ".yml")
# Whole-number settings of the commands that must be at least 1 when given: 0 or less fails deep in a stage (a
# ZeroDivisionError, an empty range), or worse, `generation_num_beams 0` silently becomes 1.
POSITIVE_SETTINGS = (
    "batch_size",
    "embedding_batch_size",
    "gradient_accumulation_steps",
    "generation_max_length",
    "generation_num_beams",
    "max_caption_tokens",
    "max_eval_samples",
    "max_new_tokens",
    "max_samples",
    "num_beams",
    "pad_to_multiple_of",
    "per_device_eval_batch_size",
    "per_device_train_batch_size",
    "preprocessing_num_workers",
)
# Settings with a validation of their own where they are used (one concept, one check).
OWN_CHECKS = ("noise_variance",)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written (its command examples keep their lines), and each flag's default."""


def read_recipe(path: str | Path, argument_classes: tuple[type, ...]) -> dict[str, Any]:
    """The settings of a recipe file; keys starting with `_` are comments and dropped, any other key must be a
    field of `argument_classes`.

    Example:

    ```python
    >>> import tempfile
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Args:
    ...     steps: int = 1
    >>> path = Path(tempfile.mkdtemp()) / "recipe.yaml"
    >>> _ = path.write_text("_comment: ten steps\\nsteps: 10\\n")
    >>> read_recipe(path, (Args,))
    {'steps': 10}
    ```
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        # PyYAML (YAML 1.1) would read JSON's 2e-5 as a string: JSON files go through json.
        recipe = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"Cannot parse the recipe {path}: {error}") from error
    recipe = recipe or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"The recipe {path} must hold a mapping of argument names to values.")
    recipe = {key: value for key, value in recipe.items() if not key.startswith("_")}
    known = {f.name for cls in argument_classes for f in fields(cls) if f.init}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise ValueError(f"{path} has unknown keys {unknown}.")
    return recipe


def check_settings(*argument_objects: Any) -> None:
    """Every float setting is finite (an inf or NaN learning rate or weight decay trains to NaN weights with exit
    code 0) and each of `POSITIVE_SETTINGS` that is given is at least 1; the error names the option.

    Example:

    ```python
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Args:
    ...     learning_rate: float = 1e-4
    >>> check_settings(Args(learning_rate=float("nan")))
    Traceback (most recent call last):
    ...
    ValueError: --learning_rate must be a finite number, got nan.

    ```
    """
    for arguments in argument_objects:
        for name, value in vars(arguments).items():
            if name in OWN_CHECKS:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"--{name} must be a finite number, got {value}.")
            if name in POSITIVE_SETTINGS and isinstance(value, (int, float)) and value < 1:
                raise ValueError(f"--{name} must be at least 1, got {value}.")


def parse_recipe_and_args(
    argument_classes: tuple[type, ...], argv: list[str] | None = None, description: str | None = None
) -> tuple[Any, ...]:
    """Parse `argv` (default `sys.argv[1:]`) into one instance of each of `argument_classes`.

    A first argument ending in .json/.yaml/.yml is a recipe (`read_recipe`) whose values become the defaults;
    later flags override them: `capdec-train recipe.json --max_steps 100`. The parsed settings are checked with
    `check_settings` (finite floats, counts >= 1).

    Example:

    ```python
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Args:
    ...     steps: int = 1
    >>> parse_recipe_and_args((Args,), ["--steps", "3"])
    (Args(steps=3),)
    ```
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(argument_classes, description=description, formatter_class=HelpFormatter)
    parser.usage = f"%(prog)s [RECIPE{{{','.join(RECIPE_SUFFIXES)}}}] [--flag value ...]"
    if argv and argv[0].endswith(RECIPE_SUFFIXES) and not argv[0].startswith("-"):
        parser.set_defaults(**read_recipe(argv.pop(0), argument_classes))
    parsed = tuple(parser.parse_args_into_dataclasses(args=argv))
    check_settings(*parsed)
    return parsed


__all__ = ["RECIPE_SUFFIXES", "check_settings", "parse_recipe_and_args", "read_recipe"]
