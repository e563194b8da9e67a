"""Configuration of CapDec: a frozen CLIP, a mapping network and a causal-LM decoder."""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
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


__all__ = ["CapDecConfig"]
