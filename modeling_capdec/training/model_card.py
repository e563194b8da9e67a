"""The model card of a training run: `model_card.md` (a `string.Template`) filled from the run's plain values.

The card takes the model's config, the training arguments and the run's facts as parameters; it imports no
trainer code, so it can be rendered (and tested) on its own.
"""

import math
import os
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The template `train_capdec.py` fills; installed with the package (a link to the repository's model_card.md).
MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "model_card.md"
METRIC_ORDER = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")


def render_model_card(template: str, fields: Mapping[str, str]) -> str:
    """Fill a model card template whose placeholders are `${name}` (`string.Template`); every placeholder must
    be filled, so no card is published with a hole in it.

    Example:

    ```python
    >>> render_model_card("Trained on ${corpus}.", {"corpus": "COCO captions"})
    'Trained on COCO captions.'
    ```
    """
    template_object = string.Template(template)
    missing = sorted(
        {
            match.group("named") or match.group("braced")
            for match in template_object.pattern.finditer(template)
            if (match.group("named") or match.group("braced"))
        }
        - set(fields)
    )
    if missing:
        raise ValueError(f"The model card template has placeholders with no value: {missing}")
    return template_object.substitute(fields)


def model_card_fields(
    config: Any,
    args: Any,
    *,
    clip_model: str,
    decoder_model: str,
    mode: str,
    corpus: str,
    cleaning_summary: str,
    corpus_size: int,
    trained_steps: int,
    trained_epochs: float,
    eval_set: str | None = None,
    metrics: Mapping[str, float] | None = None,
) -> dict[str, str]:
    """The values of `model_card.md`'s placeholders for a finished run.

    `config` is the trained `CapDecConfig` (its `training_noise` records the noise the collator used), `args`
    the run's `CapDecTrainingArguments`.

    Example:

    ```python
    >>> fields = model_card_fields(model.config, args, clip_model="openai/clip-vit-base-patch32",
    ...     decoder_model="gpt2", mode="text", corpus="data/coco_train_text", cleaning_summary=report.summary(),
    ...     corpus_size=report.kept, trained_steps=trainer.state.global_step, trained_epochs=trainer.state.epoch)  # doctest: +SKIP
    ```
    """
    noise = getattr(config, "training_noise", None) or {}
    hub_bases = [name for name in (clip_model, decoder_model) if _is_hub_id(name)]
    return {
        "model_name": Path(args.hub_model_id or args.output_dir).name,
        "repo_id": args.hub_model_id or str(args.output_dir),
        "base_model_metadata": "base_model:\n" + "".join(f"- {name}\n" for name in hub_bases)
        if hub_bases
        else "",
        "training_mode": "text only (CapDec): the decoder never saw an image during training"
        if mode == "text"
        else "supervised on CLIP image embeddings (the ClipCap reference)",
        "clip_model": clip_model,
        "decoder_model": decoder_model,
        "corpus": corpus,
        "corpus_size": f"{corpus_size:,}",
        "cleaning": cleaning_summary,
        "noise": _noise_description(mode, noise),
        "modality_offset": "yes" if noise.get("modality_offset") is not None else "no",
        "mapper": _mapper_description(config),
        "prefix_length": str(config.prefix_length),
        "decoder_training": "fine-tuned with the mapper"
        if config.train_decoder
        else "frozen (only the mapper trains)",
        "hyperparameters": "\n".join(
            f"| {name} | {value} |"
            for name, value in _hyperparameters(args, trained_steps, trained_epochs).items()
        ),
        "metrics_table": _metrics_table(metrics, eval_set, args.generation_num_beams or 1),
    }


def _noise_description(mode: str, noise: Mapping[str, Any]) -> str:
    if mode != "text":
        return "none (supervised training on image embeddings)"
    variance = noise.get("noise_variance", 0.0)
    if variance > 0:
        return f"{noise.get('noise_type', 'gaussian')}, ε = {variance:g} (std {math.sqrt(variance):.3f})"
    return "none (ε = 0)"


def _mapper_description(config: Any) -> str:
    if config.mapping_type == "transformer":
        return (
            f"transformer, {config.num_mapping_layers} layers, {config.num_mapping_heads} heads, "
            f"clip_length {config.clip_length}"
        )
    return "MLP (Linear → Tanh → Linear)"


def _hyperparameters(args: Any, trained_steps: int, trained_epochs: float) -> dict[str, str]:
    processes = f"process{'es' if args.world_size > 1 else ''}"
    return {
        "learning rate": f"{args.learning_rate:g}",
        "scheduler": f"{getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)}, "
        f"{args.warmup_steps:g} warmup steps",
        "batch size": f"{args.per_device_train_batch_size} per device × {args.world_size} {processes} × "
        f"{args.gradient_accumulation_steps} accumulation",
        "epochs": f"{trained_epochs:.3g}",
        "optimizer steps": str(trained_steps),
        "weight decay": f"{args.weight_decay:g}",
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "seed": str(args.seed),
    }


def _metrics_table(metrics: Mapping[str, float] | None, eval_set: str | None, num_beams: int) -> str:
    if not metrics:
        return "No evaluation was run for this model (no eval set was given to `train_capdec.py`)."
    scores = {name.removeprefix("eval_"): value for name, value in metrics.items()}
    names = [name for name in METRIC_ORDER if name in scores]
    header = "| " + " | ".join(names) + " |\n|" + "---|" * len(names)
    values = "| " + " | ".join(f"{100 * scores[name]:.1f}" for name in names) + " |"
    return (
        f"{header}\n{values}\n\nScores × 100 on {eval_set} (COCO caption toolkit; CIDEr is CIDEr-D), greedy "
        f"decoding unless `generation_num_beams` was set (here {num_beams} beam(s))."
    )


def _is_hub_id(name: str | None) -> bool:
    return (
        bool(name) and not os.path.exists(name) and name.count("/") <= 1 and not name.startswith((".", "/"))
    )


__all__ = ["MODEL_CARD_TEMPLATE", "model_card_fields", "render_model_card"]
