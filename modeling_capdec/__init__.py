"""capdec: text-only image captioning (CapDec, Nukrai et al. 2022) native to Hugging Face Transformers.

Importing the package registers `CapDecConfig`, `CapDecForConditionalGeneration` and `CapDecProcessor`
with the Auto classes (AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor).
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_capdec import CapDecConfig
from .modeling_capdec import CapDecForConditionalGeneration, CapDecOutput, CapDecPreTrainedModel
from .noise_capdec import inject_noise
from .pipeline_capdec import CapDecImageToTextPipeline
from .processing_capdec import CapDecProcessor, ImageLoadError, load_image, load_images

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
]
