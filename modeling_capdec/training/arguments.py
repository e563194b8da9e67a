"""The arguments of a CapDec training run: model, data, and `CapDecTrainingArguments` (Trainer's, with the noise).

`train_capdec.py` parses the three with one `HfArgumentParser` (recipe file + command line, see
`modeling_capdec.commands.recipes`).
"""

from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import Seq2SeqTrainingArguments

from .noise_estimate import ESTIMATORS

DEFAULT_EVAL_METRICS = ("BLEU", "METEOR", "ROUGE-L", "CIDEr")
# Data options that a streamed run cannot honour, and why (DataArguments refuses them by name).
NOT_WITH_STREAMING = {
    "overwrite_cache": "nothing is cached: the stream is cleaned and tokenised as it is read",
    "preprocessing_num_workers": "the stream is cleaned in the training process, as training reads it",
}
# Padded caption lengths under --torch_compile when no padding option is given; the last bucket is replaced by
# max_caption_tokens + 1 (the longest caption with its eos).
DEFAULT_COMPILE_BUCKETS = (16, 24, 32, 48, 65)
SPEED_DEFAULT_WORKERS = 2


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

    lora_r: int | None = field(
        default=None,
        metadata={
            "help": "LoRA rank: train low-rank adapters in the decoder (and the mapper fully) instead of the whole "
            "decoder; needs peft (capdec[lora]). The saved adapter names its base folder."
        },
    )
    lora_alpha: float | None = field(
        default=None, metadata={"help": "LoRA scaling alpha (default 2 × rank)."}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Decoder layers to adapt, by name (e.g. c_attn c_proj); default: every Linear/Conv1D layer of "
            "the decoder except its LM head."
        },
    )
    lora_mapper: bool = field(
        default=False,
        metadata={
            "help": "LoRA on the mapper's layers too, instead of training it fully (needs --init_from)."
        },
    )
    merge_lora: bool = field(
        default=False,
        metadata={
            "help": "After a LoRA run, also write OUTPUT_DIR/merged: the adapters merged into a plain Hub folder "
            "that loads without peft."
        },
    )
    text_memory_size: int = field(
        default=0,
        metadata={
            "help": "Store N CLIP text embeddings of distinct training captions (a seeded sample, after cleaning) "
            "with the model, for generate(..., project_to_memory=True): DeCap's projection of the image "
            "embedding onto the text region the decoder was trained on. 0: no memory."
        },
    )

    def __post_init__(self) -> None:
        lora_only = [
            name for name in ("lora_alpha", "lora_target_modules") if getattr(self, name) is not None
        ]
        lora_only += [name for name in ("lora_mapper", "merge_lora") if getattr(self, name)]
        if self.lora_r is None and lora_only:
            raise ValueError(f"{', '.join('--' + n for n in lora_only)} need(s) --lora_r (the LoRA rank).")
        if self.text_memory_size < 0:
            raise ValueError(f"--text_memory_size must be >= 0 (0: no memory), got {self.text_memory_size}.")
        if self.text_memory_size and self.lora_r is not None:
            raise ValueError(
                "--text_memory_size with --lora_r: a LoRA folder holds only the adapters, not the memory. Train "
                "without it, then attach one to the merged folder (modeling_capdec.training.text_memory."
                "attach_text_memory)."
            )

    def architecture(self) -> dict[str, Any]:
        """The `CapDecConfig` fields given on the command line (the others keep the config's defaults)."""
        names = ("mapping_type", "prefix_length", "clip_length", "num_mapping_layers")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass
class DataArguments:
    train_file: list[str] | None = field(
        default=None,
        metadata={
            "help": "Caption corpus file(s), of one format: .json/.jsonl/.csv/.tsv/.txt/.parquet, the text formats "
            "also compressed (.gz/.bz2/.xz/.zst). Several paths and globs read as one corpus: --train_file "
            "a.jsonl b.jsonl, --train_file 'data/*.jsonl.gz' (quoted: the glob is expanded in order, not by "
            "the shell)."
        },
    )
    train_file_encoding: str = field(
        default="utf-8", metadata={"help": "Text encoding of --train_file (e.g. latin-1, cp1252)."}
    )
    skip_bad_lines: bool = field(
        default=False,
        metadata={
            "help": "Skip (and count, in a warning) lines of --train_file that cannot be read: bytes invalid in "
            "the encoding, malformed JSON lines, CSV rows with the wrong number of fields. Default: stop, "
            "naming the line."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the corpus as training consumes it (datasets IterableDataset): nothing is converted, "
            "cached or embedded in advance; captions are cleaned and tokenised on the fly and embedded with CLIP "
            "in each step (implies --embed_on_the_fly). Needs --max_steps; text mode only; the cleaning counts "
            "are reported as the stream is read."
        },
    )
    streaming_shuffle_buffer: int = field(
        default=10_000,
        metadata={
            "help": "--streaming: rows in datasets' shuffle buffer (seeded by --data_seed, else --seed; the files "
            "are shuffled too, and each pass over the stream gets a new order); 0 reads in file order."
        },
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
            "later steps were 5-15 percent faster with exact lengths than with multiples of 8 (benchmarks/README.md)."
        },
    )
    pad_to_buckets: list[int] | None = field(
        default=None,
        metadata={
            "help": "Pad each batch's captions up to the smallest of these lengths that holds its longest caption "
            "(e.g. 16 24 32 48 65), so that a compiled model sees a few shapes and reuses their graphs; a longer "
            f"batch keeps its own length. With --torch_compile and no padding option the buckets default to "
            f"{' '.join(map(str, DEFAULT_COMPILE_BUCKETS[:-1]))} and max_caption_tokens + 1 (--pad_to_multiple_of 1 "
            "keeps exact lengths: dynamic shapes)."
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
        default=None,
        metadata={
            "help": "Eval set: a Karpathy/COCO JSON, or a file with one row per image (image + captions columns)."
        },
    )
    eval_dataset_dir: str | None = field(
        default=None,
        metadata={"help": "Eval set save_to_disk folder (e.g. from python -m processing.karpathy)."},
    )
    eval_split: str = field(
        default="test", metadata={"help": "Karpathy split, or split of the eval dataset."}
    )
    eval_image_root: str | None = field(
        default=None,
        metadata={"help": "Folder the image paths of a Karpathy/COCO --eval_file are relative to."},
    )
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

    def __post_init__(self) -> None:
        if isinstance(self.train_file, str):  # a recipe (or a caller) may give one path as a string
            self.train_file = [self.train_file]
        if self.streaming:
            self._check_streaming()
        given = [name for name in ("train_file", "dataset_dir", "dataset_name") if getattr(self, name)]
        if len(given) > 1:
            raise ValueError(
                f"Give one training corpus, not {len(given)}: {', '.join('--' + n for n in given)}."
            )
        if self.eval_file and self.eval_dataset_dir:
            raise ValueError("Give one eval set: --eval_file or --eval_dataset_dir, not both.")
        if self.pad_to_buckets is not None and self.pad_to_multiple_of is not None:
            raise ValueError("Give one padding rule: --pad_to_buckets or --pad_to_multiple_of, not both.")

    def padding_kwargs(self, torch_compile: bool = False) -> dict[str, Any]:
        """The collator's padding rule: the one given, else length buckets under `torch_compile` (compiled
        graphs are reused per shape), else none (each batch padded to its longest caption)."""
        if self.pad_to_buckets is not None or self.pad_to_multiple_of is not None:
            return {"pad_to_buckets": self.pad_to_buckets, "pad_to_multiple_of": self.pad_to_multiple_of}
        if torch_compile:
            longest = self.max_caption_tokens + 1
            buckets = [bucket for bucket in DEFAULT_COMPILE_BUCKETS[:-1] if bucket < longest] + [longest]
            return {"pad_to_buckets": buckets, "pad_to_multiple_of": None}
        return {"pad_to_buckets": None, "pad_to_multiple_of": None}

    def _check_streaming(self) -> None:
        if self.mode != "text":
            raise ValueError(
                "--streaming works in --mode text only: supervised mode embeds each row's image once, in advance."
            )
        for name, why in NOT_WITH_STREAMING.items():
            if getattr(self, name):
                raise ValueError(f"--{name} cannot be used with --streaming: {why}.")
        if self.streaming_shuffle_buffer < 0:
            raise ValueError(
                f"--streaming_shuffle_buffer must be >= 0 (0: file order), got {self.streaming_shuffle_buffer}."
            )
        # A stream is never embedded in advance: CLIP runs in each step (the run prints so when it starts).
        self.embed_on_the_fly = True

    @property
    def train_source(self) -> str | list[str] | None:
        """The training corpus (`training.data.load_dataset_source`): a file or glob, a list of them, a
        save_to_disk folder or a Hub name. One file stays a string, so that the model card names it plainly."""
        if self.train_file:
            return self.train_file[0] if len(self.train_file) == 1 else list(self.train_file)
        return self.dataset_dir or self.dataset_name

    @property
    def eval_source(self) -> str | None:
        """The eval set, if any (`evaluation.eval_sets.load_eval_set`)."""
        return self.eval_file or self.eval_dataset_dir

    def source_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `training.data.load_dataset_source` for the training corpus (besides it)."""
        return {
            "config_name": self.dataset_config,
            "split": self.train_split,
            "cache_dir": self.cache_dir,
            "text_column": self.caption_column,
            "encoding": self.train_file_encoding,
            "skip_bad_lines": self.skip_bad_lines,
            "streaming": self.streaming,
        }

    def preparation_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `training.data.prepare_training_dataset`."""
        return {
            "mode": self.mode,
            "caption_column": self.caption_column,
            "image_column": self.image_column,
            "max_caption_tokens": self.max_caption_tokens,
            "embed_on_the_fly": self.embed_on_the_fly,
            "embedding_batch_size": self.embedding_batch_size,
            "num_proc": self.preprocessing_num_workers,
            "cache_dir": self.cache_dir,
            "overwrite_cache": self.overwrite_cache,
        }

    def streaming_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `training.streaming.prepare_streaming_dataset` (besides the seed)."""
        return {
            "caption_column": self.caption_column,
            "max_caption_tokens": self.max_caption_tokens,
            "shuffle_buffer": self.streaming_shuffle_buffer,
        }

    def eval_set_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `evaluation.eval_sets.load_eval_set` (besides the source)."""
        return {
            "split": self.eval_split,
            "image_root": self.eval_image_root,
            "image_column": self.eval_image_column,
            "captions_column": self.eval_captions_column,
            "max_samples": self.max_eval_samples,
            "cache_dir": self.cache_dir,
        }


@dataclass
class CapDecTrainingArguments(Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` with CapDec's defaults, its noise and its evaluation settings.

    - The noise settings (`noise_variance`, `noise_type`, `modality_offset_file`, `noise_seed`) are the training
      collator's; they are checked once, where the collator is built (`CapDecDataCollator`), and recorded in the
      saved config's `training_noise` and the model card.

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
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={
            "help": "Off: Trainer's filter reads the loss on the host at every step (a device sync); a NaN step "
            "stops the run anyway (NonFiniteTrainingError), so there is nothing to filter."
        },
    )
    speed_defaults: bool = field(
        default=True,
        metadata={
            "help": "On a CUDA device, settings left at their defaults become fast ones: --bf16 (where the GPU "
            f"supports it) and --dataloader_num_workers {SPEED_DEFAULT_WORKERS}; each change is logged. "
            "--speed_defaults false keeps Trainer's defaults (float32 as the paper trained)."
        },
    )
    # A string on the command line ("auto" or a number), a float after __post_init__ unless "auto".
    noise_variance: str = field(
        default="0.016",
        metadata={
            "help": "ε, the variance of the Gaussian noise (std sqrt(ε)); 0 = no noise; auto = estimated from the "
            "data before training (--noise_estimator, --noise_images, --noise_group_column)."
        },
    )
    noise_estimator: Literal["pseudo_pairs", "centroids", "caption_groups"] | None = field(
        default=None,
        metadata={
            "help": "How --noise_variance auto estimates ε (modeling_capdec.training.noise_estimate): pseudo_pairs "
            "or centroids compare --noise_images with the corpus, caption_groups uses the corpus alone. Default: "
            "pseudo_pairs with images, caption_groups without."
        },
    )
    noise_images: str | None = field(
        default=None,
        metadata={
            "help": "A folder of unlabelled target-domain images (no captions: training stays text-only) for "
            "--noise_variance auto."
        },
    )
    noise_group_column: str | None = field(
        default=None,
        metadata={
            "help": "For --noise_estimator caption_groups: the corpus column naming each caption's image or scene "
            "(default: the captions of one row, when a row holds a list)."
        },
    )
    noise_estimate_captions: int = field(
        default=20_000,
        metadata={"help": "Captions (whole groups, a seeded sample) --noise_variance auto embeds."},
    )
    noise_estimate_images: int = field(
        default=2_000,
        metadata={"help": "Images of --noise_images (a seeded sample) --noise_variance auto embeds."},
    )
    noise_offset: bool = field(
        default=False,
        metadata={
            "help": "With --noise_variance auto and --noise_images: also add the measured modality offset (mean "
            "image minus mean caption embedding) to the captions in training, and estimate ε around the shifted "
            "captions (pseudo_pairs)."
        },
    )
    noise_map: bool = field(
        default=False,
        metadata={
            "help": "With --noise_variance auto and --noise_images, instead of --noise_offset: map every caption "
            "embedding with an affine map fitted on the unlabelled images and their best-matching captions (ridge "
            "regression, penalty by leave-one-out error), and estimate ε around the mapped captions."
        },
    )
    noise_shape: Literal["isotropic", "measured"] = field(
        default="isotropic",
        metadata={
            "help": "isotropic (the paper's), or measured (with --noise_variance auto and --noise_images): the "
            "Gaussian noise takes the covariance of the images' residuals around their best-matching captions, "
            "with the same expected length."
        },
    )
    noise_type: Literal["gaussian", "uniform"] = field(
        default="gaussian", metadata={"help": "gaussian, or uniform in the ball of radius sqrt(ε)."}
    )
    modality_offset_file: str | None = field(
        default=None,
        metadata={"help": "Vector added to text embeddings in training (.npy/.json/.safetensors)."},
    )
    noise_seed: int | None = field(default=None, metadata={"help": "Seed of the noise (default: --seed)."})
    license: str | None = field(
        default="mit",
        metadata={
            "help": "License in the model card's front matter (the code, GPT-2 and CLIP are MIT; follow your "
            "corpus's terms)."
        },
    )
    eval_metrics: list[str] = field(
        default_factory=lambda: list(DEFAULT_EVAL_METRICS),
        metadata={
            "help": "Caption metrics computed at each evaluation: BLEU, METEOR, ROUGE-L, CIDEr, SPICE."
        },
    )

    def __post_init__(self) -> None:
        self.speed_defaults_applied = self._apply_speed_defaults()
        super().__post_init__()
        self.noise_variance = noise_variance_setting(self.noise_variance)
        if self.noise_estimator not in (None, *ESTIMATORS):  # set after parsing, or given in code
            raise ValueError(
                f"--noise_estimator must be one of {list(ESTIMATORS)}, got {self.noise_estimator!r}."
            )
        for name in ("noise_estimate_captions", "noise_estimate_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}.")

    def _apply_speed_defaults(self) -> dict[str, Any]:
        """On CUDA (and unless `speed_defaults` is off), the fast values of settings still at their defaults; what
        changed is returned (`check_run_arguments` logs it). Trainer's optimizer default is already the fused
        AdamW (`adamw_torch_fused`, transformers 5 with torch >= 2.8)."""
        import torch

        if not self.speed_defaults or self.use_cpu or not torch.cuda.is_available():
            return {}
        changed: dict[str, Any] = {}
        if not self.bf16 and not self.fp16 and torch.cuda.is_bf16_supported():
            changed["bf16"] = True
        if self.dataloader_num_workers == 0:
            changed["dataloader_num_workers"] = SPEED_DEFAULT_WORKERS
        for name, value in changed.items():
            setattr(self, name, value)
        return changed


def noise_variance_setting(value: str | float) -> float | str:
    """`--noise_variance` as the run uses it: a float, or `"auto"` (estimated from the data before training).
    The number itself (finite, >= 0) is checked where the noise is drawn (`noise.check_noise_settings`).

    Example:

    ```python
    >>> noise_variance_setting("0.004"), noise_variance_setting("auto"), noise_variance_setting(0.016)
    (0.004, 'auto', 0.016)
    ```
    """
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"--noise_variance must be a number >= 0 or 'auto', got {value!r}.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"--noise_variance must be a number >= 0 or 'auto', got {value!r}.")
    return float(value)


__all__ = [
    "CapDecTrainingArguments",
    "DataArguments",
    "DEFAULT_COMPILE_BUCKETS",
    "DEFAULT_EVAL_METRICS",
    "ModelArguments",
    "noise_variance_setting",
    "SPEED_DEFAULT_WORKERS",
]
