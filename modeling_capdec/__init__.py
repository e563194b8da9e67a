"""capdec: text-only image captioning (CapDec, Nukrai et al. 2022) native to Hugging Face Transformers.

Importing the package registers `CapDecConfig`, `CapDecForConditionalGeneration` and `CapDecProcessor`
with the Auto classes (AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor).
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .collator_capdec import CapDecDataCollator, example_noise_generator
from .configuration_capdec import CapDecConfig
from .data_capdec import CleaningReport, load_dataset_source, load_eval_set, prepare_training_dataset
from .modeling_capdec import CapDecForConditionalGeneration, CapDecOutput, CapDecPreTrainedModel
from .noise_capdec import inject_noise
from .pipeline_capdec import CapDecImageToTextPipeline
from .processing_capdec import CapDecProcessor, ImageLoadError, load_image, load_images
from .training_capdec import (
    CapDecNoiseCallback,
    CapDecTrainer,
    CapDecTrainingArguments,
    load_capdec_for_training,
    load_modality_offset,
    model_card_fields,
    render_model_card,
)

AutoConfig.register(CapDecConfig.model_type, CapDecConfig, exist_ok=True)
AutoModel.register(CapDecConfig, CapDecForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(CapDecConfig, CapDecForConditionalGeneration, exist_ok=True)
AutoProcessor.register(CapDecConfig, CapDecProcessor, exist_ok=True)

__all__ = [
    "CapDecConfig",
    "CapDecForConditionalGeneration",
    "CapDecImageToTextPipeline",
    "CapDecOutput",
    "CapDecPreTrainedModel",
    "CapDecProcessor",
    "ImageLoadError",
    "load_image",
    "load_images",
    "inject_noise",
    "CapDecDataCollator",
    "example_noise_generator",
    "CleaningReport",
    "load_dataset_source",
    "load_eval_set",
    "prepare_training_dataset",
    "CapDecNoiseCallback",
    "CapDecTrainer",
    "CapDecTrainingArguments",
    "load_capdec_for_training",
    "load_modality_offset",
    "model_card_fields",
    "render_model_card",
]
