"""Trainer pieces for CapDec: training arguments with CapDec's defaults, a Trainer that evaluates by captioning,
the callback that keeps the collator's noise epoch in step, model loading for training, and the model card."""

import json
import logging
import math
import os
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import Seq2SeqTrainingArguments, Trainer, TrainerCallback
from transformers.trainer_utils import speed_metrics

from .collator_capdec import CapDecDataCollator
from .configuration_capdec import CapDecConfig
from .modeling_capdec import CapDecForConditionalGeneration
from .processing_capdec import CapDecProcessor

logger = logging.getLogger(__name__)

DEFAULT_EVAL_METRICS = ("BLEU", "METEOR", "ROUGE-L", "CIDEr")


@dataclass
class CapDecTrainingArguments(Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` with CapDec's defaults and its evaluation settings.

    - `remove_unused_columns` defaults to False: the collator needs `clip_embeds`/`example_id`, which are not
      `forward` arguments under those names, and transformers 5 would drop them.
    - `ddp_find_unused_parameters` defaults to False: every trainable parameter is used in every step (frozen
      CLIP/decoder parameters are not tracked by DDP), so the extra autograd traversal is wasted.
    - At each evaluation the eval images are captioned with `generation_num_beams` beams (default 1) and at most
      `generation_max_length` new tokens (default 30), then scored with `eval_metrics`; metrics are logged as
      `eval_CIDEr`, `eval_BLEU-4`, ..., so `metric_for_best_model="CIDEr"` works.

    Example:

    ```python
    >>> args = CapDecTrainingArguments(output_dir="out", eval_metrics=["BLEU", "CIDEr"])
    >>> args.remove_unused_columns, args.report_to
    (False, [])
    ```
    """

    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Keep it False: the CapDec collator reads columns that are not forward() arguments."
        },
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "CapDec uses every trainable parameter in every step: no unused-parameter search."},
    )
    eval_metrics: list[str] = field(
        default_factory=lambda: list(DEFAULT_EVAL_METRICS),
        metadata={
            "help": "Caption metrics computed at each evaluation: BLEU, METEOR, ROUGE-L, CIDEr, SPICE."
        },
    )


class CapDecNoiseCallback(TrainerCallback):
    """Tells the collator which epoch starts, so that each epoch draws fresh noise for every example.

    The noise of an example is a function of `(seed, epoch, example_id)` (see `CapDecDataCollator`): on resume
    the epoch comes back from the checkpoint's trainer state, so the noise continues exactly as in an
    uninterrupted run. Dataloader workers get a copy of the collator when each epoch's iterator starts, which
    happens after `on_epoch_begin` (persistent workers would keep a stale epoch: `main` rejects them).

    Example:

    ```python
    >>> trainer = CapDecTrainer(..., data_collator=collator, callbacks=[CapDecNoiseCallback(collator)])  # doctest: +SKIP
    ```
    """

    def __init__(self, collator: CapDecDataCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is fractional after a mid-epoch resume (1.5 → epoch 1); the small margin absorbs float sums.
        self.collator.set_epoch(math.floor(state.epoch + 1e-6) if state.epoch else 0)
        return control


class _Shard(Sequence):
    """A contiguous slice of a (possibly lazy) image column, read in batches only when captioning."""

    def __init__(self, items: Sequence[Any], start: int, end: int):
        self.items, self.start, self.end = items, start, end

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("Only contiguous slices of an eval shard are supported.")
            return self.items[self.start + start : self.start + stop]
        return self.items[self.start + range(len(self))[index]]


class CapDecTrainer(Trainer):
    """A `Trainer` whose evaluation captions an image-caption eval set and scores it with the COCO toolkit.

    Pass the eval set (`data_capdec.load_eval_set`, an `evaluation_capdec.CaptionEvalSet`) as `eval_dataset`.
    Each evaluation generates one caption per image (split across processes, gathered in order), computes
    `args.eval_metrics` with `compute_caption_metrics` and logs them with the `eval_` prefix. The last
    predictions are kept in `last_eval_predictions` (`{image_id: caption}`), with `last_eval_metrics` and the
    `last_eval_step` they were computed at.

    `create_model_card` writes the CapDec card from `model_card_template` and `model_card_fields` (also when
    pushing to the Hub), instead of Trainer's generic one.

    Example:

    ```python
    >>> trainer = CapDecTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_set,
    ...                         data_collator=collator, processing_class=processor)  # doctest: +SKIP
    >>> trainer.evaluate()["eval_CIDEr"]  # doctest: +SKIP
    0.91
    ```
    """

    def __init__(self, *args, model_card_template: str | os.PathLike | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_card_template = model_card_template
        self.model_card_fields: dict[str, str] = {}
        self.last_eval_predictions: dict[Any, str] | None = None
        self.last_eval_metrics: dict[str, float] = {}
        self.last_eval_step: int | None = None

    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        eval_set = eval_dataset if eval_dataset is not None else self.eval_dataset
        if not hasattr(eval_set, "references"):  # not a caption eval set: Trainer's loss evaluation
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        from accelerate.utils import broadcast_object_list, gather_object

        from .evaluation_capdec import caption_images
        from .metrics_capdec import compute_caption_metrics

        start_time = time.time()
        predictions = self._caption_shard(eval_set, caption_images)
        if self.accelerator.num_processes > 1:
            predictions = gather_object(predictions)  # concatenated in process order = eval set order
        scores = [None]
        if self.accelerator.is_main_process:
            # The toolkit runs Java; one process scores and the others receive the numbers.
            scores = [
                compute_caption_metrics(predictions, eval_set.references, metrics=self.args.eval_metrics)
            ]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(scores)
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in scores[0].items()}
        metrics.update(speed_metrics(metric_key_prefix, start_time, num_samples=len(eval_set)))
        if self.state.epoch is not None:
            metrics["epoch"] = self.state.epoch
        self.last_eval_predictions = dict(zip(eval_set.image_ids, predictions, strict=True))
        self.last_eval_metrics, self.last_eval_step = metrics, self.state.global_step
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _caption_shard(self, eval_set: Any, caption_images) -> list[str]:
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        count, processes = len(eval_set), self.accelerator.num_processes
        per_process = math.ceil(count / processes)
        start = min(count, self.accelerator.process_index * per_process)
        end = min(count, start + per_process)
        try:
            if start == end:
                return []
            images = eval_set.images if processes == 1 else _Shard(eval_set.images, start, end)
            return caption_images(
                model,
                self.processing_class,
                images,
                batch_size=self.args.per_device_eval_batch_size,
                max_new_tokens=self.args.generation_max_length or 30,
                num_beams=self.args.generation_num_beams or 1,
            )
        finally:
            model.train(was_training)

    def create_model_card(self, **kwargs) -> None:
        if not self.is_world_process_zero():
            return
        if self.model_card_template is None or not self.model_card_fields:
            return super().create_model_card(**kwargs)
        template = Path(self.model_card_template).read_text(encoding="utf-8")
        card = render_model_card(template, self.model_card_fields)
        Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
        Path(self.args.output_dir, "README.md").write_text(card, encoding="utf-8")


# -- model, processor, offset -------------------------------------------------------------------------------
def load_capdec_for_training(
    clip_model: str | None = None,
    decoder_model: str | None = None,
    init_from: str | None = None,
    train_decoder: bool | None = None,
    **config_kwargs: Any,
) -> tuple[CapDecForConditionalGeneration, CapDecProcessor]:
    """The model and processor to train: composed from a CLIP and a decoder, or continued from a CapDec folder.

    With `init_from`, the architecture (mapping type, prefix, ...) is the folder's; `config_kwargs` may only
    update the training-time fields (`noise_variance`, `noise_type`, `modality_offset`), and `train_decoder`
    freezes or unfreezes the decoder. Otherwise `config_kwargs` go to `CapDecConfig` (`mapping_type`,
    `prefix_length`, `clip_length`, `num_mapping_layers`, noise fields).

    Example:

    ```python
    >>> model, processor = load_capdec_for_training("openai/clip-vit-base-patch32", "gpt2",
    ...                                             mapping_type="transformer", noise_variance=0.016)  # doctest: +SKIP
    ```
    """
    # The noise fields are set after loading, the same way on both paths, so a wrong offset length is reported
    # as a plain ValueError naming the CLIP size rather than as a config validation error.
    noise = {
        name: config_kwargs.pop(name)
        for name in ("noise_variance", "noise_type", "modality_offset")
        if name in config_kwargs
    }
    if init_from:
        if config_kwargs:
            raise ValueError(
                f"init_from={init_from!r} fixes the architecture; do not also set {sorted(config_kwargs)} "
                "(they come from its config)."
            )
        model = CapDecForConditionalGeneration.from_pretrained(init_from)
        processor = CapDecProcessor.from_pretrained(init_from)
        if train_decoder is not None:
            model.config.train_decoder = train_decoder
            model.decoder.requires_grad_(train_decoder)
            model.freeze_frozen_parts()
    else:
        if not clip_model or not decoder_model:
            raise ValueError(
                "Give --clip_model and --decoder_model (or --init_from, an existing CapDec folder)."
            )
        if train_decoder is not None:
            config_kwargs["train_decoder"] = train_decoder
        model = CapDecForConditionalGeneration.from_clip_decoder_pretrained(
            clip_model, decoder_model, **config_kwargs
        )
        processor = CapDecProcessor.from_clip_decoder_pretrained(clip_model, decoder_model)
    offset = noise.get("modality_offset")
    if offset is not None and len(offset) != model.config.clip_projection_dim:
        raise ValueError(
            f"The modality offset has {len(offset)} values, expected {model.config.clip_projection_dim} "
            "(the CLIP projection size)."
        )
    if noise.get("noise_variance", 0) < 0:
        raise ValueError(f"noise_variance must be >= 0, got {noise['noise_variance']}.")
    for name, value in noise.items():
        setattr(
            model.config, name, value
        )  # saved with the model: the card and config record the training noise
    return model, processor


def load_modality_offset(path: str | os.PathLike) -> list[float]:
    """Read a modality offset vector (mean image embedding minus mean text embedding) from `.npy`, `.json`
    (a list, or `{"modality_offset": [...]}`) or `.safetensors` (one tensor, or one named `modality_offset`).

    Example:

    ```python
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "offset.json"
    >>> _ = path.write_text("[0.5, -0.25]")
    >>> load_modality_offset(path)
    [0.5, -0.25]
    ```
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Modality offset file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        vector = np.load(path, allow_pickle=False)
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        vector = np.asarray(data["modality_offset"] if isinstance(data, dict) else data, dtype=np.float64)
    elif suffix == ".safetensors":
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
        if "modality_offset" in tensors:
            vector = tensors["modality_offset"]
        elif len(tensors) == 1:
            vector = next(iter(tensors.values()))
        else:
            raise ValueError(f"{path} holds {sorted(tensors)}; name the offset tensor 'modality_offset'.")
    else:
        raise ValueError(f"Cannot read a modality offset from {path}: use .npy, .json or .safetensors.")
    vector = np.asarray(vector, dtype=np.float64).squeeze()
    if vector.ndim != 1:
        raise ValueError(f"The modality offset in {path} must be a vector, got shape {vector.shape}.")
    return vector.tolist()


# -- model card ---------------------------------------------------------------------------------------------
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


def _is_hub_id(name: str | None) -> bool:
    return (
        bool(name) and not os.path.exists(name) and name.count("/") <= 1 and not name.startswith((".", "/"))
    )


def model_card_fields(
    model: CapDecForConditionalGeneration,
    args: CapDecTrainingArguments,
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

    Example:

    ```python
    >>> fields = model_card_fields(model, args, clip_model="openai/clip-vit-base-patch32", decoder_model="gpt2",
    ...     mode="text", corpus="data/coco_train_text", cleaning_summary=report.summary(),
    ...     corpus_size=report.kept, trained_steps=trainer.state.global_step, trained_epochs=trainer.state.epoch)  # doctest: +SKIP
    ```
    """
    config: CapDecConfig = model.config
    if mode == "text":
        training_mode = "text only (CapDec): the decoder never saw an image during training"
        if config.noise_variance > 0:
            std = math.sqrt(config.noise_variance)
            noise = f"{config.noise_type}, ε = {config.noise_variance:g} (std {std:.3f})"
        else:
            noise = "none (ε = 0)"
    else:
        training_mode = "supervised on CLIP image embeddings (the ClipCap reference)"
        noise = "none (supervised training on image embeddings)"
    if config.mapping_type == "transformer":
        mapper = (
            f"transformer, {config.num_mapping_layers} layers, {config.num_mapping_heads} heads, "
            f"clip_length {config.clip_length}"
        )
    else:
        mapper = "MLP (Linear → Tanh → Linear)"
    hub_bases = [name for name in (clip_model, decoder_model) if _is_hub_id(name)]
    base_model = "base_model:\n" + "".join(f"- {name}\n" for name in hub_bases) if hub_bases else ""
    hyperparameters = {
        "learning rate": f"{args.learning_rate:g}",
        "scheduler": f"{getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)}, "
        f"{args.warmup_steps:g} warmup steps",
        "batch size": f"{args.per_device_train_batch_size} per device × {args.world_size} "
        f"process{'es' if args.world_size > 1 else ''} × {args.gradient_accumulation_steps} accumulation",
        "epochs": f"{trained_epochs:.3g}",
        "optimizer steps": str(trained_steps),
        "weight decay": f"{args.weight_decay:g}",
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "seed": str(args.seed),
    }
    if metrics:
        scores = {name.removeprefix("eval_"): value for name, value in metrics.items()}
        names = [
            name
            for name in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
            if name in scores
        ]
        metrics_table = (
            "| "
            + " | ".join(names)
            + " |\n|"
            + "---|" * len(names)
            + "\n| "
            + " | ".join(f"{100 * scores[name]:.1f}" for name in names)
            + " |\n\n"
            f"Scores × 100 on {eval_set} (COCO caption toolkit; CIDEr is CIDEr-D), greedy decoding unless "
            f"`generation_num_beams` was set (here {args.generation_num_beams or 1} beam(s))."
        )
    else:
        metrics_table = "No evaluation was run for this model (no eval set was given to `train_capdec.py`)."
    return {
        "model_name": Path(args.hub_model_id or args.output_dir).name,
        "repo_id": args.hub_model_id or str(args.output_dir),
        "base_model_metadata": base_model,
        "training_mode": training_mode,
        "clip_model": clip_model,
        "decoder_model": decoder_model,
        "corpus": corpus,
        "corpus_size": f"{corpus_size:,}",
        "cleaning": cleaning_summary,
        "noise": noise,
        "modality_offset": "yes" if config.modality_offset is not None else "no",
        "mapper": mapper,
        "prefix_length": str(config.prefix_length),
        "decoder_training": "fine-tuned with the mapper"
        if config.train_decoder
        else "frozen (only the mapper trains)",
        "hyperparameters": "\n".join(f"| {name} | {value} |" for name, value in hyperparameters.items()),
        "metrics_table": metrics_table,
    }


__all__ = [
    "CapDecNoiseCallback",
    "CapDecTrainer",
    "CapDecTrainingArguments",
    "load_capdec_for_training",
    "load_modality_offset",
    "model_card_fields",
    "render_model_card",
]
