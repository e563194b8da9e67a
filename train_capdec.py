"""Train CapDec with the Hugging Face Trainer: text-only (noise-injected CLIP text embeddings) or supervised.

    # a recipe (JSON or YAML), optionally followed by overrides
    python train_capdec.py configuration/coco_text_only.json
    python train_capdec.py configuration/coco_text_only.json --max_steps 100 --output_dir outputs/try
    # everything on the command line
    python train_capdec.py --clip_model openai/clip-vit-base-patch32 --decoder_model gpt2 \\
        --train_file captions.jsonl --caption_column caption --noise_variance 0.016 \\
        --output_dir out --num_train_epochs 10 --per_device_train_batch_size 40 --bf16
    # several GPUs, and resuming
    accelerate launch --num_processes 8 train_capdec.py configuration/coco_text_only.json
    python train_capdec.py configuration/coco_text_only.json --resume_from_checkpoint out/checkpoint-3000
    python train_capdec.py configuration/coco_text_only.json --resume_from_checkpoint last

The output folder is Hub-ready: weights, config and code (loads with `trust_remote_code` where this package is
not installed), the processor, and a README.md model card filled from `model_card.md`.
"""

import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import datasets
import transformers
import yaml
from transformers import HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

from modeling_capdec.collator_capdec import CapDecDataCollator
from modeling_capdec.data_capdec import load_dataset_source, load_eval_set, prepare_training_dataset
from modeling_capdec.evaluation_capdec import write_coco_results
from modeling_capdec.training_capdec import (
    CapDecNoiseCallback,
    CapDecTrainer,
    CapDecTrainingArguments,
    load_capdec_for_training,
    load_modality_offset,
    model_card_fields,
)

logger = logging.getLogger("train_capdec")
MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "model_card.md"
RECIPE_SUFFIXES = (".json", ".yaml", ".yml")


@dataclass
class ModelArguments:
    clip_model: str | None = field(
        default=None,
        metadata={"help": "CLIP checkpoint (Hub name or folder), e.g. openai/clip-vit-base-patch32."},
    )
    decoder_model: str | None = field(default=None, metadata={"help": "Causal LM checkpoint, e.g. gpt2."})
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "An existing CapDec folder to continue from (its architecture; replaces clip/decoder)."
        },
    )
    mapping_type: Literal["mlp", "transformer"] | None = field(
        default=None, metadata={"help": "Mapping network (default: transformer, as the paper's COCO model)."}
    )
    prefix_length: int | None = field(default=None, metadata={"help": "Prefix vectors (default 40)."})
    clip_length: int | None = field(
        default=None,
        metadata={"help": "Tokens the CLIP embedding expands to, transformer mapper (default 40)."},
    )
    num_mapping_layers: int | None = field(
        default=None, metadata={"help": "Transformer mapper blocks (default 8)."}
    )
    train_decoder: bool = field(
        default=True,
        metadata={"help": "Fine-tune the decoder too; --no_train_decoder is the paper's only_prefix."},
    )


@dataclass
class DataArguments:
    train_file: str | None = field(
        default=None, metadata={"help": "Caption corpus file: .json/.jsonl/.csv/.tsv/.txt/.parquet."}
    )
    dataset_dir: str | None = field(
        default=None, metadata={"help": "A save_to_disk corpus folder (processing/)."}
    )
    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset name."})
    dataset_config: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    train_split: str = field(
        default="train", metadata={"help": "Split of a dataset folder/name to train on."}
    )
    caption_column: str = field(
        default="caption", metadata={"help": "Column with a caption (string) or captions (list) per row."}
    )
    max_caption_tokens: int = field(
        default=64,
        metadata={"help": "Longer captions are truncated to this many decoder tokens (eos added)."},
    )
    mode: Literal["text", "supervised"] = field(
        default="text",
        metadata={
            "help": "text: CapDec (noised CLIP text embeddings); supervised: image embeddings (ClipCap)."
        },
    )
    image_column: str | None = field(
        default=None, metadata={"help": "Supervised mode: the corpus column with images or image paths."}
    )
    embed_on_the_fly: bool = field(
        default=False,
        metadata={"help": "Embed captions with CLIP in every step instead of precomputing (huge corpora)."},
    )
    embedding_batch_size: int = field(
        default=256, metadata={"help": "Batch size of the CLIP precomputation."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for cleaning and tokenisation."}
    )
    pad_to_multiple_of: int | None = field(
        default=None,
        metadata={
            "help": "Pad each batch's captions to a multiple of this (default: to the longest caption only). On an "
            "H100 the first batch of each new length builds attention plans (0.06-0.8 s, once per length), but "
            "later steps were 5-15% faster with exact lengths than with multiples of 8 (benchmarks/README.md)."
        },
    )
    cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "datasets cache for the corpus and CapDec's embedding files (default HF_DATASETS_CACHE)."
        },
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute cached embeddings."})
    eval_file: str | None = field(
        default=None, metadata={"help": "Eval set file: one row per image, image + captions columns."}
    )
    eval_dataset_dir: str | None = field(
        default=None,
        metadata={"help": "Eval set save_to_disk folder (e.g. from python -m processing.karpathy)."},
    )
    eval_split: str = field(default="test", metadata={"help": "Split of the eval dataset folder."})
    eval_image_column: str | None = field(
        default=None,
        metadata={"help": "Eval images or image paths (default: image, image_path, ... if present)."},
    )
    eval_captions_column: str = field(
        default="captions", metadata={"help": "Eval reference captions (a list)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on the first N images only."}
    )


@dataclass
class NoiseArguments:
    noise_variance: float = field(
        default=0.016, metadata={"help": "ε, the variance of the Gaussian noise (std sqrt(ε)); 0 = no noise."}
    )
    noise_type: Literal["gaussian", "uniform"] = field(
        default="gaussian", metadata={"help": "gaussian, or uniform in the ball of radius sqrt(ε)."}
    )
    modality_offset_file: str | None = field(
        default=None,
        metadata={"help": "Vector added to text embeddings in training (.npy/.json/.safetensors)."},
    )
    noise_seed: int | None = field(default=None, metadata={"help": "Seed of the noise (default: --seed)."})


ARGUMENT_CLASSES = (ModelArguments, DataArguments, NoiseArguments, CapDecTrainingArguments)


def parse_arguments(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, NoiseArguments, CapDecTrainingArguments]:
    """Parse the command line; a first argument ending in .json/.yaml/.yml is a recipe whose values become the
    defaults, which later command-line flags override. Keys starting with "_" are comments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    if argv and argv[0].endswith(RECIPE_SUFFIXES) and not argv[0].startswith("-"):
        recipe_path = Path(argv.pop(0))
        if not recipe_path.is_file():
            raise FileNotFoundError(f"Recipe not found: {recipe_path}")
        text = recipe_path.read_text(encoding="utf-8")
        # PyYAML (YAML 1.1) would read JSON's 2e-5 as a string; argparse converts string defaults anyway.
        recipe = json.loads(text) if recipe_path.suffix == ".json" else (yaml.safe_load(text) or {})
        recipe = {key: value for key, value in recipe.items() if not key.startswith("_")}
        known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls) if f.init}
        unknown = sorted(set(recipe) - known)
        if unknown:
            raise ValueError(f"{recipe_path} has unknown keys {unknown}.")
        parser.set_defaults(**recipe)
    model_args, data_args, noise_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, noise_args, training_args


def main(argv: list[str] | None = None) -> CapDecTrainer:
    model_args, data_args, noise_args, training_args = parse_arguments(argv)
    _setup_logging(training_args)
    _check_arguments(data_args, training_args)
    resume_from_checkpoint = _checkpoint_to_resume(training_args)
    set_seed(training_args.seed)

    # 1. Data: the caption corpus and, optionally, an image-caption eval set.
    corpus = load_dataset_source(
        data_args.train_file,
        data_args.dataset_dir,
        data_args.dataset_name,
        data_args.dataset_config,
        split=data_args.train_split,
        cache_dir=data_args.cache_dir,
        text_column=data_args.caption_column,
    )
    eval_set = None
    if data_args.eval_file or data_args.eval_dataset_dir:
        eval_set = load_eval_set(
            data_args.eval_file,
            data_args.eval_dataset_dir,
            split=data_args.eval_split,
            image_column=data_args.eval_image_column,
            captions_column=data_args.eval_captions_column,
            max_samples=data_args.max_eval_samples,
            cache_dir=data_args.cache_dir,
        )

    # 2. Model and processor; the noise settings are recorded in the saved config.
    noise_variance = noise_args.noise_variance
    if data_args.mode == "supervised" and noise_variance > 0:
        logger.warning("Supervised mode trains on image embeddings without noise: ignoring noise_variance.")
        noise_variance = 0.0
    modality_offset = (
        load_modality_offset(noise_args.modality_offset_file) if noise_args.modality_offset_file else None
    )
    architecture = {
        name: getattr(model_args, name)
        for name in ("mapping_type", "prefix_length", "clip_length", "num_mapping_layers")
        if getattr(model_args, name) is not None
    }
    model, processor = load_capdec_for_training(
        model_args.clip_model,
        model_args.decoder_model,
        model_args.init_from,
        train_decoder=model_args.train_decoder,
        noise_variance=noise_variance,
        noise_type=noise_args.noise_type,
        modality_offset=modality_offset,
        **architecture,
    )

    # 3. Clean, tokenise and embed once (cached on disk; other processes wait and load the cache).
    with training_args.main_process_first(desc="preparing the corpus"):
        train_dataset, cleaning = prepare_training_dataset(
            corpus,
            model,
            processor,
            mode=data_args.mode,
            caption_column=data_args.caption_column,
            image_column=data_args.image_column,
            max_caption_tokens=data_args.max_caption_tokens,
            embed_on_the_fly=data_args.embed_on_the_fly,
            embedding_batch_size=data_args.embedding_batch_size,
            num_proc=data_args.preprocessing_num_workers,
            cache_dir=data_args.cache_dir,
            overwrite_cache=data_args.overwrite_cache,
            device=training_args.device,
        )

    # 4. Trainer: the collator draws fresh noise for every batch.
    collator = CapDecDataCollator(
        processor,
        noise_variance=model.config.noise_variance,
        noise_type=model.config.noise_type,
        modality_offset=model.config.modality_offset,
        mode=data_args.mode,
        embed_on_the_fly=data_args.embed_on_the_fly,
        seed=training_args.seed if noise_args.noise_seed is None else noise_args.noise_seed,
        pad_to_multiple_of=data_args.pad_to_multiple_of,
    )
    trainer = CapDecTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_set,
        data_collator=collator,
        processing_class=processor,
        callbacks=[CapDecNoiseCallback(collator)],
        model_card_template=MODEL_CARD_TEMPLATE,
    )

    # 5. Train (or continue from a checkpoint) and save the Hub-ready folder.
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.save_model()  # model.save_pretrained (weights, config, code) + processor.save_pretrained
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()

    # 6. Evaluate by captioning the eval images.
    metrics = {}
    if eval_set is not None:
        # An evaluation at the last step (eval_steps dividing max_steps) already scored these weights.
        already_scored = (
            trainer.last_eval_step == trainer.state.global_step and not training_args.load_best_model_at_end
        )
        metrics = trainer.last_eval_metrics if already_scored else trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        if trainer.is_world_process_zero():
            write_coco_results(
                trainer.last_eval_predictions, Path(training_args.output_dir, "eval_predictions.json")
            )

    # 7. Model card (README.md), and the Hub.
    trainer.model_card_fields = model_card_fields(
        trainer.accelerator.unwrap_model(trainer.model),
        training_args,
        clip_model=model_args.clip_model or model.config.clip_config.name_or_path or "CLIP",
        decoder_model=model_args.decoder_model or model.config.text_config.name_or_path or "decoder",
        mode=data_args.mode,
        corpus=data_args.train_file or data_args.dataset_dir or data_args.dataset_name,
        cleaning_summary=cleaning.summary(),
        corpus_size=cleaning.kept,
        trained_steps=trainer.state.global_step,
        trained_epochs=trainer.state.epoch,
        eval_set=data_args.eval_file or data_args.eval_dataset_dir,
        metrics=metrics,
    )
    trainer.create_model_card()
    if training_args.push_to_hub:
        trainer.push_to_hub()
    return trainer


def _setup_logging(training_args: CapDecTrainingArguments) -> None:
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


def _check_arguments(data_args: DataArguments, training_args: CapDecTrainingArguments) -> None:
    # Fail in seconds, not after hours of training.
    if data_args.eval_file or data_args.eval_dataset_dir:
        if shutil.which("java") is None:
            from modeling_capdec.metrics_capdec import JAVA_INSTALL_HINT

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


def _checkpoint_to_resume(training_args: CapDecTrainingArguments) -> str | None:
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint == "last":
        checkpoint = (
            get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        )
        if checkpoint is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint last: no checkpoint-* in {training_args.output_dir}."
            )
    elif checkpoint is not None and not os.path.isdir(checkpoint):
        raise FileNotFoundError(f"Checkpoint folder not found: {checkpoint}")
    return checkpoint


if __name__ == "__main__":
    main()
