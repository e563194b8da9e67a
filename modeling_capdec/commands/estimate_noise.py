"""Report the noise variance ε that `train_capdec.py --noise_variance auto` would choose, without training.

Takes the training command's recipe and flags (the corpus, the CLIP, `--noise_images`, `--noise_group_column`,
`--noise_estimator`), embeds the corpus and the images with the run's CLIP, and prints every estimator that the
inputs allow, the one `auto` uses first. `--modality_offset_output` also writes the measured modality offset (mean
image minus mean caption embedding) for `--modality_offset_file`. With `--noise_offset` the first estimate is the one
`--noise_variance auto --noise_offset` trains with: ε measured around the captions shifted by that offset; with
`--noise_shape measured` it also reports the effective rank of the measured noise shape; with `--noise_map`, ε around
the captions mapped by the measured modality map.

    capdec-estimate-noise configuration/shapes_text_only.json --noise_images unlabelled_photos/
    python -m modeling_capdec.commands.estimate_noise --clip_model openai/clip-vit-base-patch32 \\
        --decoder_model gpt2 --train_file captions.jsonl --noise_group_column image_id
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modeling_capdec.commands.recipes import parse_recipe_and_args
from modeling_capdec.training.arguments import CapDecTrainingArguments, DataArguments, ModelArguments
from modeling_capdec.training.data import load_dataset_source
from modeling_capdec.training.noise_estimate import (
    DEFAULT_IMAGE_ESTIMATOR,
    ESTIMATORS,
    NoiseEstimate,
    embed_for_estimate,
    estimate_noise,
)
from modeling_capdec.training.trainer import load_capdec_for_training, noise_estimate_inputs


@dataclass
class EstimateNoiseArguments:
    modality_offset_output: str | None = field(
        default=None,
        metadata={
            "help": "Write the modality offset (needs --noise_images) to this .json or .safetensors file."
        },
    )


def applicable_estimates(
    text_embeds: torch.Tensor,
    group_ids: list,
    image_embeds: torch.Tensor | None,
    chosen: str | None = None,
    shift_by_offset: bool = False,
    measure_shape: bool = False,
    map_captions: bool = False,
) -> list[NoiseEstimate]:
    """Every estimator the inputs allow (the image ones need images; caption_groups needs a group of two), the
    one `--noise_variance auto` would use first (`chosen`, or its default; measured around the captions shifted by
    the modality offset with `shift_by_offset`, as `--noise_offset` trains, and with the noise shape measured with
    `measure_shape`, as `--noise_shape measured` trains, and around the mapped captions with `map_captions`, as
    `--noise_map` trains).

    Example:

    ```python
    >>> import torch
    >>> text = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    >>> [e.estimator for e in applicable_estimates(text, [0, 0, 1, 1, 2, 2], None)]
    ['caption_groups']
    ```
    """
    first = chosen or (DEFAULT_IMAGE_ESTIMATOR if image_embeds is not None else "caption_groups")
    # With the shift, the shape or the map, the first estimator also reports without them.
    options = shift_by_offset or measure_shape or map_captions
    order = [(first, shift_by_offset, measure_shape, map_captions)] + [(first, False, False, False)] * options
    order += [(name, False, False, False) for name in ESTIMATORS if name != first]
    estimates = []
    for estimator, shift, shape, mapped in order:
        if estimator != "caption_groups" and image_embeds is None:
            continue
        try:
            estimates.append(
                estimate_noise(text_embeds, image_embeds, group_ids, estimator, shift, shape, mapped)
            )
        except ValueError as error:  # e.g. no group of two captions
            if estimator == first:
                raise
            print(f"({estimator}: {error})")
    return estimates


def write_offset(offset: list[float], path: str | Path) -> None:
    """The offset as `--modality_offset_file` reads it: `{"modality_offset": [...]}` JSON or one safetensors tensor."""
    path = Path(path)
    if path.suffix == ".json":
        path.write_text(json.dumps({"modality_offset": offset}) + "\n")
    elif path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({"modality_offset": torch.tensor(offset, dtype=torch.float32)}, str(path))
    else:
        raise ValueError(f"--modality_offset_output must end in .json or .safetensors, got {path}.")


def main(argv: list[str] | None = None) -> list[NoiseEstimate]:
    """`capdec-estimate-noise [RECIPE] [--flags]`: print the estimates; returns them, the one `auto` uses first."""
    model_args, data_args, training_args, args = parse_recipe_and_args(
        (ModelArguments, DataArguments, CapDecTrainingArguments, EstimateNoiseArguments),
        argv,
        description=__doc__,
    )
    if data_args.train_source is None:
        raise ValueError("Give the caption corpus: --train_file, --dataset_dir or --dataset_name.")
    model, processor = load_capdec_for_training(
        model_args.clip_model, model_args.decoder_model, model_args.init_from, **model_args.architecture()
    )
    corpus = load_dataset_source(data_args.train_source, **data_args.source_kwargs())
    text_embeds, group_ids, image_embeds = embed_for_estimate(
        model, processor, corpus, **noise_estimate_inputs(data_args, training_args)
    )
    estimates = applicable_estimates(
        text_embeds,
        group_ids,
        image_embeds,
        training_args.noise_estimator,
        training_args.noise_offset,
        training_args.noise_shape == "measured",
        training_args.noise_map,
    )
    flags = "--noise_variance auto" + " --noise_offset" * training_args.noise_offset
    flags += " --noise_map" * training_args.noise_map
    flags += " --noise_shape measured" * (training_args.noise_shape == "measured")
    print(f"{flags} would use: {estimates[0].summary()}")
    for estimate in estimates[1:]:
        print(f"other estimator:               {estimate.summary()}")
    offset = estimates[0].modality_offset
    if offset is not None:
        print(
            f"modality offset: norm {torch.tensor(offset).norm():.4f} (mean image − mean caption embedding)"
        )
    if args.modality_offset_output:
        if offset is None:
            raise ValueError(
                "--modality_offset_output needs --noise_images (the offset is measured on images)."
            )
        write_offset(offset, args.modality_offset_output)
        print(f"wrote {args.modality_offset_output}")
    return estimates


if __name__ == "__main__":
    main()
