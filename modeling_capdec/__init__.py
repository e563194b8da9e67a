"""capdec: text-only image captioning (CapDec, Nukrai et al. 2022) native to Hugging Face Transformers.

Three layers, imported only when used:

- this package's top level is the inference unit that a saved folder carries to the Hub: `CapDecConfig`,
  `CapDecForConditionalGeneration`, `CapDecProcessor` and the `image-to-text` pipeline. Importing the package
  imports these four files (torch, transformers, PIL) and registers them with the Auto classes (AutoConfig,
  AutoModel, AutoModelForImageTextToText, AutoProcessor); nothing of training or evaluation.
- `modeling_capdec.training`: noise, collator, corpus preparation, Trainer and model card (`pip install capdec[train]`).
- `modeling_capdec.evaluation`: eval sets, batch captioning and the COCO caption metrics (`pip install capdec[eval]`).

Their public names are also reachable from here (`from modeling_capdec import CapDecDataCollator`); each
such access imports its layer then.
"""

import importlib
from typing import Any

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_capdec import CapDecConfig, CLIPResNetConfig, CLIPResNetVisionConfig
from .modeling_capdec import (
    CapDecForConditionalGeneration,
    CapDecOutput,
    CapDecPreTrainedModel,
    CLIPResNetModel,
    CLIPResNetVisionModel,
)
from .pipeline_capdec import CapDecImageToTextPipeline
from .processing_capdec import (
    CapDecProcessor,
    ImageLoadError,
    check_processor_matches_model,
    load_image,
    load_images,
)

AutoConfig.register(CapDecConfig.model_type, CapDecConfig, exist_ok=True)
AutoModel.register(CapDecConfig, CapDecForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(CapDecConfig, CapDecForConditionalGeneration, exist_ok=True)
AutoProcessor.register(CapDecConfig, CapDecProcessor, exist_ok=True)
# OpenAI's CLIP ResNets (the paper's RN50x4); their configs register with AutoConfig in configuration_capdec.py.
AutoModel.register(CLIPResNetConfig, CLIPResNetModel, exist_ok=True)
AutoModel.register(CLIPResNetVisionConfig, CLIPResNetVisionModel, exist_ok=True)

# Names of the training and evaluation layers, imported on first access (PEP 562).
_LAZY_NAMES = {
    "modeling_capdec.training.noise": ("inject_noise", "sample_noise"),
    "modeling_capdec.training.collator": ("CapDecDataCollator", "example_noise_generator"),
    "modeling_capdec.training.data": ("CleaningReport", "load_dataset_source", "prepare_training_dataset"),
    "modeling_capdec.training.trainer": (
        "CapDecNoiseCallback",
        "CapDecTrainer",
        "load_capdec_for_training",
        "load_modality_offset",
    ),
    "modeling_capdec.training.arguments": ("CapDecTrainingArguments",),
    "modeling_capdec.training.model_card": ("model_card_fields", "render_model_card"),
    "modeling_capdec.evaluation.eval_sets": ("CaptionEvalSet", "load_eval_set"),
    "modeling_capdec.evaluation.captioning": ("caption_images",),
    "modeling_capdec.evaluation.metrics": ("compute_caption_metrics", "compute_caption_metrics_many"),
}
_LAZY_MODULES = {name: module for module, names in _LAZY_NAMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _LAZY_MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'modeling_capdec' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_MODULES))


__all__ = [
    "CapDecConfig",
    "CapDecForConditionalGeneration",
    "CapDecImageToTextPipeline",
    "CapDecOutput",
    "CapDecPreTrainedModel",
    "CapDecProcessor",
    "CLIPResNetConfig",
    "CLIPResNetModel",
    "CLIPResNetVisionConfig",
    "CLIPResNetVisionModel",
    "ImageLoadError",
    "check_processor_matches_model",
    "load_image",
    "load_images",
    *_LAZY_MODULES,
]
