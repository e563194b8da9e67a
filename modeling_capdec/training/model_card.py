"""The model card of a training run: `model_card.md` (a Jinja template, rendered by `huggingface_hub.ModelCard`)
filled from the run's plain values, with front matter (`ModelCardData`: license, datasets, base_model,
pipeline_tag, library_name, model-index from the eval results).

The card takes the model's config, the training arguments and the run's facts as parameters; it imports no
trainer code, so it can be rendered (and tested) on its own.
"""

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

# The template `train_capdec.py` fills; installed with the package (a link to the repository's model_card.md).
MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "model_card.md"
METRIC_ORDER = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
CARD_DATA = "card_data"  # the template's front-matter placeholder (ModelCard.from_template fills it)
TAGS = ["image-captioning", "capdec", "clip", "text-only-training"]


def render_model_card(template: str, fields: Mapping[str, Any]) -> str:
    """Fill a model card template (Jinja, `{{ name }}` placeholders; `{{ card_data }}` is the front matter, a
    `ModelCardData` in `fields`) with `huggingface_hub.ModelCard.from_template`. Every placeholder must be
    filled, so no card is published with a hole in it.

    Example:

    ```python
    >>> card = render_model_card("---\\n{{ card_data }}\\n---\\nTrained on {{ corpus }}.",
    ...     {"card_data": ModelCardData(license="mit"), "corpus": "COCO captions"})
    >>> card.splitlines()[1], card.splitlines()[-1]
    ('license: mit', 'Trained on COCO captions.')
    ```
    """
    import jinja2
    import jinja2.meta

    placeholders = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(template))
    missing = sorted(placeholders - set(fields))
    if missing:
        raise ValueError(f"The model card template has placeholders with no value: {missing}")
    values = dict(fields)
    card_data = values.pop(CARD_DATA, None) or ModelCardData()
    return str(ModelCard.from_template(card_data, template_str=template, **values))


def model_card_data(
    *,
    model_name: str,
    clip_model: str,
    decoder_model: str,
    hub_dataset: str | None = None,
    license: str | None = None,
    eval_set: str | None = None,
    metrics: Mapping[str, float] | None = None,
) -> ModelCardData:
    """The card's front matter: license, the Hub dataset trained on, the Hub base models, `pipeline_tag:
    image-to-text`, `library_name: transformers`, and a model-index with one `EvalResult` per caption metric
    (scores × 100, as in the card's table).

    Example:

    ```python
    >>> data = model_card_data(model_name="capdec-coco", clip_model="openai/clip-vit-base-patch32",
    ...     decoder_model="gpt2", license="mit", eval_set="karpathy_test.json", metrics={"eval_CIDEr": 0.912})
    >>> data.base_model, data.eval_results[0].metric_value
    (['openai/clip-vit-base-patch32', 'gpt2'], 91.2)
    ```
    """
    scores = _scores(metrics)
    eval_results = [
        EvalResult(
            task_type="image-to-text",
            task_name="Image captioning",
            dataset_type=eval_set if _is_hub_id(eval_set) else Path(eval_set).name,
            dataset_name=eval_set,
            metric_type=name.lower(),
            metric_name=f"{name} (× 100)",
            metric_value=round(100 * value, 1),
        )
        for name, value in scores.items()
    ]
    return ModelCardData(
        license=license,
        datasets=[hub_dataset] if hub_dataset else None,
        base_model=[name for name in (clip_model, decoder_model) if _is_hub_id(name)] or None,
        pipeline_tag="image-to-text",
        library_name="transformers",
        tags=list(TAGS),
        model_name=model_name,
        eval_results=eval_results or None,
    )


def model_card_fields(
    config: Any,
    args: Any,
    *,
    clip_model: str,
    decoder_model: str,
    mode: str,
    corpus: str | Sequence[str],
    cleaning_summary: str,
    corpus_size: int,
    trained_steps: int,
    trained_epochs: float | str,
    eval_set: str | None = None,
    metrics: Mapping[str, float] | None = None,
    hub_dataset: str | None = None,
    license: str | None = None,
    lora: Mapping[str, Any] | None = None,
    init_from: str | None = None,
) -> dict[str, Any]:
    """The values of `model_card.md`'s placeholders for a finished run, `card_data` (the front matter) included.

    `config` is the trained `CapDecConfig` (its `training_noise` records the noise the collator used), `args`
    the run's `CapDecTrainingArguments`; `hub_dataset` the Hub dataset trained on (for the front matter's
    `datasets`), `lora` the LoRA settings of a LoRA run (`r`, `alpha`, `target_modules`, `base`), `init_from`
    the trained CapDec folder the run continued from (`--init_from`), if any.

    Example:

    ```python
    >>> fields = model_card_fields(model.config, args, clip_model="openai/clip-vit-base-patch32",
    ...     decoder_model="gpt2", mode="text", corpus="data/coco_train_text", cleaning_summary=report.summary(),
    ...     corpus_size=report.kept, trained_steps=trainer.state.global_step, trained_epochs=trainer.state.epoch)  # doctest: +SKIP
    ```
    """
    noise = getattr(config, "training_noise", None) or {}
    if not isinstance(corpus, str):  # several files or globs: named one after the other
        corpus = ", ".join(map(str, corpus))
    model_name = Path(args.hub_model_id or args.output_dir).name
    return {
        CARD_DATA: model_card_data(
            model_name=model_name,
            clip_model=clip_model,
            decoder_model=decoder_model,
            hub_dataset=hub_dataset,
            license=license,
            eval_set=eval_set,
            metrics=metrics,
        ),
        "model_name": model_name,
        "repo_id": args.hub_model_id or str(args.output_dir),
        "training_mode": _training_mode(mode, init_from),
        "clip_model": clip_model,
        "decoder_model": decoder_model,
        "corpus": corpus,
        "corpus_size": f"{corpus_size:,}",
        "cleaning": cleaning_summary,
        "noise": _noise_description(mode, noise),
        "modality_offset": _offset_description(noise),
        "text_memory": _text_memory_description(config),
        "mapper": _mapper_description(config),
        "prefix_length": str(config.prefix_length),
        "decoder_training": _decoder_training(config, lora),
        "hyperparameters": "\n".join(
            f"| {name} | {value} |"
            for name, value in _hyperparameters(args, trained_steps, trained_epochs).items()
        ),
        "metrics_table": _metrics_table(metrics, eval_set, args.generation_num_beams or 1),
        "limitations": _limitations(clip_model, mode),
        "bias": _bias(corpus, hub_dataset),
    }


def _training_mode(mode: str, init_from: str | None) -> str:
    trained = (
        "text only (CapDec): the decoder never saw an image during training"
        if mode == "text"
        else "supervised on CLIP image embeddings (the ClipCap reference)"
    )
    # Say where a continued run started: a supervised round on a text-only model's own captions of unlabelled
    # images (processing.pseudo_captions) is still text-only in what it took from people.
    return trained if not init_from else f"{trained}, continuing from the trained CapDec model `{init_from}`"


def _decoder_training(config: Any, lora: Mapping[str, Any] | None) -> str:
    if lora:
        targets = ", ".join(lora.get("target_modules") or ["every Linear/Conv1D layer but the LM head"])
        return (
            f"LoRA adapters (rank {lora['r']}, alpha {lora['alpha']:g}; {targets}) on frozen weights; this folder "
            f"holds the adapter (loading it needs peft) and names its base `{lora['base']}`"
        )
    return "fine-tuned with the mapper" if config.train_decoder else "frozen (only the mapper trains)"


# The paper's CLIP (transformers has no port of RN50x4) and the corpora whose documented biases the card names.
PAPER_CLIP = "RN50x4"
KNOWN_CLIPS = {"clip-vit-base-patch32": "ViT-B/32", "clip-vit-base-patch16": "ViT-B/16",
               "clip-vit-large-patch14": "ViT-L/14", "clip-vit-large-patch14-336": "ViT-L/14@336px"}  # fmt: skip


def _limitations(clip_model: str, mode: str) -> str:
    items = [
        "The captioner only knows what CLIP sees and what the training captions say: objects, counts, text in "
        "images and fine-grained categories are often wrong, and it can state things that are not in the image."
    ]
    if mode == "text":
        items.append(
            "Text-only training leaves a gap between the text embeddings it was trained on and the image "
            "embeddings it is used with; the noise narrows it but does not close it. Captions of unusual images "
            "degrade first."
        )
    clip_name = KNOWN_CLIPS.get(Path(clip_model).name)
    described = f"CLIP {clip_name} (`{clip_model}`)" if clip_name else f"`{clip_model}`"
    if PAPER_CLIP.lower() not in clip_model.lower():
        items.append(
            f"{described} stands in for the paper's CLIP {PAPER_CLIP}, so scores are not comparable with the "
            "paper's; its own limits (resolution, vocabulary of its training data) bound what this model can see."
        )
    items.append(
        "Captions must not be used to make decisions about people (identity, gender, age, ethnicity, emotion)."
    )
    return "\n".join(f"- {item}" for item in items)


def _bias(corpus: str, hub_dataset: str | None) -> str:
    name = hub_dataset or corpus
    remedy = (
        "Text-only training offers a cheap remedy that needs no images: edit the training text itself, e.g. train "
        "on a gender-balanced corpus in which gendered words of a random half of the captions are swapped "
        "(`python -m processing.gender_balance`)."
    )
    if "coco" in name.lower():
        return (
            f"This model was trained on `{name}`. COCO captions describe men far more often than women and tie "
            'gender to activities and settings (Hendricks et al., "Women also Snowboard", 2018); a model trained '
            f"on them repeats and amplifies this, e.g. calling a person in a kitchen a woman. {remedy} Other biases "
            "of the corpus (and of CLIP) remain."
        )
    return (
        f"This model repeats the word choices and associations of its training captions, `{name}`, including any "
        "gender, age or cultural stereotypes they hold (captioning corpora typically over-describe men and tie "
        f"gender to activities), and those of CLIP, whose image-text pairs come from the web. {remedy}"
    )


def _scores(metrics: Mapping[str, float] | None) -> dict[str, float]:
    scores = {name.removeprefix("eval_"): value for name, value in (metrics or {}).items()}
    return {name: scores[name] for name in METRIC_ORDER if name in scores}


def _noise_description(mode: str, noise: Mapping[str, Any]) -> str:
    if mode != "text":
        return "none (supervised training on image embeddings)"
    variance = noise.get("noise_variance", 0.0)
    description = (
        f"{noise.get('noise_type', 'gaussian')}, ε = {variance:g} (std {math.sqrt(variance):.3f})"
        if variance > 0
        else "none (ε = 0)"
    )
    rank = noise.get("noise_shape_effective_rank")
    if variance > 0 and rank:  # --noise_shape measured
        description += (
            f", shaped like the unlabelled images' residuals around their best-matching captions (effective rank "
            f"{rank:g})"
        )
    estimate = noise.get("estimate")
    if estimate:  # --noise_variance auto: what the estimate was computed from
        inputs = [f"{estimate['num_captions']} captions"]
        if estimate.get("num_images"):
            inputs.append(f"{estimate['num_images']} unlabelled images")
        if estimate.get("num_groups"):
            inputs.append(f"{estimate['num_groups']} caption groups")
        rule = "ε = (1/c² − 1)/d"
        if estimate.get("shifted"):  # --noise_offset
            rule = (
                "around the captions shifted by the measured modality offset, ε = mean |t + o|² (1/c² − 1)/d"
            )
        elif estimate.get("modality_map_ridge") is not None:  # --noise_map
            rule = (
                "around the captions mapped by the measured modality map, ε = mean |tW + b|² (1/c² − 1)/d with c "
                "the leave-one-out cosine"
            )
        description += (
            f"; estimated from the data before training ({estimate['estimator']}: cosine {estimate['cosine']:.4f}, "
            f"d = {estimate['dim']}, {', '.join(inputs)}; {rule})"
        )
    return description


def _offset_description(noise: Mapping[str, Any]) -> str:
    offset = noise.get("modality_offset")
    if noise.get("modality_map"):  # --noise_map: an affine map in place of the offset
        ridge = (noise.get("estimate") or {}).get("modality_map_ridge")
        return (
            "replaced by an affine modality map (t → tW + b) fitted on the unlabelled images and their "
            "best-matching captions"
            + (f" (ridge {ridge:.3g})" if ridge is not None else "")
            + ", applied to every caption embedding in training (W and b in `training_noise.safetensors`)"
        )
    if offset is None:
        return "no"
    norm = math.sqrt(sum(value * value for value in offset))
    if (noise.get("estimate") or {}).get("shifted"):
        return (
            f"yes, measured on the unlabelled images (norm {norm:.4f}) and added to every caption embedding"
        )
    return f"yes (norm {norm:.4f}), added to every caption embedding"


def _text_memory_description(config: Any) -> str:
    rows = getattr(config, "text_memory_size", 0) or 0
    if not rows:
        return "none"
    return f"{rows:,} CLIP text embeddings of training captions (`generate(..., project_to_memory=True)`; off by default)"


def _mapper_description(config: Any) -> str:
    if config.mapping_type == "transformer":
        return (
            f"transformer, {config.num_mapping_layers} layers, {config.num_mapping_heads} heads, "
            f"clip_length {config.clip_length}"
        )
    return "MLP (Linear → Tanh → Linear)"


def _hyperparameters(args: Any, trained_steps: int, trained_epochs: float | str) -> dict[str, str]:
    processes = f"process{'es' if args.world_size > 1 else ''}"
    return {
        "learning rate": f"{args.learning_rate:g}",
        "scheduler": f"{getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)}, "
        f"{args.warmup_steps:g} warmup steps",
        "batch size": f"{args.per_device_train_batch_size} per device × {args.world_size} {processes} × "
        f"{args.gradient_accumulation_steps} accumulation",
        # A streamed run describes its passes over the stream (Trainer's epoch of a stream means nothing).
        "epochs": trained_epochs if isinstance(trained_epochs, str) else f"{trained_epochs:.3g}",
        "optimizer steps": str(trained_steps),
        "weight decay": f"{args.weight_decay:g}",
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "seed": str(args.seed),
    }


def _metrics_table(metrics: Mapping[str, float] | None, eval_set: str | None, num_beams: int) -> str:
    if not metrics:
        return "No evaluation was run for this model (no eval set was given to `train_capdec.py`)."
    scores = _scores(metrics)
    names = list(scores)
    header = "| " + " | ".join(names) + " |\n|" + "---|" * len(names)
    values = "| " + " | ".join(f"{100 * scores[name]:.1f}" for name in names) + " |"
    return (
        f"{header}\n{values}\n\nScores × 100 on {eval_set} (COCO caption toolkit; CIDEr is CIDEr-D), greedy "
        f"decoding unless `generation_num_beams` was set (here {num_beams} beam(s))."
    )


def _is_hub_id(name: str | None) -> bool:
    # A Hub id: one "owner/name" (or a bare name) that is not a path on this machine.
    return (
        bool(name) and not os.path.exists(name) and name.count("/") <= 1 and not name.startswith((".", "/"))
    )


__all__ = ["MODEL_CARD_TEMPLATE", "model_card_data", "model_card_fields", "render_model_card"]
