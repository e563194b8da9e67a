"""Trainer pieces for CapDec: a Trainer that evaluates by captioning (and embeds captions on the fly when asked),
the callback that keeps the collator's noise epoch in step, and model loading for training."""

import json
import logging
import math
import os
import shutil
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, speed_metrics

from ..convert.open_clip import resolve_clip_model
from ..modeling_capdec import CapDecForConditionalGeneration
from ..processing_capdec import CapDecProcessor, check_processor_matches_model
from .collator import CapDecDataCollator
from .data import prepare_training_dataset
from .lora import is_lora_model, save_lora_code
from .model_card import MODEL_CARD_TEMPLATE, model_card_fields, render_model_card
from .noise import EXAMPLE_ID_COLUMN, TRAINING_NOISE_FILE, save_training_noise, training_noise_tensors
from .noise_estimate import NoiseEstimate, estimate_noise_from_data
from .streaming import (
    StreamingCaptions,
    StreamingCleaningReport,
    StreamingReportCallback,
    check_streaming_arguments,
    prepare_streaming_dataset,
)
from .text_memory import text_memory_for_run

logger = logging.getLogger(__name__)


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


class NonFiniteTrainingError(FloatingPointError):
    """The loss or the gradients of a training step were NaN or infinite; the message names the step."""


class NonFiniteGuardCallback(TrainerCallback):
    """Stops training, before the optimizer step, at the first step whose gradients are NaN or infinite.

    A NaN loss makes NaN gradients, and one optimizer step with them turns every weight into NaN while the run
    goes on (Trainer's `logging_nan_inf_filter` even hides the loss). Checking the gradients before the step
    keeps the weights and the checkpoints already written as they were; the error names the step, the first
    parameters hit and the last checkpoint to resume from. Under `fp16` an overflow is the GradScaler's business
    (it skips the step and lowers the scale), so the check is off there.

    Example:

    ```python
    >>> trainer = CapDecTrainer(..., callbacks=[NonFiniteGuardCallback()])  # doctest: +SKIP (CapDecTrainer adds it)
    ```
    """

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is None or args.fp16:
            return control
        named = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
        if not named:
            return control
        # One device-to-host sync per optimizer step: a flag per tensor, reduced on the device.
        finite = torch.stack([grad.isfinite().all() for _, grad in named])
        if bool(finite.all()):
            return control
        bad = [name for (name, _), ok in zip(named, finite.tolist(), strict=True) if not ok]
        step = state.global_step + 1
        checkpoint = last_complete_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
        kept = (
            f"the last good checkpoint is {checkpoint} (resume with --resume_from_checkpoint last)"
            if checkpoint
            else "no checkpoint was written before it"
        )
        raise NonFiniteTrainingError(
            f"Training stopped at step {step}: the loss or gradients are not finite (NaN or inf) in "
            f"{len(bad)} parameters ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}). The optimizer step "
            f"was not taken, so no NaN reached the weights; {kept}. Lower the learning rate, set "
            "--max_grad_norm, or check the data and noise settings."
        )


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

    Pass the eval set (`evaluation.eval_sets.load_eval_set`, a `CaptionEvalSet`) as `eval_dataset`.
    Each evaluation generates one caption per image (split across processes, gathered in order), computes
    `args.eval_metrics` with `compute_caption_metrics` and logs them with the `eval_` prefix. The last
    predictions are kept in `last_eval_predictions` (`{image_id: caption}`), with `last_eval_metrics` and the
    `last_eval_step` they were computed at.

    `create_model_card` writes the CapDec card from `model_card_template` and `model_card_fields` (also when
    pushing to the Hub), instead of Trainer's generic one.

    A `training.streaming.StreamingCaptions` training set (`--streaming`) has its Trainer settings checked
    (`check_streaming_arguments`: `max_steps`, no dataloader workers, no batch dispatching) and its cleaning counts
    logged as it is read (`StreamingReportCallback`).

    Batches of a collator with `embed_on_the_fly=True` carry CLIP token ids instead of embeddings: each step
    embeds them with the model's frozen CLIP on the training device and noises them with the collator's
    `add_noise`, so the noise is the collator's in both modes.

    Example:

    ```python
    >>> trainer = CapDecTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_set,
    ...                         data_collator=collator, processing_class=processor)  # doctest: +SKIP
    >>> trainer.evaluate()["eval_CIDEr"]  # doctest: +SKIP
    0.91
    ```
    """

    def __init__(self, *args, model_card_template: str | os.PathLike | None = MODEL_CARD_TEMPLATE, **kwargs):
        # Trainer's positional order: model, args, data_collator, train_dataset. A stream needs its settings before
        # Trainer builds the accelerator (train_capdec.py checks them earlier; this covers direct use).
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        train_dataset = kwargs.get("train_dataset", args[3] if len(args) > 3 else None)
        if isinstance(train_dataset, StreamingCaptions) and training_args is not None:
            check_streaming_arguments(training_args)
        super().__init__(*args, **kwargs)
        if not any(
            isinstance(callback, NonFiniteGuardCallback) for callback in self.callback_handler.callbacks
        ):
            self.add_callback(NonFiniteGuardCallback())
        if isinstance(self.train_dataset, StreamingCaptions):  # a stream's cleaning counts, as it is read
            self.add_callback(StreamingReportCallback(self.train_dataset.report))
        self.model_card_template = model_card_template
        self.model_card_fields: dict[str, str] = {}
        self.last_eval_predictions: dict[Any, str] | None = None
        self.last_eval_metrics: dict[str, float] = {}
        self.last_eval_step: int | None = None

    def compute_loss(self, model, inputs, *args, **kwargs):
        if "clip_input_ids" in inputs and isinstance(self.data_collator, CapDecDataCollator):
            inputs = self._embed_captions(model, inputs)
        return super().compute_loss(model, inputs, *args, **kwargs)

    def _embed_captions(self, model, inputs: dict[str, Any]) -> dict[str, Any]:
        inputs = dict(inputs)
        clip_input_ids = inputs.pop("clip_input_ids")
        clip_attention_mask = inputs.pop("clip_attention_mask", None)
        example_ids = inputs.pop(EXAMPLE_ID_COLUMN, None)
        embeds = self.accelerator.unwrap_model(model).get_text_embeds(clip_input_ids, clip_attention_mask)
        if self.data_collator.adds_noise:
            ids = example_ids.tolist() if example_ids is not None else None
            embeds = self.data_collator.add_noise(embeds.float(), ids)
        inputs["clip_embeds"] = embeds
        return inputs

    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        eval_set = eval_dataset if eval_dataset is not None else self.eval_dataset
        if not hasattr(eval_set, "references"):  # not a caption eval set: Trainer's loss evaluation
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        from accelerate.utils import broadcast_object_list, gather_object

        # The evaluation layer (and its Java toolkit) is needed only when a caption eval set is given.
        from ..evaluation.captioning import caption_images
        from ..evaluation.metrics import compute_caption_metrics

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

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        model = self.accelerator.unwrap_model(self.model)
        if self.args.should_save and is_lora_model(model):
            # peft's save_pretrained writes the adapter only; the code travels with it as with a plain save.
            save_lora_code(model, output_dir or self.args.output_dir)
        collator = self.data_collator
        if self.args.should_save and isinstance(collator, CapDecDataCollator):
            # The measured map and noise shape (--noise_map, --noise_shape measured) beside the weights: a memory
            # attached later maps its captions as training did, and the run's noise can be inspected.
            save_training_noise(
                output_dir or self.args.output_dir, collator.modality_map, collator.noise_shape
            )

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

    With `init_from`, the architecture (mapping type, prefix, ...) is the folder's and no `config_kwargs` may be
    given; `train_decoder` freezes or unfreezes the decoder. Otherwise `config_kwargs` go to `CapDecConfig`
    (`mapping_type`, `prefix_length`, `clip_length`, `num_mapping_layers`).

    Example:

    ```python
    >>> model, processor = load_capdec_for_training("openai/clip-vit-base-patch32", "gpt2",
    ...                                             mapping_type="transformer")  # doctest: +SKIP
    ```
    """
    if init_from:
        if config_kwargs:
            raise ValueError(
                f"init_from={init_from!r} fixes the architecture; do not also set {sorted(config_kwargs)} "
                "(they come from its config)."
            )
        model = CapDecForConditionalGeneration.from_pretrained(init_from)
        processor = CapDecProcessor.from_pretrained(init_from)
        if model.config.text_memory_size:
            # The memory is the embeddings of the folder's training captions; kept, this run's model would
            # project onto a corpus it was not trained on. --text_memory_size builds one from this run's.
            logger.warning(
                "init_from=%r holds a text memory of %d rows from its own training corpus: dropped. Give "
                "--text_memory_size N to store one built from this run's corpus.",
                init_from,
                model.config.text_memory_size,
            )
            model.set_text_memory(None)
        if train_decoder is not None:
            model.config.train_decoder = train_decoder
            model.decoder.requires_grad_(train_decoder)
            model.freeze_frozen_parts()
        check_processor_matches_model(processor, model)
        return model, processor
    if not clip_model or not decoder_model:
        raise ValueError("Give --clip_model and --decoder_model (or --init_from, an existing CapDec folder).")
    if train_decoder is not None:
        config_kwargs["train_decoder"] = train_decoder
    clip_model = resolve_clip_model(
        clip_model
    )  # an open_clip checkpoint (the paper's RN50x4) is converted first
    model = CapDecForConditionalGeneration.from_clip_decoder_pretrained(
        clip_model, decoder_model, **config_kwargs
    )
    processor = CapDecProcessor.from_clip_decoder_pretrained(clip_model, decoder_model)
    # Before hours of embedding and training: the tokenizers must be these models' own.
    check_processor_matches_model(processor, model)
    return model, processor


def load_modality_offset(path: str | os.PathLike, expected_size: int | None = None) -> list[float]:
    """Read a modality offset vector (mean image embedding minus mean text embedding) from `.npy`, `.json`
    (a list, or `{"modality_offset": [...]}`) or `.safetensors` (one tensor, or one named `modality_offset`).
    With `expected_size` (the CLIP projection size), a vector of another length or with a non-finite value raises.

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
    if not np.isfinite(vector).all():
        raise ValueError(f"The modality offset in {path} holds values that are not finite (inf or NaN).")
    if expected_size is not None and len(vector) != expected_size:
        raise ValueError(
            f"The modality offset in {path} has {len(vector)} values, expected {expected_size} (the CLIP "
            "projection size)."
        )
    return vector.tolist()


# -- a run of train_capdec.py -----------------------------------------------------------------------------
def setup_logging(training_args: Any) -> None:
    """Log to stdout at the process's level (Trainer's `--log_level`), for our loggers, datasets and transformers."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    level = training_args.get_process_log_level()
    for name in ("train_capdec", "modeling_capdec"):
        logging.getLogger(name).setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def check_run_arguments(data_args: Any, training_args: Any, model_args: Any = None) -> None:
    """Checks that would otherwise fail hours into a run (single settings are checked when parsed:
    `commands.recipes.check_settings`)."""
    if data_args.train_source is None:
        raise ValueError("Give the training corpus: --train_file, --dataset_dir or --dataset_name.")
    if data_args.eval_source:
        if shutil.which("java") is None:
            from ..evaluation.metrics import JAVA_INSTALL_HINT

            raise RuntimeError(JAVA_INSTALL_HINT)
    elif training_args.eval_strategy != "no":
        raise ValueError(
            f"eval_strategy={training_args.eval_strategy.value!r} needs an eval set: give --eval_file or "
            "--eval_dataset_dir (one row per image, with images and reference captions)."
        )
    if training_args.dataloader_persistent_workers and training_args.dataloader_num_workers > 0:
        raise ValueError(
            "dataloader_persistent_workers would keep the collator's noise epoch from advancing (each epoch "
            "must draw fresh noise): leave it off."
        )
    applied = getattr(training_args, "speed_defaults_applied", None)
    if data_args.streaming and applied and "dataloader_num_workers" in applied:
        # A stream is read in the training process (check_streaming_arguments): that speed default does not apply.
        del applied["dataloader_num_workers"]
        training_args.dataloader_num_workers = 0
    if applied:
        logger.warning(
            "CUDA speed defaults: %s (--speed_defaults false keeps Trainer's defaults).",
            ", ".join(f"--{name} {value}" for name, value in applied.items()),
        )
    auto_noise = training_args.noise_variance == "auto"
    if data_args.streaming:
        check_streaming_arguments(training_args)
        # Both read the corpus before (ε) or after (memory) training, which a stream read once cannot give.
        if auto_noise:
            raise ValueError(
                "--noise_variance auto with --streaming: the estimate needs the corpus before training. Run "
                "`capdec-estimate-noise` on a sample of it and pass the printed ε as --noise_variance."
            )
        if model_args is not None and model_args.text_memory_size:
            raise ValueError(
                "--text_memory_size with --streaming: the memory is sampled from the prepared corpus. Attach one "
                "after training with `modeling_capdec.training.text_memory.attach_text_memory`."
            )
    if data_args.mode == "supervised" and auto_noise:
        raise ValueError(
            "--noise_variance auto estimates the noise of text-only training; supervised mode adds none."
        )
    if data_args.mode == "supervised" and training_args.noise_variance > 0:
        logger.warning("Supervised mode trains on image embeddings without noise: ignoring noise_variance.")
    estimator_settings = [
        name
        for name in ("noise_estimator", "noise_images", "noise_group_column")
        if getattr(training_args, name) is not None
    ]
    if estimator_settings and not auto_noise:
        raise ValueError(
            f"{', '.join('--' + name for name in estimator_settings)} only matter(s) with --noise_variance auto "
            f"(got --noise_variance {training_args.noise_variance:g})."
        )
    measured_on_images = [  # each is measured from unlabelled images before training
        ("--noise_offset", training_args.noise_offset, "measures the modality offset"),
        ("--noise_map", training_args.noise_map, "fits the modality map"),
        ("--noise_shape measured", training_args.noise_shape == "measured", "measures the shape"),
    ]
    for flag, given, what in measured_on_images:
        if given and (not auto_noise or training_args.noise_images is None):
            raise ValueError(
                f"{flag} {what} on unlabelled images: it needs --noise_variance auto and --noise_images."
            )
    if training_args.noise_offset:
        if training_args.noise_estimator not in (None, "pseudo_pairs"):
            raise ValueError(
                f"--noise_offset estimates ε with pseudo_pairs around the shifted captions, got --noise_estimator "
                f"{training_args.noise_estimator}."
            )
        if training_args.modality_offset_file is not None:
            raise ValueError(
                "--noise_offset measures the modality offset, --modality_offset_file gives one: choose one."
            )
    if training_args.noise_map:
        if training_args.noise_estimator not in (None, "pseudo_pairs"):
            raise ValueError(
                f"--noise_map fits the map on pseudo-pairs and estimates ε around the mapped captions, got "
                f"--noise_estimator {training_args.noise_estimator}."
            )
        if training_args.noise_offset or training_args.modality_offset_file is not None:
            raise ValueError(
                "--noise_map replaces the modality offset (the map includes one): drop --noise_offset and "
                "--modality_offset_file."
            )
    if auto_noise and training_args.modality_offset_file is not None:
        # The estimators measure the gap between captions as they are and images; training would close part of it.
        raise ValueError(
            "--noise_variance auto with --modality_offset_file: ε would be measured around the captions without "
            "the offset that training adds, so the noise would also cover the distance the offset closes. Use "
            "--noise_offset with --noise_images (it measures the offset and ε around the shifted captions), or give "
            "ε as a number (`capdec-estimate-noise --noise_offset` prints it)."
        )
    if training_args.noise_shape == "measured":
        if (
            training_args.noise_estimator not in (None, "pseudo_pairs")
            or training_args.noise_type != "gaussian"
        ):
            raise ValueError(
                "--noise_shape measured shapes Gaussian noise from pseudo-pairs: it needs --noise_type gaussian and "
                f"the pseudo_pairs estimator (got {training_args.noise_type}, {training_args.noise_estimator})."
            )
    if training_args.noise_images is not None and not os.path.isdir(training_args.noise_images):
        raise FileNotFoundError(f"--noise_images: image folder not found: {training_args.noise_images}")


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why a `checkpoint-*` folder cannot be resumed from (None when it is complete).

    Trainer writes the weights, then the optimizer and RNG states, and `trainer_state.json` last; a run killed
    while saving leaves a folder without it, or with a truncated file. Complete means: `trainer_state.json`
    parses, and a weights file (`model.safetensors` or its index) is there and its safetensors header reads.
    """
    folder = Path(folder)
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no trainer_state.json (it is written last: the save was interrupted)"
    except (OSError, ValueError) as error:
        return f"trainer_state.json cannot be read ({type(error).__name__}: {error})"
    weights = [path for path in folder.glob("*.safetensors") if path.name != TRAINING_NOISE_FILE]
    if not weights and not list(folder.glob("pytorch_model*.bin")):
        return "no model weights (*.safetensors)"
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # safetensors raises its own error type for a truncated header
            return f"{path.name} cannot be read ({type(error).__name__}: {error})"
    for path in sorted([*folder.glob("*.pt"), *folder.glob("*.pth"), *folder.glob("*.bin")]):
        # torch.save writes a zip archive whose directory comes last: a truncated file has none.
        if not zipfile.is_zipfile(path):
            return f"{path.name} is truncated or not a torch file"
    return None


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete `checkpoint-<step>` folder of `output_dir` (see `checkpoint_problem`), or None;
    newer incomplete ones are skipped with a warning that says why."""
    folders = []
    for path in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.rpartition("-")[2]
        if path.is_dir() and step.isdigit():
            folders.append((int(step), path))
    for _, path in sorted(folders, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        logger.warning("Skipping the incomplete checkpoint %s: %s.", path, problem)
    return None


def checkpoint_to_resume(training_args: Any) -> str | None:
    """`--resume_from_checkpoint`: a folder, or `last` for the newest complete `checkpoint-*` of the output
    folder (a half-written one, left by a kill during a save, is skipped with a warning)."""
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint == "last":
        output_dir = training_args.output_dir
        checkpoint = last_complete_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if checkpoint is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint last: no complete checkpoint-* in {output_dir}."
            )
        logger.warning("Resuming from %s.", checkpoint)
    elif checkpoint is not None:
        if not os.path.isdir(checkpoint):
            raise FileNotFoundError(f"Checkpoint folder not found: {checkpoint}")
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            raise ValueError(
                f"Cannot resume from {checkpoint}: {problem}. Pass --resume_from_checkpoint last to take the "
                "newest complete checkpoint."
            )
    return checkpoint


def noise_estimate_inputs(data_args: Any, training_args: Any) -> dict[str, Any]:
    """What `--noise_variance auto` and `capdec-estimate-noise` embed, from the run's arguments: the keyword
    arguments of `noise_estimate.embed_for_estimate` (corpus column and groups, image folder, sample sizes, batch
    size, the training device, the seed)."""
    return {
        "caption_column": data_args.caption_column,
        "image_folder": training_args.noise_images,
        "group_column": training_args.noise_group_column,
        "max_captions": training_args.noise_estimate_captions,
        "max_images": training_args.noise_estimate_images,
        "batch_size": data_args.embedding_batch_size,
        "device": training_args.device,
        "seed": training_args.seed,
    }


def estimate_noise_for_run(
    model: Any, processor: Any, corpus: Any, data_args: Any, training_args: Any
) -> NoiseEstimate | None:
    """`--noise_variance auto`: estimate ε from the corpus (and `--noise_images`) with the run's CLIP, print the
    estimate and its inputs, and set `training_args.noise_variance` to it. None (and nothing done) otherwise.

    Example:

    ```python
    >>> estimate = estimate_noise_for_run(model, processor, corpus, data_args, training_args)  # doctest: +SKIP
    Noise from data: ε = 0.0019 (pseudo_pairs: cosine 0.9443, d = 64, 20000 captions, 1000 images)
    ```
    """
    if training_args.noise_variance != "auto":
        return None
    estimate = estimate_noise_from_data(
        model,
        processor,
        corpus,
        estimator=training_args.noise_estimator,
        shift_by_offset=training_args.noise_offset,
        measure_shape=training_args.noise_shape == "measured",
        map_captions=training_args.noise_map,
        **noise_estimate_inputs(data_args, training_args),
    )
    if training_args.process_index == 0:  # at any log level, as the corpus cleaning
        print(f"Noise from data: {estimate.summary()}", flush=True)
    training_args.noise_variance = estimate.noise_variance
    return estimate


def check_resumed_noise(
    collator: CapDecDataCollator, noise_estimate: NoiseEstimate | None, checkpoint: str | None
) -> None:
    """`--noise_variance auto` with `--resume_from_checkpoint`: the noise is measured again before training, and
    must be the one the checkpoint trained with (ε, the modality offset in its `config.json`; the map and noise
    shape in its `training_noise.safetensors`). If the corpus or `--noise_images` changed since, the rest of the run
    would silently train with other noise: this raises, naming what differs. Nothing is checked otherwise.
    """
    if checkpoint is None or noise_estimate is None:
        return
    checkpoint = Path(checkpoint)
    differences = []
    config_path = checkpoint / "config.json"  # absent from a LoRA checkpoint, which holds the adapters only
    saved = {}
    if config_path.is_file():
        saved = json.loads(config_path.read_text()).get("training_noise") or {}
    if "noise_variance" in saved and not math.isclose(
        saved["noise_variance"], collator.noise_variance, rel_tol=1e-4
    ):
        differences.append(
            f"ε {collator.noise_variance:.6g} now, {saved['noise_variance']:.6g} in the checkpoint"
        )
    if "modality_offset" in saved:
        offset_then, offset_now = saved["modality_offset"], collator.modality_offset
        if (offset_then is None) != (offset_now is None) or (
            offset_now is not None
            and not torch.allclose(torch.tensor(offset_now), torch.tensor(offset_then), atol=1e-6)
        ):
            differences.append("the modality offset")
    noise_file = checkpoint / TRAINING_NOISE_FILE
    if noise_file.is_file():
        from safetensors.torch import load_file

        then = load_file(str(noise_file))
        now = training_noise_tensors(collator.modality_map, collator.noise_shape)
        for name in sorted(set(then) | set(now)):
            if (
                name not in then
                or name not in now
                or not torch.allclose(now[name], then[name], rtol=1e-4, atol=1e-6)
            ):
                differences.append(f"{name} ({TRAINING_NOISE_FILE})")
    else:  # a checkpoint written before the tensors were saved: what its config records of them
        settings_now = collator.settings()
        for name in ("modality_map", "noise_shape_effective_rank"):
            if name in saved and saved[name] != settings_now[name]:
                differences.append(f"{name} {settings_now[name]} now, {saved[name]} in the checkpoint")
    if differences:
        raise ValueError(
            f"Cannot resume from {checkpoint}: the noise measured now (--noise_variance auto) is not the one it "
            f"trained with: {'; '.join(differences)}. The corpus, --noise_images or a --noise_* flag changed since "
            "the checkpoint was written: restore them to resume, or start a new run (another --output_dir)."
        )


def collator_for_run(
    processor: Any,
    model: Any,
    data_args: Any,
    training_args: Any,
    noise_estimate: NoiseEstimate | None = None,
) -> CapDecDataCollator:
    """The run's collator (the one place noise is drawn; its settings are checked here, in seconds), and the noise
    recorded in the model's config as `training_noise` (metadata for config.json and the model card), with the
    estimate and its inputs when ε was estimated from the data (`--noise_variance auto`)."""
    offset_file = training_args.modality_offset_file
    if offset_file:
        offset = load_modality_offset(offset_file, model.config.clip_projection_dim)
    elif noise_estimate is not None and noise_estimate.shifted:
        offset = noise_estimate.modality_offset  # --noise_offset: the offset ε was measured around
    else:
        offset = None
    collator = CapDecDataCollator(
        processor,
        noise_variance=training_args.noise_variance if data_args.mode == "text" else 0.0,
        noise_type=training_args.noise_type,
        modality_offset=offset,
        noise_shape=noise_estimate.noise_shape if noise_estimate is not None else None,
        modality_map=noise_estimate.modality_map.as_tensors()
        if noise_estimate is not None and noise_estimate.modality_map is not None
        else None,
        mode=data_args.mode,
        embed_on_the_fly=data_args.embed_on_the_fly,
        seed=training_args.seed if training_args.noise_seed is None else training_args.noise_seed,
        **data_args.padding_kwargs(training_args.torch_compile),
    )
    model.config.training_noise = collator.settings()
    if noise_estimate is not None:
        model.config.training_noise["estimate"] = noise_estimate.as_record()
    return collator


def training_corpus(
    corpus: Any, model: Any, processor: Any, data_args: Any, training_args: Any
) -> tuple[Any, Any]:
    """The run's training set and its cleaning report, printed on process 0 at any log level (what cleaning
    drops is never silent).

    By default the corpus is cleaned, tokenised and embedded once (`training.data.prepare_training_dataset`,
    cached on disk: process 0 prepares it while the others wait, then they load the cache). With `--streaming` it
    is a `training.streaming.StreamingCaptions`, read, cleaned and counted as training consumes it, shuffled with
    `--streaming_shuffle_buffer` rows seeded by `--data_seed` (else `--seed`); its report fills up as it is read.
    """
    if data_args.streaming:
        seed = training_args.seed if training_args.data_seed is None else training_args.data_seed
        train_dataset, cleaning = prepare_streaming_dataset(
            corpus, model, processor, seed=seed, **data_args.streaming_kwargs()
        )
    else:
        with training_args.main_process_first(desc="preparing the corpus"):
            train_dataset, cleaning = prepare_training_dataset(
                corpus, model, processor, device=training_args.device, **data_args.preparation_kwargs()
            )
    if training_args.process_index == 0 and data_args.streaming:
        print(
            f"Corpus streamed (shuffle buffer {data_args.streaming_shuffle_buffer} rows, seed {seed}): captions are "
            "cleaned and tokenised as training reads them and embedded with CLIP in each step (--embed_on_the_fly "
            "is implied). Corpus cleaning: counted as the stream is read (logged with the loss, printed at the end).",
            flush=True,
        )
    elif training_args.process_index == 0:
        print(f"Corpus cleaning: {cleaning.summary()}", flush=True)
    return train_dataset, cleaning


def attach_memory_for_run(trainer: CapDecTrainer, model_args: Any) -> None:
    """`--text_memory_size N`, after training: store N CLIP text embeddings of distinct training captions (seeded by
    `--seed`) in the model, to be saved with its weights. Not during training, where DDP would broadcast the buffer
    at every step. Nothing without it."""
    if not model_args.text_memory_size:
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    memory = text_memory_for_run(
        model,
        trainer.processing_class,
        trainer.train_dataset,
        model_args.text_memory_size,
        trainer.args.seed,
        modality_map=getattr(trainer.data_collator, "modality_map", None),
    )
    model.set_text_memory(memory)
    if trainer.is_world_process_zero():
        print(f"Text memory: {memory.shape[0]} caption embeddings stored with the model.", flush=True)


def finish_run(
    trainer: CapDecTrainer, result: Any, model_args: Any, data_args: Any, cleaning: Any, eval_set: Any
) -> None:
    """After `trainer.train()`: attach the text memory (`--text_memory_size`), save the Hub-ready folder and the
    state, score the eval set (unless the last evaluation already scored these weights), write the predictions and
    the model card, push if asked."""
    from ..evaluation.captioning import write_coco_results

    args = trainer.args
    streamed = isinstance(cleaning, StreamingCleaningReport)
    if streamed:  # the stream's cleaning counts over the run, in train_results.json / all_results.json
        result.metrics.update(cleaning.metrics())
    attach_memory_for_run(trainer, model_args)  # --text_memory_size
    trainer.save_model()  # model.save_pretrained (weights, config, code) + processor.save_pretrained
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    metrics = {}
    if eval_set is not None:
        already_scored = (
            trainer.last_eval_step == trainer.state.global_step and not args.load_best_model_at_end
        )
        metrics = trainer.last_eval_metrics if already_scored else trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        if trainer.is_world_process_zero():
            write_coco_results(trainer.last_eval_predictions, Path(args.output_dir, "eval_predictions.json"))
    model = trainer.accelerator.unwrap_model(trainer.model)
    config = model.config
    lora = None
    if is_lora_model(model):
        lora_config = model.peft_config["default"]
        lora = {
            "r": lora_config.r,
            "alpha": lora_config.lora_alpha,
            "target_modules": model_args.lora_target_modules,
            "base": lora_config.base_model_name_or_path,
        }
    corpus_size = cleaning.kept
    if streamed:  # the examples trained on (the stream is read one batch ahead, by accelerate's dataloader)
        step_size = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        corpus_size = trainer.state.global_step * step_size
    trainer.model_card_fields = model_card_fields(
        config,
        args,
        clip_model=model_args.clip_model or config.clip_config.name_or_path or "CLIP",
        decoder_model=model_args.decoder_model or config.text_config.name_or_path or "decoder",
        mode=data_args.mode,
        corpus=data_args.train_source,
        cleaning_summary=cleaning.summary(),
        corpus_size=corpus_size,
        trained_steps=trainer.state.global_step,
        # Trainer's epoch of a stream is the fraction of max_steps done; the passes over the stream are the epochs.
        trained_epochs=f"streamed: {cleaning.passes} complete passes, {cleaning.rows} rows read"
        if streamed
        else trainer.state.epoch,
        eval_set=data_args.eval_source,
        metrics=metrics,
        hub_dataset=data_args.dataset_name,
        license=args.license,
        lora=lora,
        init_from=model_args.init_from,
    )
    trainer.create_model_card()
    if args.push_to_hub:
        trainer.push_to_hub()


__all__ = [
    "attach_memory_for_run",
    "CapDecNoiseCallback",
    "CapDecTrainer",
    "check_resumed_noise",
    "collator_for_run",
    "estimate_noise_for_run",
    "noise_estimate_inputs",
    "NonFiniteGuardCallback",
    "NonFiniteTrainingError",
    "check_run_arguments",
    "checkpoint_problem",
    "checkpoint_to_resume",
    "last_complete_checkpoint",
    "finish_run",
    "load_capdec_for_training",
    "load_modality_offset",
    "setup_logging",
    "training_corpus",
]
