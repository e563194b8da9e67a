"""Configuration of CapDec (a frozen CLIP, a mapping network and a causal-LM decoder) and of OpenAI's CLIP ResNets
(RN50, RN50x4, ...), the paper's CLIP, which transformers does not provide."""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, CLIPTextConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


@strict
class CapDecConfig(PreTrainedConfig):
    r"""
    Configuration of [`CapDecForConditionalGeneration`] (Nukrai et al., "Text-Only Training for Image
    Captioning using Noise-Injected CLIP", EMNLP 2022 Findings).

    Args:
        clip_config (`PreTrainedConfig` or `dict`): any CLIP-like model config whose model has
            `get_text_features` / `get_image_features` in one space (CLIP, SigLIP, ...). Default: CLIP.
        text_config (`PreTrainedConfig` or `dict`): any causal-LM config (GPT-2 by default).
        mapping_type (`"mlp"` or `"transformer"`): the network that maps one CLIP embedding to
            `prefix_length` decoder input vectors. The paper's COCO model uses `"transformer"`.
        prefix_length (`int`, 40): number of decoder input vectors the prefix has.
        clip_length (`int`, 40): tokens the CLIP embedding is expanded into (transformer mapper only).
        num_mapping_layers (`int`, 8): transformer-mapper blocks.
        num_mapping_heads (`int`, 8): attention heads of each mapper block.
        mapping_mlp_ratio (`float`, 2.0): hidden width of each mapper block's MLP, relative to the decoder width.
        normalize_prefix (`bool`, True): L2-normalise the CLIP embedding before the mapper.
        train_decoder (`bool`, True): train the decoder as well as the mapper; False is the paper's
            `only_prefix` setting (the model then keeps the decoder frozen and in eval mode).
        text_memory_size (`int`, 0): rows of the text memory, normalised CLIP text embeddings of training
            captions saved with the weights (`text_memory`, `(text_memory_size, clip_projection_dim)`), onto which
            `generate(..., project_to_memory=True)` projects image embeddings. 0: no memory.

    The training noise (ε, its type, a modality offset) is not part of the model: the training collator draws
    it (`modeling_capdec.training`), and `train_capdec.py` records what it used in the saved config as
    `training_noise` (metadata, read by nothing at inference) and in the model card. Folders saved before this
    split, whose configs hold `noise_variance`/`noise_type`/`modality_offset`, still load: those keys are kept
    as plain attributes.

    Example:

    ```python
    >>> from transformers import CLIPConfig, GPT2Config
    >>> from modeling_capdec import CapDecConfig
    >>> config = CapDecConfig(clip_config=CLIPConfig(), text_config=GPT2Config(), mapping_type="mlp", prefix_length=10)
    >>> config.prefix_length, config.clip_projection_dim, config.decoder_hidden_size
    (10, 512, 768)
    ```
    """

    model_type = "capdec"
    _auto_class = "AutoConfig"  # saving copies this file and writes auto_map (as register_for_auto_class)
    sub_configs_defaults = {
        "clip_config": SubConfigSpec(config_class=AutoConfig, model_type="clip"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="gpt2"),
    }

    clip_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    mapping_type: Literal["mlp", "transformer"] = "transformer"
    prefix_length: int = 40
    clip_length: int = 40
    num_mapping_layers: int = 8
    num_mapping_heads: int = 8
    mapping_mlp_ratio: float = 2.0
    normalize_prefix: bool = True
    train_decoder: bool = True
    tie_word_embeddings: bool = True
    text_memory_size: int = 0

    def validate_capdec(self) -> None:
        """Checked at construction (by `@strict`): every error names the field at fault."""
        for name in ("prefix_length", "clip_length", "num_mapping_layers", "num_mapping_heads"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"CapDecConfig.{name} must be a positive integer, got {value}.")
        if self.text_memory_size < 0:
            raise ValueError(
                f"CapDecConfig.text_memory_size must be >= 0 (0: no memory), got {self.text_memory_size}."
            )
        if self.mapping_mlp_ratio <= 0:
            raise ValueError(f"CapDecConfig.mapping_mlp_ratio must be > 0, got {self.mapping_mlp_ratio}.")
        if self.mapping_type == "transformer" and self.decoder_hidden_size % self.num_mapping_heads:
            raise ValueError(
                f"CapDecConfig.num_mapping_heads ({self.num_mapping_heads}) must divide the decoder hidden size "
                f"({self.decoder_hidden_size}) for the transformer mapper."
            )

    @property
    def clip_projection_dim(self) -> int:
        """Size of the joint CLIP embedding space (the mapper's input)."""
        dim = getattr(self.clip_config, "projection_dim", None)
        if dim is None:  # CLIP-likes without a projection (e.g. SigLIP) embed at the text hidden size
            dim = self.clip_config.get_text_config().hidden_size
        return dim

    @property
    def decoder_hidden_size(self) -> int:
        """Width of the decoder's input embeddings (each prefix vector has this size)."""
        return self.text_config.get_text_config().hidden_size

    @classmethod
    def from_clip_decoder_configs(
        cls, clip_config: PreTrainedConfig, text_config: PreTrainedConfig, **kwargs
    ) -> "CapDecConfig":
        """Build a config from the configs of the two pretrained parts, plus CapDec fields as keywords."""
        return cls(clip_config=clip_config.to_dict(), text_config=text_config.to_dict(), **kwargs)


# -- OpenAI CLIP ResNets ---------------------------------------------------------------------------------------------
# RN50x4 by default, the CLIP of the CapDec paper. Other sizes (open_clip's model configs): RN50 layers 3-4-6-3,
# width 64, 1024-d, 224 px; RN101 3-4-23-3, 64, 512-d, 224 px; RN50x16 6-8-18-8, 96, 768-d, 384 px; RN50x64
# 3-15-36-10, 128, 1024-d, 448 px. Their attention pools have width * 32 / 64 heads.


@strict
class CLIPResNetVisionConfig(PreTrainedConfig):
    r"""
    Configuration of [`CLIPResNetVisionModel`], the image tower of OpenAI's CLIP ResNets: a ResNet with a 3-conv
    stem, anti-aliased strided bottlenecks (an average pool before the strided convolution) and attention pooling.

    Args:
        layers (`list[int]`, `[4, 6, 10, 6]`): bottleneck blocks in each of the four stages.
        width (`int`, 80): channels of the stem's output; stage `i` has `width * 2**i` (times 4 after each block).
        image_size (`int`, 288): input side in pixels (a multiple of 32: the feature map is `image_size / 32`).
        num_attention_heads (`int`, 40): heads of the attention pool (`width * 32` must be divisible by it).
        output_dim (`int`, 640): size of the image embedding the attention pool projects to.
        num_channels (`int`, 3): input channels.

    Example:

    ```python
    >>> from modeling_capdec.configuration_capdec import CLIPResNetVisionConfig
    >>> config = CLIPResNetVisionConfig()  # RN50x4
    >>> config.embed_dim, config.image_size // 32
    (2560, 9)
    ```
    """

    model_type = "clip_resnet_vision_model"
    base_config_key = "vision_config"

    layers: list[int] | tuple[int, ...] = (4, 6, 10, 6)
    width: int = 80
    image_size: int = 288
    num_attention_heads: int = 40
    output_dim: int = 640
    num_channels: int = 3

    def validate_resnet(self) -> None:
        """Checked at construction (by `@strict`): every error names the field at fault."""
        if len(self.layers) != 4 or any(int(blocks) < 1 for blocks in self.layers):
            raise ValueError(
                f"CLIPResNetVisionConfig.layers must be 4 positive block counts, got {list(self.layers)}."
            )
        for name in ("width", "image_size", "num_attention_heads", "output_dim", "num_channels"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"CLIPResNetVisionConfig.{name} must be a positive integer, got {getattr(self, name)}."
                )
        if self.image_size % 32:
            raise ValueError(
                f"CLIPResNetVisionConfig.image_size must be a multiple of 32 (the ResNet downsamples 32×), "
                f"got {self.image_size}."
            )
        if self.embed_dim % self.num_attention_heads:
            raise ValueError(
                f"CLIPResNetVisionConfig.num_attention_heads ({self.num_attention_heads}) must divide the attention "
                f"pool width (width * 32 = {self.embed_dim})."
            )

    @property
    def embed_dim(self) -> int:
        """Channels of the last stage's feature map (the attention pool's width): `width * 32`."""
        return self.width * 32


# RN50x4's text tower; the other OpenAI ResNets differ in width (RN50: 512, RN101: 512, RN50x16: 768, RN50x64: 1024).
_RN50X4_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 640,
    "intermediate_size": 2560,
    "num_hidden_layers": 12,
    "num_attention_heads": 10,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 640,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
}


@strict
class CLIPResNetConfig(PreTrainedConfig):
    r"""
    Configuration of [`CLIPResNetModel`]: OpenAI's CLIP with a ResNet image tower (RN50x4 by default) and the
    standard CLIP text transformer (transformers' [`CLIPTextConfig`]).

    Args:
        text_config (`CLIPTextConfig` or `dict`): the text transformer (RN50x4's: 640 wide, 12 layers, 10 heads).
        vision_config (`CLIPResNetVisionConfig` or `dict`): the ResNet image tower.
        projection_dim (`int`, 640): size of the joint embedding space; the image tower's `output_dim` must match.
        logit_scale_init_value (`float`, 2.6592): initial log temperature (CLIP's `log(1 / 0.07)`).
        initializer_factor (`float`, 1.0): scale of the random initialisation.

    Example:

    ```python
    >>> from modeling_capdec.configuration_capdec import CLIPResNetConfig
    >>> config = CLIPResNetConfig()  # RN50x4
    >>> config.projection_dim, config.vision_config.layers, config.text_config.hidden_size
    (640, (4, 6, 10, 6), 640)
    ```
    """

    model_type = "clip_resnet"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=CLIPTextConfig, init_kwargs=_RN50X4_TEXT),
        "vision_config": SubConfigSpec(config_class=CLIPResNetVisionConfig),
    }

    text_config: CLIPTextConfig | dict | None = None
    vision_config: CLIPResNetVisionConfig | dict | None = None
    projection_dim: int = 640
    logit_scale_init_value: float = 2.6592
    initializer_factor: float = 1.0

    def validate_clip_resnet(self) -> None:
        """Checked at construction (by `@strict`): the image tower must embed into the joint space."""
        if self.vision_config.output_dim != self.projection_dim:
            raise ValueError(
                f"CLIPResNetConfig.vision_config.output_dim ({self.vision_config.output_dim}) must equal "
                f"projection_dim ({self.projection_dim}): the attention pool projects to the joint space."
            )


# CapDecConfig builds its `clip_config` through AutoConfig from the model type; a saved folder loaded with
# trust_remote_code imports only this file's copy, so the registration lives here (not in the package __init__).
AutoConfig.register(CLIPResNetVisionConfig.model_type, CLIPResNetVisionConfig, exist_ok=True)
AutoConfig.register(CLIPResNetConfig.model_type, CLIPResNetConfig, exist_ok=True)

__all__ = ["CapDecConfig", "CLIPResNetConfig", "CLIPResNetVisionConfig"]
