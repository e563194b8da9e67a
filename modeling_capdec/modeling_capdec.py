"""CapDec: a frozen CLIP, a mapping network and a causal-LM decoder, composed from Transformers Auto models.

The module layout mirrors the paper's code so its checkpoints map one-to-one:
`clip_project.model.{0,2}` (MLP mapper), `clip_project.{linear, prefix_const, transformer.layers.N.*}`
(transformer mapper), and `decoder.*` for the original `gpt.*`.
"""

import copy
import inspect
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    CLIPTextModel,
    GenerationConfig,
    GenerationMixin,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling, BaseModelOutputWithPoolingAndNoAttention
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.clip.modeling_clip import CLIPOutput
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME, ModelOutput, logging
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_capdec import CapDecConfig, CLIPResNetConfig, CLIPResNetVisionConfig

logger = logging.get_logger(__name__)

# What a saved folder declares, so that it loads with trust_remote_code where this package is not installed.
# (register_for_auto_class keeps one Auto class per class: the other entries are written here.)
# Caption length when neither the call nor the generation config sets one: the original code's entry_length.
DEFAULT_MAX_NEW_TOKENS = 67
# τ of the projection onto the text memory when the call sets none: the best of those measured on the shapes world
# (0.001, 0.003, 0.01, 0.03, 0.1; README "Projection onto the text memory"), not a value from the DeCap paper.
DEFAULT_MEMORY_TEMPERATURE = 0.001

HUB_AUTO_MAP = {
    "AutoConfig": "configuration_capdec.CapDecConfig",
    "AutoModel": "modeling_capdec.CapDecForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_capdec.CapDecForConditionalGeneration",
    "AutoProcessor": "processing_capdec.CapDecProcessor",
}
# transformers 5 has no built-in "image-to-text" task (it is rewritten to image-text-to-text), but a custom
# pipeline declared in the config is looked up before that rewrite.
HUB_CUSTOM_PIPELINES = {
    "image-to-text": {
        "impl": "pipeline_capdec.CapDecImageToTextPipeline",
        "pt": ["AutoModelForImageTextToText"],
        "tf": [],
        "type": "multimodal",
    }
}

# Loading keyword arguments that concern both pretrained parts in `from_clip_decoder_pretrained`.
_SHARED_LOADING_KWARGS = (
    "dtype",
    "torch_dtype",
    "cache_dir",
    "local_files_only",
    "token",
    "attn_implementation",
    "trust_remote_code",
    "force_download",
    "proxies",
)


@dataclass
class CapDecOutput(ModelOutput):
    r"""
    Output of [`CapDecForConditionalGeneration`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): mean cross-entropy over caption tokens
            (labels != -100), or their sum divided by `num_items_in_batch` when that is given.
        logits (`torch.FloatTensor`): with `labels`, `(batch, seq_len, vocab)` where `logits[:, i]`
            predicts `labels[:, i]` (the prefix positions are not projected to the vocabulary);
            otherwise `(batch, prefix_length + seq_len, vocab)` over the whole decoder input.
        cache (`Cache`, *optional*): the decoder's key/value cache.
        prefix_embeds (`torch.FloatTensor` of shape `(batch, prefix_length, hidden)`, *optional*):
            the mapped CLIP prefix, when CLIP inputs were given.
        hidden_states, attentions: the decoder's, when asked for.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    prefix_embeds: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def _describe_loading_problems(loading_info: dict) -> list[str]:
    def _shown(keys) -> str:
        keys = sorted(str(k) for k in keys)
        return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")

    problems = []
    mismatched = loading_info.get("mismatched_keys") or []
    for entry in list(mismatched)[:8]:
        if isinstance(entry, (tuple, list)) and len(entry) == 3:
            key, checkpoint_shape, model_shape = entry
            problems.append(
                f"- {key}: shape {tuple(checkpoint_shape)} in the checkpoint, {tuple(model_shape)} from the config"
            )
        else:
            problems.append(f"- shape mismatch: {entry}")
    if loading_info.get("missing_keys"):
        problems.append(f"- missing from the checkpoint: {_shown(loading_info['missing_keys'])}")
    if loading_info.get("unexpected_keys"):
        problems.append(
            f"- in the checkpoint but not in the model: {_shown(loading_info['unexpected_keys'])}"
        )
    return problems


def _check_local_folder(path, subfolder: str) -> None:
    """A local folder without config.json would otherwise load as a default-sized CapDec (transformers falls back
    to the class defaults) and fail with a weight/shape mismatch that hides the real problem."""
    folder = os.path.join(str(path), subfolder) if subfolder else str(path)
    if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, CONFIG_NAME)):
        raise OSError(
            f"{folder} has no {CONFIG_NAME}: a saved CapDec folder needs it to know the model's sizes "
            "(save with model.save_pretrained, which writes it)."
        )


def _raise_if_unreadable_weights(path, subfolder: str, error: Exception) -> None:
    """A truncated or garbage safetensors file fails deep in the safetensors reader with a message that does not
    say which file; name it."""
    if path is None:
        return
    folder = os.path.join(str(path), subfolder) if subfolder else str(path)
    weights = os.path.join(folder, SAFE_WEIGHTS_NAME)
    if not os.path.isfile(weights):
        return
    try:
        with safe_open(weights, framework="pt") as reader:
            for key in reader.keys():
                reader.get_slice(key)
    except Exception as read_error:
        raise OSError(
            f"Cannot read the weights file {weights}: {read_error}. Is it truncated or corrupted?"
        ) from error


def _clip_from_config(clip_config) -> PreTrainedModel:
    """A random CLIP of this config. The ResNet CLIP is built by model type, not through AutoModel: under
    trust_remote_code the config may be an instance of another copy of `CLIPResNetConfig` (each auto_map entry
    loads its own), and AutoModel matches registered config classes by identity."""
    if getattr(clip_config, "model_type", None) == CLIPResNetConfig.model_type:
        return CLIPResNetModel._from_config(clip_config)
    return AutoModel.from_config(clip_config)


# Image inputs of CLIP-likes that embed patch sequences (SigLIP 2's NaFlex) rather than fixed-size images.
_PATCH_SEQUENCE_INPUTS = ("pixel_attention_mask", "spatial_shapes")


class CapDecMLPMapper(nn.Module):
    """ClipCap/CapDec MLP mapping: Linear(d, h*p/2) -> Tanh -> Linear(h*p/2, h*p), reshaped to p vectors."""

    def __init__(self, config: CapDecConfig):
        super().__init__()
        self.prefix_length = config.prefix_length
        self.hidden_size = config.decoder_hidden_size
        width = self.hidden_size * self.prefix_length
        self.model = nn.Sequential(
            nn.Linear(config.clip_projection_dim, width // 2),
            nn.Tanh(),
            nn.Linear(width // 2, width),
        )

    def forward(self, clip_embeds: torch.Tensor) -> torch.Tensor:
        return self.model(clip_embeds).view(-1, self.prefix_length, self.hidden_size)


def _eager_mapper_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention over `(batch, heads, length, head_dim)`, returned as `(batch, length, heads,
    head_dim)` like transformers' attention functions."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class CapDecMapperAttention(nn.Module):
    """Multi-head self-attention of the paper's mapper: bias-free queries and fused keys/values.

    It runs through transformers' attention interface with the model's `attn_implementation` (SDPA by default,
    the paper's computation), so `set_attn_implementation` switches the mapper along with CLIP and the decoder.
    """

    is_causal = False  # the mapper sees all positions

    def __init__(self, config: CapDecConfig):
        super().__init__()
        hidden_size = config.decoder_hidden_size
        self.config = config  # read at each call: set_attn_implementation changes it
        self.num_heads = config.num_mapping_heads
        self.head_dim = hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5  # the paper's scale
        self.to_queries = nn.Linear(hidden_size, hidden_size, bias=False)
        # One projection for keys and values; its output is laid out as (2, heads, head_dim).
        self.to_keys_values = nn.Linear(hidden_size, 2 * hidden_size, bias=False)
        self.project = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden_states.shape
        queries = self.to_queries(hidden_states).view(batch, length, self.num_heads, self.head_dim)
        keys_values = self.to_keys_values(hidden_states).view(batch, length, 2, self.num_heads, self.head_dim)
        keys, values = keys_values.unbind(dim=2)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, _eager_mapper_attention
        )
        attended, _ = attention(
            self,
            queries.transpose(1, 2),
            keys.transpose(1, 2),
            values.transpose(1, 2),
            None,
            scaling=self.scaling,
            dropout=0.0,
        )
        return self.project(attended.reshape(batch, length, width))


class CapDecMapperMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(hidden_states)))


class CapDecMapperLayer(nn.Module):
    """A pre-LayerNorm transformer block (no dropout, as in the paper's mapper)."""

    def __init__(self, config: CapDecConfig):
        super().__init__()
        hidden_size, mlp_ratio = config.decoder_hidden_size, config.mapping_mlp_ratio
        self.norm1 = nn.LayerNorm(hidden_size)
        self.attn = CapDecMapperAttention(config)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.mlp = CapDecMapperMLP(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states))
        return hidden_states + self.mlp(self.norm2(hidden_states))


class CapDecMapperTransformer(nn.Module):
    def __init__(self, config: CapDecConfig):
        super().__init__()
        self.layers = nn.ModuleList([CapDecMapperLayer(config) for _ in range(config.num_mapping_layers)])
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                hidden_states = torch.utils.checkpoint.checkpoint(layer, hidden_states, use_reentrant=False)
            else:
                hidden_states = layer(hidden_states)
        return hidden_states


class CapDecTransformerMapper(nn.Module):
    """The paper's transformer mapping network.

    The CLIP embedding is projected to `clip_length` vectors, a learned constant of `prefix_length` vectors is
    appended, both pass through the blocks (no positional embedding), and the last `prefix_length` outputs are
    the prefix.
    """

    def __init__(self, config: CapDecConfig):
        super().__init__()
        hidden_size = config.decoder_hidden_size
        self.clip_length = config.clip_length
        self.hidden_size = hidden_size
        self.linear = nn.Linear(config.clip_projection_dim, config.clip_length * hidden_size)
        self.prefix_const = nn.Parameter(torch.randn(config.prefix_length, hidden_size))
        self.transformer = CapDecMapperTransformer(config)

    def forward(self, clip_embeds: torch.Tensor) -> torch.Tensor:
        clip_tokens = self.linear(clip_embeds).view(-1, self.clip_length, self.hidden_size)
        prefix_const = self.prefix_const.unsqueeze(0).expand(clip_tokens.shape[0], -1, -1)
        hidden_states = self.transformer(torch.cat([clip_tokens, prefix_const], dim=1))
        return hidden_states[:, self.clip_length :]


class CapDecPreTrainedModel(PreTrainedModel):
    config: CapDecConfig
    _auto_class = "AutoModelForImageTextToText"  # saving copies the code files (as register_for_auto_class)
    base_model_prefix = "capdec"
    main_input_name = "input_ids"  # generate's `inputs_embeds` path relies on it
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # Static cache and torch.compile work: the prefix is a fixed-length input and no forward branches on data.
    _can_compile_fullgraph = True
    _no_split_modules = ["CapDecMapperLayer"]

    @classmethod
    def is_custom_code(cls) -> bool:
        """False, although CapDec lives outside transformers: for custom code, `initialize_weights` assumes an init
        that writes tensors directly and skips every module whose own parameters look initialised, including the
        modules that have none (CLIPAttention, CLIPModel's blocks, GPT2Attention). Their sub-models' inits set their
        children's weights (CLIP's q/k/v scale, GPT-2's scaled c_proj), so with weights missing from a checkpoint
        (or dropped by `ignore_mismatched_sizes`) those tensors would get a generic init unlike a fresh model's.
        CapDec's own `_init_weights` uses `transformers.initialization`, which is what the library's path expects."""
        return False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The paper's mapper keeps PyTorch's defaults: kaiming-uniform Linear weights, N(0, 1) prefix_const.
        if isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.weight.shape[1])
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, CapDecTransformerMapper):
            init.normal_(module.prefix_const, mean=0.0, std=1.0)
        elif isinstance(module, CapDecForConditionalGeneration):
            # CLIP sets logit_scale in its __init__, not in its _init_weights: when a checkpoint lacks it, give it
            # the value a fresh model has rather than uninitialised memory (skipped when it was loaded).
            logit_scale = getattr(module.clip, "logit_scale", None)
            init_value = getattr(module.clip.config, "logit_scale_init_value", None)
            if isinstance(logit_scale, nn.Parameter) and init_value is not None:
                init.constant_(logit_scale, init_value)


class CapDecForConditionalGeneration(CapDecPreTrainedModel, GenerationMixin):
    r"""
    CapDec captioner: a frozen CLIP embeds an image (or, in training, a caption), the mapping network turns the
    normalised embedding into `prefix_length` decoder input vectors, and the causal LM continues from them.

    CLIP is frozen and kept in eval mode at all times, also after `from_pretrained`. With
    `config.train_decoder=False` the decoder is frozen too (the paper's `only_prefix`).

    Example:

    ```python
    >>> from modeling_capdec import CapDecForConditionalGeneration, CapDecProcessor
    >>> model = CapDecForConditionalGeneration.from_clip_decoder_pretrained(
    ...     "openai/clip-vit-base-patch32", "gpt2", mapping_type="transformer")
    >>> processor = CapDecProcessor.from_clip_decoder_pretrained("openai/clip-vit-base-patch32", "gpt2")
    >>> # train text-only (train_capdec.py), then:
    >>> from PIL import Image
    >>> inputs = processor(images=[Image.open("dog.jpg")], return_tensors="pt")
    >>> processor.batch_decode(model.generate(**inputs, max_new_tokens=20, num_beams=5))
    ['a dog running on the beach']
    ```
    """

    def __init__(
        self,
        config: CapDecConfig,
        clip: PreTrainedModel | None = None,
        decoder: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        self.clip = clip if clip is not None else _clip_from_config(config.clip_config)
        self.decoder = (
            decoder if decoder is not None else AutoModelForCausalLM.from_config(config.text_config)
        )
        # Keep one source of truth for the part configs (as VisionEncoderDecoderModel does).
        self.config.clip_config = self.clip.config
        self.config.text_config = self.decoder.config
        # self.config (not the argument): the mapper reads its attention implementation from the model's config.
        if config.mapping_type == "mlp":
            self.clip_project = CapDecMLPMapper(self.config)
        else:
            self.clip_project = CapDecTransformerMapper(self.config)
        # The text memory of `project_to_text_memory`: a buffer only when the config declares rows, so that folders
        # saved without one load as before, and one with a memory gets it back from model.safetensors.
        memory_rows = self.config.text_memory_size
        self.register_buffer(
            "text_memory",
            torch.zeros(memory_rows, self.config.clip_projection_dim) if memory_rows else None,
            persistent=True,
        )
        # Our labels are already aligned with the prefix: every label != -100 is a prediction target. With
        # the "ForConditionalGeneration" loss type Trainer would count over labels[..., 1:] and over-scale.
        self.loss_type = None
        if self.generation_config.pad_token_id is None and self.generation_config.eos_token_id is not None:
            eos = self.generation_config.eos_token_id
            self.generation_config.pad_token_id = eos[0] if isinstance(eos, list) else eos
        text_config = self.config.get_text_config()
        if text_config.pad_token_id is None and self.generation_config.pad_token_id is not None:
            # The processor pads with EOS when the decoder's tokenizer has no pad token (GPT-2); saying so in the
            # decoder's config as well spares Trainer's "tokenizer has new PAD/BOS/EOS tokens" warning.
            text_config.pad_token_id = self.generation_config.pad_token_id
        self.post_init()
        self.freeze_frozen_parts()

    # -- freezing --------------------------------------------------------------------------------------
    def freeze_frozen_parts(self) -> None:
        """Freeze CLIP (always) and the decoder (when `config.train_decoder` is False); set their modes."""
        self.clip.requires_grad_(False)
        if not self.config.train_decoder:
            self.decoder.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()  # frozen CLIP: no dropout, whatever the outer mode
        if not self.config.train_decoder:
            self.decoder.eval()
        return self

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, plus CapDec guarantees: CLIP (and, with `train_decoder=False`, the
        decoder) is frozen again after loading, and a checkpoint whose config disagrees with its weights
        (missing, unexpected or differently shaped tensors) raises a `ValueError` that names them, instead of
        silently re-initialising part of the model. Pass `ignore_mismatched_sizes=True` to only warn, or
        `output_loading_info=True` to get `(model, loading_info)` and inspect them yourself (also a warning).
        Tied weights (the decoder's head) are not expected in the file. A local folder without `config.json`
        and an unreadable weights file raise an error naming the path."""
        output_loading_info = kwargs.pop("output_loading_info", False)
        tolerate = kwargs.get("ignore_mismatched_sizes", False) or output_loading_info
        if pretrained_model_name_or_path is not None and kwargs.get("config") is None:
            _check_local_folder(pretrained_model_name_or_path, kwargs.get("subfolder", ""))
        kwargs["ignore_mismatched_sizes"] = True  # report mismatches ourselves, by name
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        except Exception as error:
            _raise_if_unreadable_weights(pretrained_model_name_or_path, kwargs.get("subfolder", ""), error)
            raise
        problems = _describe_loading_problems(loading_info)
        if problems:
            message = (
                f"The checkpoint's weights do not match its config ({type(model).__name__}, "
                f"mapping_type={model.config.mapping_type!r}, prefix_length={model.config.prefix_length}):\n"
                + "\n".join(problems)
            )
            if not tolerate:
                raise ValueError(message)
            logger.warning(message)
        model.freeze_frozen_parts()  # from_pretrained recreates parameters with requires_grad=True
        return (model, loading_info) if output_loading_info else model

    @classmethod
    def from_clip_decoder_pretrained(
        cls,
        clip_pretrained_model_name_or_path: str,
        decoder_pretrained_model_name_or_path: str,
        **kwargs,
    ) -> "CapDecForConditionalGeneration":
        """Compose a CapDec model from a pretrained CLIP and a pretrained causal LM (Hub names or local dirs).

        Keyword arguments are routed like `VisionEncoderDecoderModel.from_encoder_decoder_pretrained`:
        `clip_*` go to the CLIP's `from_pretrained` (prefix removed), `decoder_*` to the decoder's,
        loading options such as `dtype`, `attn_implementation`, `cache_dir`, `local_files_only` to both,
        and everything else (`mapping_type`, `prefix_length`, `clip_length`, `train_decoder`, ...) to
        [`CapDecConfig`]. The mapping network starts from random weights.

        Example:

        ```python
        >>> model = CapDecForConditionalGeneration.from_clip_decoder_pretrained(
        ...     "openai/clip-vit-base-patch32", "gpt2", mapping_type="mlp", prefix_length=10)
        ```
        """
        config_fields = set(CapDecConfig.__dataclass_fields__)
        clip_kwargs, decoder_kwargs, config_kwargs = {}, {}, {}
        for key, value in kwargs.items():
            if key in config_fields:
                config_kwargs[key] = value
            elif key.startswith("clip_"):
                clip_kwargs[key[len("clip_") :]] = value
            elif key.startswith("decoder_"):
                decoder_kwargs[key[len("decoder_") :]] = value
            elif key in _SHARED_LOADING_KWARGS:
                clip_kwargs.setdefault(key, value)
                decoder_kwargs.setdefault(key, value)
            else:
                config_kwargs[key] = value
        clip = AutoModel.from_pretrained(clip_pretrained_model_name_or_path, **clip_kwargs)
        if not (hasattr(clip, "get_image_features") and hasattr(clip, "get_text_features")):
            raise ValueError(
                f"{clip_pretrained_model_name_or_path!r} loads as {type(clip).__name__}, which has no "
                "get_image_features/get_text_features: CapDec needs a CLIP-like dual encoder."
            )
        decoder = AutoModelForCausalLM.from_pretrained(
            decoder_pretrained_model_name_or_path, **decoder_kwargs
        )
        config = CapDecConfig.from_clip_decoder_configs(clip.config, decoder.config, **config_kwargs)
        model = cls(config, clip=clip, decoder=decoder)
        # The new mapper is built in float32; follow the parts' dtype.
        model.clip_project.to(dtype=decoder.dtype)
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save a Hub-ready folder: safetensors weights, a config with `auto_map` (AutoConfig, AutoModel,
        AutoModelForImageTextToText, AutoProcessor) and `custom_pipelines` (image-to-text), and the code files,
        so `pipeline("image-to-text", model=folder, trust_remote_code=True)` works without this package.
        Save the processor into the same folder (`processor.save_pretrained(folder)`)."""
        from transformers.dynamic_module_utils import custom_object_save

        from .pipeline_capdec import CapDecImageToTextPipeline

        self.config.auto_map = dict(HUB_AUTO_MAP)
        self.config.custom_pipelines = copy.deepcopy(HUB_CUSTOM_PIPELINES)
        result = super().save_pretrained(save_directory, *args, **kwargs)
        # Copies pipeline_capdec.py and what it imports (processing_capdec.py) beside the model code.
        custom_object_save(CapDecImageToTextPipeline, save_directory)
        return result

    # -- embeddings ------------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.decoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.decoder.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.decoder.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        # resize_token_embeddings swaps the decoder's head through this; the decoder re-ties it to its input.
        self.decoder.set_output_embeddings(new_embeddings)

    def _maybe_normalize(self, embeds: torch.Tensor, normalize: bool | None) -> torch.Tensor:
        normalize = self.config.normalize_prefix if normalize is None else normalize
        return F.normalize(embeds, dim=-1) if normalize else embeds

    @staticmethod
    def _features(output) -> torch.Tensor:
        # transformers 5 returns an output object (features in pooler_output); older CLIP-likes a tensor.
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> ModelOutput:
        """CLIP's image features (transformers 5's name): CLIP's own output object, whose `pooler_output`
        `(batch, clip_projection_dim)` is the projected, not normalised, image embedding. Keyword arguments
        (`output_hidden_states`, ...) go to CLIP."""
        needs = [
            name
            for name in _PATCH_SEQUENCE_INPUTS
            if name in self._clip_image_parameters() and name not in kwargs
        ]
        if needs:
            # SigLIP 2's Siglip2Model (NaFlex) embeds patch sequences of varying size; CapDec passes images only.
            raise ValueError(
                f"{type(self.clip).__name__} embeds images as patch sequences with {' and '.join(needs)}, which "
                "CapDec's prefix path does not pass: use a fixed-resolution CLIP-like model (CLIP, SigLIP or "
                "SigLIP 2 checkpoints that load as SiglipModel, the CLIP ResNets)."
            )
        pixel_values = pixel_values.to(dtype=self.clip.dtype, device=self.clip.device)
        return self.clip.get_image_features(pixel_values=pixel_values, **kwargs)

    def _clip_image_parameters(self) -> set[str]:
        return set(inspect.signature(self.clip.get_image_features).parameters)

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> ModelOutput:
        """CLIP's text features (transformers 5's name) of CLIP-tokenised text (`processor.clip_tokenizer`, not
        the decoder's tokens): CLIP's output object, whose `pooler_output` `(batch, clip_projection_dim)` is the
        projected, not normalised, text embedding."""
        return self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def get_image_embeds(self, pixel_values: torch.Tensor, normalize: bool | None = None) -> torch.Tensor:
        """CLIP image embeddings `(batch, clip_projection_dim)`, L2-normalised (unless `normalize=False`,
        or the config's `normalize_prefix` is False)."""
        return self._maybe_normalize(self._features(self.get_image_features(pixel_values)), normalize)

    @torch.no_grad()
    def get_text_embeds(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        normalize: bool | None = None,
    ) -> torch.Tensor:
        """CLIP text embeddings `(batch, clip_projection_dim)` of CLIP-tokenised captions, L2-normalised
        (unless `normalize=False`, or the config's `normalize_prefix` is False)."""
        features = self.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return self._maybe_normalize(self._features(features), normalize)

    @torch.no_grad()
    def clip_scores(
        self,
        clip_input_ids: torch.Tensor,
        clip_attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """CLIP's cosine between each image and its candidate captions: `(batch, candidates)`.

        The captions are CLIP-tokenised (`processor.clip_tokenizer`), `candidates` rows per image, one image's
        after another (as `generate(..., num_return_sequences=candidates)` returns them). Give the images as
        `pixel_values` or as CLIP `image_embeds` (normalised here). This is what `clip_rerank` of the pipeline
        ranks candidates by.

        Example:

        ```python
        >>> captions = ["a red circle", "a blue square"]  # two candidates for one image
        >>> clip_inputs = processor.clip_tokenizer(captions, padding=True, return_tensors="pt")
        >>> model.clip_scores(clip_inputs["input_ids"], clip_inputs["attention_mask"], pixel_values=pixel_values)
        tensor([[0.3102, 0.1274]])
        ```
        """
        if (pixel_values is None) == (image_embeds is None):
            raise ValueError("clip_scores needs the images as exactly one of pixel_values or image_embeds.")
        if image_embeds is None:
            image_embeds = self.get_image_embeds(pixel_values, normalize=True)
        images = F.normalize(image_embeds.float(), dim=-1)
        rows, batch = clip_input_ids.shape[0], images.shape[0]
        if rows == 0 or rows % batch:
            raise ValueError(
                f"clip_scores got {rows} captions for {batch} images: give the same number of candidates (>= 1) "
                "for every image, one image's after another."
            )
        texts = self.get_text_embeds(clip_input_ids, clip_attention_mask, normalize=True).float()
        texts = F.normalize(texts.to(images.device), dim=-1).view(batch, rows // batch, -1)
        return torch.einsum("bd,bkd->bk", images, texts)

    # -- text memory (DeCap's projection) ---------------------------------------------------------------
    def set_text_memory(self, text_embeds: torch.Tensor | None) -> None:
        """Store `text_embeds` `(rows, clip_projection_dim)`, CLIP text embeddings of training captions, as the
        model's text memory: normalised, float32, saved in model.safetensors as `text_memory` (and
        `config.text_memory_size` set to `rows`). `None` removes the memory.

        Example:

        ```python
        >>> model.set_text_memory(model.get_text_embeds(**processor.clip_tokenizer(captions, padding=True,
        ...                                                                        return_tensors="pt")))
        >>> model.config.text_memory_size == len(captions)
        True
        ```
        """
        if text_embeds is None:
            self.text_memory = None
            self.config.text_memory_size = 0
            return
        expected = self.config.clip_projection_dim
        if text_embeds.dim() != 2 or text_embeds.shape[0] == 0 or text_embeds.shape[1] != expected:
            raise ValueError(
                f"The text memory must have shape (rows >= 1, {expected}), got {tuple(text_embeds.shape)}."
            )
        memory = text_embeds.detach().float()
        norms = memory.norm(dim=-1)
        if not bool(torch.isfinite(memory).all()) or bool((norms == 0).any()):
            raise ValueError("The text memory holds a row that is zero or not finite (inf or NaN).")
        self.text_memory = (memory / norms[:, None]).to(self.device)
        self.config.text_memory_size = memory.shape[0]

    def project_to_text_memory(
        self, clip_embeds: torch.Tensor, temperature: float = DEFAULT_MEMORY_TEMPERATURE
    ) -> torch.Tensor:
        r"""Replace each CLIP embedding by a similarity-weighted combination of the text memory, as DeCap does (Li
        et al., "DeCap: Decoding CLIP Latents for Zero-Shot Captioning via Text-Only Training", ICLR 2023):

        $$v' = \frac{\sum_i w_i m_i}{\lVert \sum_i w_i m_i \rVert_2}, \qquad
        w = \operatorname{softmax}_i\left(\frac{m_i^\top \hat v}{\tau}\right)$$

        with $m_i$ the normalised memory rows and $\hat v$ the normalised embedding. As $\tau \to 0$ this is the
        nearest memory row, as $\tau \to \infty$ the (normalised) memory mean. The decoder then sees an embedding
        from the region of text embeddings it was trained on.

        Args:
            clip_embeds: `(batch, clip_projection_dim)` CLIP embeddings (normalised or not).
            temperature: τ > 0.

        Returns:
            `(batch, clip_projection_dim)` unit-norm embeddings, in the dtype of `clip_embeds`.

        Example:

        ```python
        >>> projected = model.project_to_text_memory(model.get_image_embeds(pixel_values), temperature=0.01)
        ```
        """
        if self.text_memory is None:
            raise ValueError(
                "This model has no text memory to project onto (config.text_memory_size is 0): train with "
                "--text_memory_size N, or attach one with model.set_text_memory(text_embeds) "
                "(modeling_capdec.training.text_memory.attach_text_memory for a saved folder)."
            )
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"memory_temperature must be a number > 0, got {temperature!r}.")
        memory = self.text_memory.float()
        query = F.normalize(clip_embeds.float().to(memory.device), dim=-1)
        weights = torch.softmax(query @ memory.T / temperature, dim=-1)
        return F.normalize(weights @ memory, dim=-1).to(clip_embeds.dtype)

    def get_prefix_embeds(
        self,
        pixel_values: torch.Tensor | None = None,
        clip_input_ids: torch.Tensor | None = None,
        clip_attention_mask: torch.Tensor | None = None,
        clip_embeds: torch.Tensor | None = None,
        project_to_memory: bool = False,
        memory_temperature: float | None = None,
    ) -> torch.Tensor:
        """Map one CLIP input per example to the decoder prefix `(batch, prefix_length, hidden)`.

        Exactly one of `pixel_values`, `clip_input_ids` or precomputed `clip_embeds` is used. The model never
        adds noise: text-only training passes `clip_embeds` that the training collator has already noised.
        With `project_to_memory=True` the CLIP embedding is first replaced by its projection onto the text memory
        ([`~CapDecForConditionalGeneration.project_to_text_memory`], temperature `memory_temperature`, default
        `DEFAULT_MEMORY_TEMPERATURE`).
        """
        if memory_temperature is not None and not project_to_memory:
            raise ValueError("memory_temperature is used only with project_to_memory=True.")
        given = [
            name
            for name, value in (
                ("pixel_values", pixel_values),
                ("clip_input_ids", clip_input_ids),
                ("clip_embeds", clip_embeds),
            )
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "Pass exactly one of pixel_values, clip_input_ids or clip_embeds to build the CLIP prefix; got "
                + (", ".join(given) if given else "none")
                + "."
            )
        if pixel_values is not None:
            clip_embeds = self.get_image_embeds(pixel_values)
        elif clip_input_ids is not None:
            clip_embeds = self.get_text_embeds(clip_input_ids, clip_attention_mask)
        else:
            expected = self.config.clip_projection_dim
            if clip_embeds.dim() != 2 or clip_embeds.shape[-1] != expected:
                raise ValueError(
                    f"clip_embeds must have shape (batch, {expected}), got {tuple(clip_embeds.shape)}."
                )
            clip_embeds = self._maybe_normalize(clip_embeds, None)
        if project_to_memory:
            temperature = DEFAULT_MEMORY_TEMPERATURE if memory_temperature is None else memory_temperature
            clip_embeds = self.project_to_text_memory(clip_embeds, temperature)
        mapper_weight = next(self.clip_project.parameters())
        return self.clip_project(clip_embeds.to(device=mapper_weight.device, dtype=mapper_weight.dtype))

    # -- forward ---------------------------------------------------------------------------------------
    # `past_key_values` (the name most code still uses) is renamed to `cache` with a warning, as in every
    # transformers 5 model: left in **kwargs it would reach the decoder beside `cache=None` and be ignored.
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        clip_input_ids: torch.LongTensor | None = None,
        clip_attention_mask: torch.Tensor | None = None,
        clip_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        cache: Cache | None = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CapDecOutput | tuple:
        r"""
        Args:
            input_ids (`(batch, seq_len)`): caption tokens in the decoder's vocabulary (without the prefix).
            attention_mask (`(batch, seq_len)`): mask of `input_ids`; the prefix is always attended.
            pixel_values (`(batch, 3, H, W)`), clip_input_ids + clip_attention_mask (`(batch, clip_len)`), or
                clip_embeds (`(batch, clip_projection_dim)`): the CLIP input that builds the prefix. Without any,
                the call is a plain decoder step (as in generation after the first step).
            labels (`(batch, seq_len)`): usually `input_ids` with padding set to -100. The loss covers these
                caption tokens only, never the prefix.
            shift_labels (in `kwargs`, `(batch, seq_len)`): transformers' name for targets already aligned
                with the logits (`logits[:, i]` predicts `shift_labels[:, i]`). CapDec's `labels` are aligned that
                way already (the prefix's last position predicts caption token 0), so `shift_labels` is used as
                `labels` and wins when both are given, as in transformers' causal-LM loss.
            cache (`Cache`): the decoder's key/value cache; `past_key_values` is accepted as its older name.
            position_ids (`(batch, seq_len)`): with a CLIP input, positions of the caption tokens counted from
                the first caption token (e.g. `attention_mask.cumsum(-1) - 1` for a left-padded batch): the
                prefix takes positions `0 .. prefix_length - 1` and they are shifted past it. Without a CLIP
                input, the decoder's own positions (the prefix included), as generation passes them.
            return_dict (`bool`): False returns a tuple of the output's non-None fields.
            num_items_in_batch (in `kwargs`): passed by Trainer under gradient accumulation: the loss is then
                the token sum divided by it.

        Example:

        ```python
        >>> batch = collator(examples)  # training.collator.CapDecDataCollator: noised clip_embeds, labels
        >>> out = model(**batch)
        >>> out.loss.backward()
        ```
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        # Taken from kwargs, as transformers' models do: Trainer infers label_names from forward's parameters
        # and would then expect a shift_labels column in every batch.
        shift_labels = kwargs.pop("shift_labels", None)
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        if shift_labels is not None:
            labels = shift_labels
        self._check_token_ids(input_ids)
        decoder_kwargs = {"cache": cache, "use_cache": use_cache, **kwargs}
        if all(x is None for x in (pixel_values, clip_input_ids, clip_embeds)):
            # A plain decoder step: generation after the prefix, or a caller that built inputs_embeds itself.
            if labels is not None:
                raise ValueError("labels need a CLIP input (pixel_values, clip_input_ids or clip_embeds).")
            outputs = self.decoder(
                input_ids=input_ids,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                logits_to_keep=logits_to_keep,
                **decoder_kwargs,
            )
            output = CapDecOutput(
                logits=outputs.logits,
                cache=outputs.get("cache"),
                hidden_states=outputs.get("hidden_states"),
                attentions=outputs.get("attentions"),
            )
            return output if return_dict else output.to_tuple()

        prefix_embeds = self.get_prefix_embeds(
            pixel_values=pixel_values,
            clip_input_ids=clip_input_ids,
            clip_attention_mask=clip_attention_mask,
            clip_embeds=clip_embeds,
        )
        decoder_embeds, decoder_mask, position_ids = self._prepend_prefix(
            prefix_embeds, input_ids, inputs_embeds, attention_mask, position_ids
        )
        if labels is not None:
            caption_shape = (decoder_embeds.shape[0], decoder_embeds.shape[1] - prefix_embeds.shape[1])
            if labels.shape != caption_shape:
                raise ValueError(
                    f"labels must have the caption's shape {caption_shape}, got {tuple(labels.shape)}."
                )
            # Position prefix_length - 1 + i predicts caption token i: project only those seq_len positions
            # (plus the last, dropped) to the vocabulary, never the prefix.
            logits_to_keep = caption_shape[1] + 1
        outputs = self.decoder(
            inputs_embeds=decoder_embeds,
            attention_mask=decoder_mask,
            position_ids=position_ids,
            logits_to_keep=logits_to_keep,
            **decoder_kwargs,
        )
        logits, loss = outputs.logits, None
        if labels is not None:
            logits = logits[:, :-1]
            loss = self._caption_loss(logits, labels, num_items_in_batch)
        output = CapDecOutput(
            loss=loss,
            logits=logits,
            cache=outputs.get("cache"),
            prefix_embeds=prefix_embeds,
            hidden_states=outputs.get("hidden_states"),
            attentions=outputs.get("attentions"),
        )
        return output if return_dict else output.to_tuple()

    def _check_token_ids(self, input_ids: torch.Tensor | None) -> None:
        """A token id past the decoder's embedding table fails deep inside an embedding lookup (or, on GPU, as
        a device-side assert): name the problem here instead, typically a tokenizer grown without
        `resize_token_embeddings`."""
        if input_ids is None or input_ids.numel() == 0 or torch.compiler.is_compiling():
            return  # (reading the largest id would break a compiled graph)
        vocab_size = self.get_input_embeddings().num_embeddings
        # One device sync (in training, once per step), not two.
        largest, smallest = torch.stack([input_ids.max(), input_ids.min()]).tolist()
        if largest >= vocab_size or smallest < 0:
            bad = largest if largest >= vocab_size else smallest
            raise ValueError(
                f"input_ids hold token id {bad}, outside the decoder's vocabulary of {vocab_size} tokens "
                "(0 .. {last}). If tokens were added to the tokenizer, call "
                "model.resize_token_embeddings(len(tokenizer)).".format(last=vocab_size - 1)
            )

    def _prepend_prefix(
        self,
        prefix_embeds: torch.Tensor,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The decoder's input `(batch, prefix_length + seq_len, hidden)`, its mask (the prefix is always attended)
        and, when caption `position_ids` are given, the positions of the whole input (the caption's count from its
        first token; the prefix comes first)."""
        batch, prefix_length, _ = prefix_embeds.shape
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("Pass input_ids or inputs_embeds for the caption, not both.")
        if input_ids is not None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if inputs_embeds is None:
            inputs_embeds = prefix_embeds.new_zeros(batch, 0, prefix_embeds.shape[-1])
        decoder_embeds = torch.cat([prefix_embeds, inputs_embeds.to(prefix_embeds.dtype)], dim=1)
        prefix_mask = torch.ones(batch, prefix_length, dtype=torch.long, device=decoder_embeds.device)
        if attention_mask is None:
            attention_mask = torch.ones(
                batch, inputs_embeds.shape[1], dtype=torch.long, device=decoder_embeds.device
            )
        if position_ids is not None:
            prefix_positions = torch.arange(prefix_length, device=position_ids.device).expand(
                position_ids.shape[0], -1
            )
            position_ids = torch.cat([prefix_positions, position_ids + prefix_length], dim=-1)
        return decoder_embeds, torch.cat([prefix_mask, attention_mask.to(prefix_mask)], dim=1), position_ids

    @staticmethod
    def _caption_loss(
        logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None
    ) -> torch.Tensor:
        """Cross-entropy summed over caption tokens (labels != -100), divided by `num_items_in_batch` (Trainer's
        count under gradient accumulation) or else by this batch's count."""
        token_losses = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1).to(logits.device),
            ignore_index=-100,
            reduction="sum",
        )
        if num_items_in_batch is None:
            num_items_in_batch = (labels != -100).sum().clamp(min=1)
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(token_losses.device)
        return token_losses / num_items_in_batch

    # -- generation ------------------------------------------------------------------------------------
    def _default_max_new_tokens(self, input_length: int) -> int | None:
        """The caption length when neither the call nor the generation config sets one: the original code's 67
        tokens (transformers' generic default, max_length 20, would cut long COCO captions), within the decoder's
        positions after `input_length` prefix and prompt positions. None when the generation config sets one."""
        config = self.generation_config
        if config.max_new_tokens is not None or config.max_length != GenerationConfig().max_length:
            return None
        positions = self._decoder_positions()
        room = positions - input_length if positions else DEFAULT_MAX_NEW_TOKENS
        return max(1, min(DEFAULT_MAX_NEW_TOKENS, room))

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ) -> dict:
        """transformers' preparation, plus one CapDec rule: the CLIP prefix exists only as embeddings, so every
        step whose cache does not hold all of `inputs_embeds` yet feeds them, followed by the embeddings of the
        tokens `input_ids` has beyond them (assisted decoding's candidates). transformers feeds `inputs_embeds`
        only on a first iteration and ignores tokens past them, which loses the prefix for an assistant model."""
        past_length = cache.get_seq_length() if cache is not None else 0
        if inputs_embeds is not None and past_length < inputs_embeds.shape[1]:
            known = inputs_embeds.shape[1]
            if input_ids is not None and input_ids.shape[1] > known:
                extra = self.get_input_embeddings()(input_ids[:, known:]).to(inputs_embeds.dtype)
                inputs_embeds = torch.cat([inputs_embeds, extra], dim=1)
            next_sequence_length = inputs_embeds.shape[1] - past_length
            is_first_iteration = True
        return super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        clip_input_ids: torch.LongTensor | None = None,
        clip_attention_mask: torch.Tensor | None = None,
        clip_embeds: torch.FloatTensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor | ModelOutput:
        """Caption a batch from images (or CLIP text / precomputed embeddings), with any decoding strategy
        of `GenerationMixin.generate` (greedy, beam search, sampling, assisted; the KV cache is always used).

        Returns `(batch, new_tokens)` caption token ids, padded with the pad (= eos) token. With a text
        prompt (`input_ids`, `attention_mask`, left-padded) the prompt continues after the prefix and its
        tokens are returned in front of the new ones, as for any decoder-only model; so are the `sequences` of
        `return_dict_in_generate=True` (whose `scores`/`logits` cover the new tokens). To continue a caption,
        pass its `sequences` as `input_ids` with the returned `cache` and the same CLIP input.
        `position_ids`, if given, count from the first prompt token (the prefix is placed before them).
        `project_to_memory=True` (with `memory_temperature=τ`) first projects the CLIP embedding onto the model's
        text memory ([`~CapDecForConditionalGeneration.project_to_text_memory`]); off by default.

        Example:

        ```python
        >>> inputs = processor(images=images, return_tensors="pt")
        >>> ids = model.generate(**inputs, num_beams=5, max_new_tokens=20)
        >>> processor.batch_decode(ids)
        ```
        """
        if "prefix_embeds" in generate_kwargs:
            raise ValueError(
                "generate builds prefix_embeds itself; pass pixel_values, clip_input_ids or clip_embeds."
            )
        has_clip_input = any(x is not None for x in (pixel_values, clip_input_ids, clip_embeds))
        if "inputs_embeds" in generate_kwargs and not has_clip_input:
            # Decoder inputs built by the caller, prefix included: what assisted decoding passes its assistant.
            return super().generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        if "inputs_embeds" in generate_kwargs:
            raise ValueError(
                "generate builds inputs_embeds itself from the CLIP input; pass one or the other."
            )
        generate_kwargs.pop("token_type_ids", None)
        original_beam_search = generate_kwargs.pop("original_beam_search", False)
        memory_kwargs = {
            "project_to_memory": generate_kwargs.pop("project_to_memory", False),
            "memory_temperature": generate_kwargs.pop("memory_temperature", None),
        }
        # `cache` is the v5 name; `past_key_values`, the older one, is accepted as well.
        if "past_key_values" in generate_kwargs:
            generate_kwargs["cache"] = generate_kwargs.pop("past_key_values")
        self._check_generate_arguments(pixel_values, clip_input_ids, clip_embeds, generate_kwargs)
        prefix_embeds = self.get_prefix_embeds(
            pixel_values=pixel_values,
            clip_input_ids=clip_input_ids,
            clip_attention_mask=clip_attention_mask,
            clip_embeds=clip_embeds,
            **memory_kwargs,
        )
        has_prompt = input_ids is not None and input_ids.shape[-1] > 0
        if original_beam_search:
            if has_prompt:
                raise ValueError(
                    "original_beam_search captions from the CLIP prefix alone: pass no input_ids."
                )
            return self._original_beam_search(prefix_embeds, generate_kwargs)
        if has_prompt:
            self._check_token_ids(input_ids)
            input_ids = input_ids.to(prefix_embeds.device)
        position_ids = generate_kwargs.pop("position_ids", None)
        # generate drives the decoder from inputs_embeds (prefix + prompt): the same input forward builds.
        inputs_embeds, decoder_mask, position_ids = self._prepend_prefix(
            prefix_embeds,
            input_ids if has_prompt else None,
            None,
            attention_mask if has_prompt else None,
            position_ids.to(prefix_embeds.device) if position_ids is not None else None,
        )
        if position_ids is not None:
            generate_kwargs["position_ids"] = position_ids
        self._fit_length_to_positions(inputs_embeds.shape[1], generate_kwargs)
        if generate_kwargs.get("assistant_model") is not None:
            return self._assisted_generate(
                inputs_embeds,
                decoder_mask,
                prefix_embeds.shape[1],
                input_ids if has_prompt else None,
                generate_kwargs,
            )
        # From inputs_embeds alone, GenerationMixin returns only the newly generated tokens.
        output = super().generate(inputs_embeds=inputs_embeds, attention_mask=decoder_mask, **generate_kwargs)
        if not has_prompt:
            return output
        new_tokens = output if isinstance(output, torch.Tensor) else output.sequences
        repeat = new_tokens.shape[0] // input_ids.shape[0]  # num_return_sequences
        sequences = torch.cat([input_ids.repeat_interleave(repeat, dim=0), new_tokens], dim=1)
        if isinstance(output, torch.Tensor):
            return sequences
        output.sequences = sequences
        return output

    def _original_beam_search(self, prefix_embeds: torch.Tensor, generate_kwargs: dict) -> torch.LongTensor:
        """The authors' beam search (CapDec/ClipCap), token for token, batched over images and with the KV cache.

        Unlike transformers' beam search, finished hypotheses stay in the beam slots (extended by a free token 0
        that the length does not count), every hypothesis is ranked by its average log-probability (sum / length)
        at each step, an image stops only when all its beams have emitted the stop token (the generation config's
        eos, "." for converted checkpoints, kept) or after `max_new_tokens` (67 by default), and the best average
        wins. `num_beams=1` is the authors' greedy loop. Returns `(batch, tokens)` ids padded with the pad id.

        Example:

        ```python
        >>> ids = model.generate(**processor(images=images, return_tensors="pt"), original_beam_search=True, num_beams=5)
        ```
        """
        config = copy.deepcopy(generate_kwargs.pop("generation_config", None) or self.generation_config)
        unused = config.update(**generate_kwargs)
        unsupported = sorted(unused) + [
            name
            for name, given in (
                ("do_sample", config.do_sample),
                ("num_return_sequences", (config.num_return_sequences or 1) > 1),
                ("return_dict_in_generate", config.return_dict_in_generate),
            )
            if given
        ]
        if unsupported:
            raise ValueError(f"original_beam_search does not support {unsupported}.")
        if config.eos_token_id is None:
            raise ValueError(
                'original_beam_search needs a stop token: set eos_token_id ("." in the original).'
            )
        device = prefix_embeds.device
        stop_ids = torch.tensor(config.eos_token_id, device=device).reshape(-1)
        pad_id = config.pad_token_id if config.pad_token_id is not None else int(stop_ids[0])
        max_new_tokens = config.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        positions = self._decoder_positions()
        if positions:
            max_new_tokens = min(max_new_tokens, positions - prefix_embeds.shape[1])
        batch, beams = prefix_embeds.shape[0], config.num_beams or 1

        # Every beam row reads the prefix once; the first step ranks one row per image (all rows are alike).
        output = self.decoder(inputs_embeds=prefix_embeds.repeat_interleave(beams, dim=0), use_cache=True)
        cache = output.cache
        # softmax().log() rather than log_softmax: the same rounding as the original, so the same ties break.
        log_probs = output.logits[::beams, -1].softmax(-1).log()
        scores, tokens = log_probs.topk(beams, dim=-1)
        scores, tokens = scores.reshape(-1), tokens.reshape(-1, 1)
        lengths = torch.ones_like(scores)
        stopped = torch.isin(tokens[:, 0], stop_ids)
        rows = torch.arange(batch * beams, device=device).view(batch, beams)
        for _ in range(max_new_tokens - 1):
            image_done = stopped.view(batch, beams).all(dim=1)
            if image_done.all():
                break
            log_probs = self.decoder(input_ids=tokens[:, -1:], cache=cache, use_cache=True).logits[:, -1]
            log_probs = log_probs.softmax(-1).log()
            vocab = log_probs.shape[-1]
            # A finished hypothesis competes with its score unchanged: only token 0, free and not counted.
            log_probs[stopped] = -math.inf
            log_probs[stopped, 0] = 0.0
            totals = scores[:, None] + log_probs
            lengths = lengths + (~stopped).to(lengths.dtype)
            averages = totals / lengths[:, None]
            best, flat = averages.view(batch, beams * vocab).topk(beams, dim=-1)
            source = (flat // vocab + rows[:, :1]).reshape(-1)
            new_tokens = (flat % vocab).reshape(-1)
            # Images whose beams have all ended keep their state, as the original stops looping for them.
            done_rows = image_done.repeat_interleave(beams)
            source = torch.where(done_rows, rows.reshape(-1), source)
            new_tokens = torch.where(done_rows, torch.zeros_like(new_tokens), new_tokens)
            lengths = lengths[source]
            scores = torch.where(done_rows, scores, best.reshape(-1) * lengths)
            stopped = stopped[source] | torch.isin(new_tokens, stop_ids)
            tokens = torch.cat([tokens[source], new_tokens[:, None]], dim=1)
            cache.reorder_cache(source)
        winners = (scores / lengths).view(batch, beams).argmax(dim=1) + rows[:, 0]
        caption_lengths = lengths[winners].long()
        captions = torch.full((batch, int(caption_lengths.max())), pad_id, dtype=torch.long, device=device)
        for index, (row, length) in enumerate(zip(winners.tolist(), caption_lengths.tolist(), strict=True)):
            captions[index, :length] = tokens[row, :length]
        return captions

    def _assisted_generate(
        self,
        inputs_embeds: torch.Tensor,
        decoder_mask: torch.Tensor,
        prefix_length: int,
        prompt_ids: torch.Tensor | None,
        generate_kwargs: dict,
    ):
        """Assisted decoding sizes the assistant's cache and checks candidates by input_ids: give generate one
        placeholder id per prefix position (never embedded: prepare_inputs_for_generation feeds the prefix
        embeddings instead) and the prompt, so that input_ids and the cache have the same length. Returns what
        `generate` returns, without the placeholders."""
        placeholders = torch.full(
            (inputs_embeds.shape[0], prefix_length),
            self.generation_config.pad_token_id or 0,
            dtype=torch.long,
            device=inputs_embeds.device,
        )
        decoder_ids = torch.cat([placeholders, prompt_ids], dim=1) if prompt_ids is not None else placeholders
        output = super().generate(
            input_ids=decoder_ids, inputs_embeds=inputs_embeds, attention_mask=decoder_mask, **generate_kwargs
        )
        if isinstance(output, torch.Tensor):
            return output[:, prefix_length:]
        output.sequences = output.sequences[:, prefix_length:]
        return output

    def _check_generate_arguments(
        self,
        pixel_values: torch.Tensor | None,
        clip_input_ids: torch.Tensor | None,
        clip_embeds: torch.Tensor | None,
        generate_kwargs: dict,
    ) -> None:
        """Errors that would otherwise surface deep inside transformers with an unrelated message."""
        for name, value in (
            ("pixel_values", pixel_values),
            ("clip_input_ids", clip_input_ids),
            ("clip_embeds", clip_embeds),
        ):
            if value is not None and value.shape[0] == 0:
                raise ValueError(
                    f"generate got an empty batch ({name} of shape {tuple(value.shape)}): nothing to caption."
                )
        config = generate_kwargs.get("generation_config")
        num_beams = generate_kwargs.get("num_beams", getattr(config, "num_beams", None))
        if num_beams is not None and num_beams < 1:
            raise ValueError(
                f"num_beams must be a positive integer (1 for greedy or sampling), got {num_beams}."
            )

    def _decoder_positions(self) -> int | None:
        text_config = self.config.text_config.get_text_config()
        return getattr(text_config, "max_position_embeddings", None) or getattr(
            text_config, "n_positions", None
        )

    def _fit_length_to_positions(self, input_length: int, generate_kwargs: dict) -> None:
        """Choose the caption length when nothing sets one, and keep every length within the decoder's positions:
        past them a learned position table (GPT-2) fails with an IndexError mid-generation, so a longer request
        is cut to what fits, with a warning naming the numbers."""
        if not any(key in generate_kwargs for key in ("max_new_tokens", "max_length", "generation_config")):
            default = self._default_max_new_tokens(input_length)
            if default is not None:
                generate_kwargs["max_new_tokens"] = default
        positions = self._decoder_positions()
        if not positions:
            return
        config = generate_kwargs.get("generation_config", self.generation_config)
        # A continued generation counts its earlier tokens in input_length (they are in the prompt).
        room = positions - input_length
        if room < 1:
            raise ValueError(
                f"The prefix and prompt take {input_length} positions, but the decoder has only {positions}: "
                "shorten the prompt."
            )
        max_new_tokens = generate_kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
        if max_new_tokens is not None and max_new_tokens > room:
            logger.warning(
                f"max_new_tokens={max_new_tokens} does not fit the decoder's {positions} positions after "
                f"{input_length} prefix and prompt positions: generating at most {room} new tokens."
            )
            generate_kwargs.pop("max_length", None)
            generate_kwargs["max_new_tokens"] = room


# -- OpenAI CLIP ResNets (RN50, RN50x4, ...) -------------------------------------------------------------------------
# The paper's CLIP is RN50x4, which transformers does not provide. Its text tower is transformers' CLIP text model;
# the image tower below keeps the module names of OpenAI's checkpoints (conv1, bn1, layer1.0.conv1, downsample.0,
# attnpool.q_proj, ...), so their `visual.*` weights load under `vision_model.*` without renaming.


class CLIPResNetBottleneck(nn.Module):
    """1×1 → 3×3 → (average pool when strided) → 1×1 ×4 convolutions, batch norms and ReLUs, plus a shortcut that
    pools before its 1×1 convolution: the strided path is anti-aliased by pooling, not by a strided convolution."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride > 1 or in_channels != out_channels:
            # Indices 0 and 1 as in OpenAI's checkpoints (their pool sits at "-1" and has no weights).
            self.downsample_pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shortcut = hidden_states
        out = F.relu(self.bn1(self.conv1(hidden_states)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.pool(out)))
        if self.downsample is not None:
            shortcut = self.downsample(self.downsample_pool(hidden_states))
        return F.relu(out + shortcut)


class CLIPResNetAttentionPool(nn.Module):
    """Attention pooling: the mean of the feature map, prepended to its positions (all with a learned positional
    embedding), is the one query of a multi-head attention over them; its output, projected to `output_dim`, is the
    image embedding."""

    def __init__(self, config: CLIPResNetVisionConfig):
        super().__init__()
        embed_dim, grid = config.embed_dim, config.image_size // 32
        self.num_heads = config.num_attention_heads
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid + 1, embed_dim))
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, config.output_dim)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        batch, channels = feature_map.shape[:2]
        tokens = feature_map.flatten(2).transpose(1, 2)  # (batch, positions, channels)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + self.positional_embedding.to(tokens.dtype)
        head_dim = channels // self.num_heads

        def heads(states: torch.Tensor) -> torch.Tensor:
            return states.view(batch, -1, self.num_heads, head_dim).transpose(1, 2)

        # Only the mean token's output is used, so it is the only query (scaled by head_dim ** -0.5).
        attended = F.scaled_dot_product_attention(
            heads(self.q_proj(tokens[:, :1])), heads(self.k_proj(tokens)), heads(self.v_proj(tokens))
        )
        return self.c_proj(attended.transpose(1, 2).reshape(batch, channels))


class CLIPResNetPreTrainedModel(PreTrainedModel):
    config: CLIPResNetConfig
    base_model_prefix = "clip_resnet"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = False
    _supports_sdpa = True  # the text tower's attention implementation
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @classmethod
    def is_custom_code(cls) -> bool:
        """False, for the reason given in `CapDecPreTrainedModel.is_custom_code`: the init below uses
        `transformers.initialization`, as the library's own models do."""
        return False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # OpenAI's initialisation: PyTorch's conv default, attention pool weights N(0, width ** -0.5), and the last
        # batch norm of each bottleneck scaled to zero (each block starts as its shortcut).
        factor = getattr(self.config, "initializer_factor", 1.0)
        if isinstance(module, nn.Conv2d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, CLIPResNetAttentionPool):
            std = module.q_proj.in_features**-0.5 * factor
            init.normal_(module.positional_embedding, std=std)
            for linear in (module.q_proj, module.k_proj, module.v_proj, module.c_proj):
                init.normal_(linear.weight, std=std)
                init.zeros_(linear.bias)
        elif isinstance(module, CLIPResNetBottleneck):
            init.zeros_(module.bn3.weight)
        elif isinstance(module, CLIPResNetModel):
            init.normal_(module.text_projection.weight, std=module.text_projection.in_features**-0.5 * factor)
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class CLIPResNetVisionModel(CLIPResNetPreTrainedModel):
    r"""
    The image tower of OpenAI's CLIP ResNets: 3-conv stem (stride 2) and a 2× average pool, four stages of
    bottlenecks (stages 2-4 start with stride 2), and attention pooling to `output_dim`.

    Example:

    ```python
    >>> import torch
    >>> from modeling_capdec.configuration_capdec import CLIPResNetVisionConfig
    >>> from modeling_capdec.modeling_capdec import CLIPResNetVisionModel
    >>> config = CLIPResNetVisionConfig(layers=[1, 1, 1, 1], width=8, image_size=64, num_attention_heads=4, output_dim=16)
    >>> out = CLIPResNetVisionModel(config)(torch.randn(2, 3, 64, 64))
    >>> out.last_hidden_state.shape, out.pooler_output.shape
    (torch.Size([2, 256, 2, 2]), torch.Size([2, 16]))
    ```
    """

    config: CLIPResNetVisionConfig
    input_modalities = ("image",)

    def __init__(self, config: CLIPResNetVisionConfig):
        super().__init__(config)
        width = config.width
        self.conv1 = nn.Conv2d(config.num_channels, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        in_channels = width
        for stage, blocks in enumerate(config.layers):
            channels = width * 2**stage
            stage_blocks = []
            for index in range(blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                stage_blocks.append(CLIPResNetBottleneck(in_channels, channels, stride))
                in_channels = channels * CLIPResNetBottleneck.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*stage_blocks))
        self.attnpool = CLIPResNetAttentionPool(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        r"""
        Args:
            pixel_values (`(batch, num_channels, image_size, image_size)`): normalised images.
            output_hidden_states (`bool`): also return the stem's and each stage's feature maps.

        Returns: `last_hidden_state` `(batch, width * 32, image_size / 32, image_size / 32)`, the last stage's
        feature map, and `pooler_output` `(batch, output_dim)`, the image embedding (projected, not normalised).
        """
        size = self.config.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (self.config.num_channels, size, size):
            raise ValueError(
                f"pixel_values must have shape (batch, {self.config.num_channels}, {size}, {size}) for this "
                f"CLIP ResNet (its attention pool has positions for {size}-pixel images), got "
                f"{tuple(pixel_values.shape)}."
            )
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        hidden = pixel_values.to(self.conv1.weight.dtype)
        hidden = F.relu(self.bn1(self.conv1(hidden)))
        hidden = F.relu(self.bn2(self.conv2(hidden)))
        hidden = self.avgpool(F.relu(self.bn3(self.conv3(hidden))))
        hidden_states = [hidden]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            hidden = stage(hidden)
            hidden_states.append(hidden)
        output = BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=hidden,
            pooler_output=self.attnpool(hidden),
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


def _contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss: the mean of the text→image and image→text cross-entropies, pair i matching i."""
    targets = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, targets) + F.cross_entropy(logits_per_text.t(), targets)) / 2


class CLIPResNetModel(CLIPResNetPreTrainedModel):
    r"""
    OpenAI's CLIP with a ResNet image tower (RN50x4, the CapDec paper's CLIP, by default): the ResNet below and
    transformers' CLIP text transformer with a bias-free text projection. `get_image_features` and
    `get_text_features` return output objects whose `pooler_output` `(batch, projection_dim)` is the (not normalised)
    embedding, as transformers' `CLIPModel` does, so the model serves as CapDec's CLIP. Load OpenAI's / open_clip's
    weights with `modeling_capdec.convert.open_clip.load_open_clip_resnet("timm/resnet50x4_clip.openai")`.

    Example:

    ```python
    >>> import torch
    >>> from modeling_capdec.configuration_capdec import CLIPResNetConfig
    >>> from modeling_capdec.modeling_capdec import CLIPResNetModel
    >>> config = CLIPResNetConfig(
    ...     text_config={"vocab_size": 50, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
    ...                  "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1},
    ...     vision_config={"layers": [1, 1, 1, 1], "width": 8, "image_size": 64, "num_attention_heads": 4,
    ...                    "output_dim": 16},
    ...     projection_dim=16)
    >>> model = CLIPResNetModel(config).eval()
    >>> model.get_image_features(torch.randn(2, 3, 64, 64)).pooler_output.shape
    torch.Size([2, 16])
    >>> model.get_text_features(torch.tensor([[3, 4, 5]])).pooler_output.shape
    torch.Size([1, 16])
    ```
    """

    config: CLIPResNetConfig

    def __init__(self, config: CLIPResNetConfig):
        super().__init__(config)
        self.text_model = CLIPTextModel._from_config(config.text_config)
        self.vision_model = CLIPResNetVisionModel._from_config(config.vision_config)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """The text transformer's output, with `pooler_output` (the end-of-text token's state) projected to
        `(batch, projection_dim)`."""
        outputs = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            return_dict=True,
            **kwargs,
        )
        outputs.pooler_output = self.text_projection(outputs.pooler_output)
        return outputs

    def get_image_features(
        self, pixel_values: torch.Tensor, **kwargs
    ) -> BaseModelOutputWithPoolingAndNoAttention:
        """The ResNet's output; its `pooler_output` `(batch, projection_dim)` is already the image embedding (the
        attention pool projects)."""
        return self.vision_model(pixel_values=pixel_values, return_dict=True, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        **kwargs,
    ) -> CLIPOutput:
        """CLIP's image-text similarity, as transformers' `CLIPModel.forward`: `logits_per_image`
        `(images, texts)` are the scaled cosine similarities, and `return_loss=True` adds the contrastive loss."""
        image_outputs = self.get_image_features(pixel_values)
        text_outputs = self.get_text_features(input_ids, attention_mask, position_ids)
        image_embeds = F.normalize(image_outputs.pooler_output, dim=-1)
        text_embeds = F.normalize(text_outputs.pooler_output, dim=-1)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp()
        return CLIPOutput(
            loss=_contrastive_loss(logits_per_text) if return_loss else None,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=image_outputs,
        )


__all__ = [
    "CapDecForConditionalGeneration",
    "CapDecPreTrainedModel",
    "CapDecOutput",
    "CLIPResNetModel",
    "CLIPResNetPreTrainedModel",
    "CLIPResNetVisionModel",
]
