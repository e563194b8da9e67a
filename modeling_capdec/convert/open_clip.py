"""Load OpenAI's CLIP ResNets (RN50, RN50x4, ...) from open_clip's Hub layout into `CLIPResNetModel`.

open_clip's Hub repos (e.g. `timm/resnet50x4_clip.openai`, the CapDec paper's CLIP) hold `open_clip_config.json`
(`model_cfg`, `preprocess_cfg`) and the weights in OpenAI's layout (`visual.*`, `token_embedding.weight`,
`transformer.resblocks.N.*`, `text_projection`, ...) as `open_clip_model.safetensors`. Weights are read from
safetensors, or from `open_clip_pytorch_model.bin` with `torch.load(weights_only=True)`; never with
`torch.jit.load` or a full unpickling. The tokenizer is CLIP's BPE, the same as `openai/clip-vit-base-patch32`'s
(taken from there unless the checkpoint is a local folder that holds tokenizer files).

Example:

```python
>>> from modeling_capdec.convert.open_clip import convert_open_clip_resnet
>>> convert_open_clip_resnet("timm/resnet50x4_clip.openai", "clip-rn50x4")  # doctest: +SKIP
>>> # then, as any CLIP folder:
>>> model = CapDecForConditionalGeneration.from_clip_decoder_pretrained("clip-rn50x4", "gpt2")  # doctest: +SKIP
```
"""

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.image_utils import PILImageResampling
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from modeling_capdec.configuration_capdec import CLIPResNetConfig
from modeling_capdec.convert.key_checks import key_mismatches
from modeling_capdec.modeling_capdec import CLIPResNetModel

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_SAFETENSORS = "open_clip_model.safetensors"
OPEN_CLIP_PICKLE = "open_clip_pytorch_model.bin"
# CLIP's byte-level BPE (49408 tokens), identical for every OpenAI CLIP.
CLIP_TOKENIZER = "openai/clip-vit-base-patch32"
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
RESAMPLING = {"bicubic": PILImageResampling.BICUBIC, "bilinear": PILImageResampling.BILINEAR}
# Metadata that OpenAI's TorchScript archives hold beside the weights.
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
# open_clip text/vision options CLIPResNetModel does not implement, with the value OpenAI's models use.
UNSUPPORTED_TEXT_OPTIONS = {
    "hf_model_name": None,
    "ls_init_value": None,
    "embed_cls": False,
    "no_causal_mask": False,
    "final_ln_after_pool": False,
    "pool_type": "argmax",
    "proj_bias": False,
    "attentional_pool": False,
}
UNSUPPORTED_VISION_OPTIONS = {"timm_model_name": None}


def is_open_clip_checkpoint(name_or_path: str | os.PathLike, **hub_kwargs) -> bool:
    """Whether `name_or_path` (a local folder or a Hub repo) holds an open_clip model (`open_clip_config.json`).
    A Hub name that cannot be checked (offline, not found) counts as not open_clip.

    Example:

    ```python
    >>> is_open_clip_checkpoint("timm/resnet50x4_clip.openai")  # doctest: +SKIP
    True
    ```
    """
    if os.path.isdir(name_or_path):
        return os.path.isfile(os.path.join(name_or_path, OPEN_CLIP_CONFIG))
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(str(name_or_path), OPEN_CLIP_CONFIG, **hub_kwargs)
    except (
        Exception
    ):  # not a repo id, not found, offline and not cached: not an open_clip checkpoint we can use
        return False
    return True


def _fetch(name_or_path: str | os.PathLike, filename: str, **hub_kwargs) -> Path | None:
    """The local path of one file of a folder or Hub repo, or None when the repo does not have it."""
    if os.path.isdir(name_or_path):
        path = Path(name_or_path) / filename
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(str(name_or_path), filename, **hub_kwargs))
    except EntryNotFoundError:
        return None


def read_open_clip_config(name_or_path: str | os.PathLike, **hub_kwargs) -> dict[str, Any]:
    """The `open_clip_config.json` of a folder or Hub repo, checked to hold a `model_cfg` object.

    Example:

    ```python
    >>> read_open_clip_config("timm/resnet50x4_clip.openai")["model_cfg"]["vision_cfg"]["layers"]  # doctest: +SKIP
    [4, 6, 10, 6]
    ```
    """
    path = _fetch(name_or_path, OPEN_CLIP_CONFIG, **hub_kwargs)
    if path is None:
        raise FileNotFoundError(
            f"{name_or_path} has no {OPEN_CLIP_CONFIG}: it is not an open_clip checkpoint (open_clip's Hub repos, "
            "such as timm/resnet50x4_clip.openai, hold one)."
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise ValueError(f"{path} has no `model_cfg` object (open_clip's model settings).")
    return config


def clip_resnet_config_from_open_clip(model_cfg: dict[str, Any], **text_token_ids: int) -> CLIPResNetConfig:
    """A `CLIPResNetConfig` from open_clip's `model_cfg` (`embed_dim`, `vision_cfg`, `text_cfg`, `quick_gelu`).
    A ViT (an integer `vision_cfg.layers`) or an option this model does not implement is an error naming it.
    `text_token_ids` (`bos_token_id`, `eos_token_id`, `pad_token_id`) go to the text config.

    Example:

    ```python
    >>> cfg = {"embed_dim": 640, "vision_cfg": {"image_size": 288, "layers": [4, 6, 10, 6], "width": 80},
    ...        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 640, "heads": 10, "layers": 12}}
    >>> clip_resnet_config_from_open_clip(cfg).vision_config.num_attention_heads
    40
    ```
    """
    vision, text = model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}
    layers = vision.get("layers")
    if not isinstance(layers, (list, tuple)):
        raise ValueError(
            f"open_clip's vision_cfg.layers is {layers!r}, not a list of 4 stage depths: this is not a ResNet CLIP "
            "(a ViT, such as ViT-B/32, loads with transformers' CLIPModel: use openai/clip-vit-base-patch32)."
        )
    for where, options, unsupported in (
        ("text_cfg", text, UNSUPPORTED_TEXT_OPTIONS),
        ("vision_cfg", vision, UNSUPPORTED_VISION_OPTIONS),
    ):
        for name, supported in unsupported.items():
            if options.get(name, supported) != supported:
                raise ValueError(
                    f"open_clip's {where}.{name}={options[name]!r} is not supported by CLIPResNetModel "
                    f"(only {supported!r}, as in OpenAI's CLIPs)."
                )
    embed_dim = model_cfg["embed_dim"]
    width, text_width = vision.get("width", 64), text.get("width", 512)
    return CLIPResNetConfig(
        projection_dim=embed_dim,
        vision_config={
            "layers": list(layers),
            "width": width,
            "image_size": vision.get("image_size", 224),
            "num_attention_heads": width * 32 // vision.get("head_width", 64),
            "output_dim": embed_dim,
        },
        text_config={
            "vocab_size": text.get("vocab_size", 49408),
            "hidden_size": text_width,
            "intermediate_size": int(text_width * text.get("mlp_ratio", 4.0)),
            "num_hidden_layers": text.get("layers", 12),
            "num_attention_heads": text.get("heads", 8),
            "max_position_embeddings": text.get("context_length", 77),
            # OpenAI's CLIPs were trained with QuickGELU; open_clip's configs of their weights say so or omit it.
            "hidden_act": "quick_gelu" if model_cfg.get("quick_gelu", True) else "gelu",
            "projection_dim": embed_dim,
            **text_token_ids,
        },
    )


def _text_key(key: str) -> str | None:
    """Our name of one OpenAI text-tower key (None for the fused attention input, split elsewhere)."""
    simple = {
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
    }
    if key in simple:
        return simple[key]
    match = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", key)
    if match is None:
        return None
    block, rest = match.groups()
    renamed = {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
        "attn.out_proj": "self_attn.out_proj",
    }
    module, _, kind = rest.rpartition(".")
    if module in renamed and kind in ("weight", "bias"):
        return f"text_model.encoder.layers.{block}.{renamed[module]}.{kind}"
    return None


def map_open_clip_state_dict(
    state_dict: dict[str, torch.Tensor], model: CLIPResNetModel, source: Any = "the state dict"
) -> dict[str, torch.Tensor]:
    """OpenAI's / open_clip's ResNet CLIP weights renamed to `model`'s keys, strictly: `visual.X` becomes
    `vision_model.X`, the text transformer's keys become transformers' CLIP text names (the fused attention input
    `in_proj_weight`/`in_proj_bias` is split into q, k, v), `text_projection` is transposed into a Linear. Any
    unknown, missing or differently shaped key is an error that names it (BatchNorm's `num_batches_tracked`, unused
    at inference, may be absent).

    Example:

    ```python
    >>> weights = map_open_clip_state_dict(load_file("open_clip_model.safetensors"), model)  # doctest: +SKIP
    >>> model.load_state_dict(weights)  # doctest: +SKIP
    ```
    """
    mapped, unknown = {}, []
    for key, value in state_dict.items():
        if key in OPENAI_METADATA_KEYS:
            continue
        if key.startswith("visual."):
            mapped["vision_model." + key[len("visual.") :]] = value
        elif key == "text_projection":
            mapped["text_projection.weight"] = value.t().contiguous()
        elif match := re.fullmatch(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", key):
            block, kind = match.groups()
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                mapped[f"text_model.encoder.layers.{block}.self_attn.{name}.{kind}"] = part.contiguous()
        elif (ours := _text_key(key)) is not None:
            mapped[ours] = value
        else:
            unknown.append(key)
    expected = model.state_dict()
    optional = {key for key in expected if key.endswith("num_batches_tracked")}
    # transformers' CLIP text embeddings hold a position_ids buffer that no checkpoint needs.
    optional |= {key for key in expected if key.endswith("embeddings.position_ids")}
    missing, unexpected, mismatched = key_mismatches(mapped, expected, optional)
    unexpected = sorted(unknown) + unexpected
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{source} does not fit a CLIP ResNet of this config (layers {list(model.config.vision_config.layers)}, "
            f"width {model.config.vision_config.width}, embed_dim {model.config.projection_dim}): "
            f"missing {missing}, unknown {unexpected}, shape mismatches {mismatched}."
        )
    return mapped


def load_open_clip_weights(name_or_path: str | os.PathLike, **hub_kwargs) -> dict[str, torch.Tensor]:
    """The weights of an open_clip folder or Hub repo: `open_clip_model.safetensors`, else
    `open_clip_pytorch_model.bin` read with `torch.load(weights_only=True)`. Errors name the file."""
    path = _fetch(name_or_path, OPEN_CLIP_SAFETENSORS, **hub_kwargs)
    if path is not None:
        try:
            return load_file(path)
        except Exception as error:
            raise ValueError(
                f"Cannot read {path} as safetensors (truncated or not a weights file?): {error}"
            ) from None
    path = _fetch(name_or_path, OPEN_CLIP_PICKLE, **hub_kwargs)
    if path is None:
        raise FileNotFoundError(f"{name_or_path} has neither {OPEN_CLIP_SAFETENSORS} nor {OPEN_CLIP_PICKLE}.")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"Cannot read {path} as a weights-only torch file (it is refused rather than unpickled): "
            f"{str(error).splitlines()[0]}"
        ) from None
    if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path} holds a {type(state_dict).__name__}, not a state dict of tensors.")
    # Checkpoints saved from DistributedDataParallel prefix every key.
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def image_processor_from_open_clip(open_clip_config: dict[str, Any]) -> CLIPImageProcessorPil:
    """OpenAI's preprocessing for this model: resize the shorter side to `image_size` (bicubic), centre crop to
    `image_size`², scale to [0, 1], normalise with OpenAI's mean/std (or those `preprocess_cfg` names).

    Example:

    ```python
    >>> processor = image_processor_from_open_clip({"model_cfg": {"vision_cfg": {"image_size": 288}}})
    >>> processor.size.shortest_edge, processor.crop_size.height, processor.crop_size.width
    (288, 288, 288)
    ```
    """
    preprocess = open_clip_config.get("preprocess_cfg") or {}
    size = open_clip_config["model_cfg"].get("vision_cfg", {}).get("image_size", 224)
    if preprocess.get("resize_mode", "shortest") != "shortest":
        raise ValueError(
            f"open_clip's preprocess_cfg.resize_mode={preprocess['resize_mode']!r} is not supported (only "
            "'shortest', OpenAI's resize of the shorter side followed by a centre crop)."
        )
    interpolation = preprocess.get("interpolation", "bicubic")
    if interpolation not in RESAMPLING:
        raise ValueError(
            f"open_clip's preprocess_cfg.interpolation={interpolation!r} is not one of {list(RESAMPLING)}."
        )
    return CLIPImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=RESAMPLING[interpolation],
        image_mean=list(preprocess.get("mean", OPENAI_MEAN)),
        image_std=list(preprocess.get("std", OPENAI_STD)),
    )


def _default_tokenizer(name_or_path: str | os.PathLike) -> str:
    """A local open_clip folder's own tokenizer files, else CLIP's tokenizer on the Hub (open_clip's Hub repos
    hold none: open_clip ships its BPE in the package)."""
    if os.path.isdir(name_or_path) and any(
        os.path.isfile(os.path.join(name_or_path, name)) for name in ("tokenizer.json", "vocab.json")
    ):
        return str(name_or_path)
    return CLIP_TOKENIZER


def load_open_clip_resnet(
    name_or_path: str | os.PathLike, tokenizer: str | os.PathLike | None = None, **hub_kwargs
) -> tuple[CLIPResNetModel, CLIPImageProcessorPil, PreTrainedTokenizerBase]:
    """Build OpenAI's ResNet CLIP from an open_clip folder or Hub repo (`timm/resnet50x4_clip.openai`, ...):
    the model (weights key-mapped strictly, in eval mode), its image processor and CLIP's tokenizer (from
    `tokenizer`, a Hub name or folder; by default `openai/clip-vit-base-patch32`'s, or a local folder's own; its
    vocabulary must have the model's size). `hub_kwargs` (`cache_dir`, `revision`, `token`, ...) go to
    `huggingface_hub.hf_hub_download`.

    Example:

    ```python
    >>> model, image_processor, tokenizer = load_open_clip_resnet("timm/resnet50x4_clip.openai")  # doctest: +SKIP
    >>> model.get_image_features(**image_processor(images=image, return_tensors="pt")).pooler_output.shape
    torch.Size([1, 640])
    ```
    """
    open_clip_config = read_open_clip_config(name_or_path, **hub_kwargs)
    tokenizer = tokenizer if tokenizer is not None else _default_tokenizer(name_or_path)
    clip_tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    config = clip_resnet_config_from_open_clip(
        open_clip_config["model_cfg"],
        bos_token_id=clip_tokenizer.bos_token_id,
        eos_token_id=clip_tokenizer.eos_token_id,
        pad_token_id=clip_tokenizer.pad_token_id,
    )
    if len(clip_tokenizer) != config.text_config.vocab_size:
        raise ValueError(
            f"The tokenizer {tokenizer} has {len(clip_tokenizer)} tokens but {name_or_path}'s text tower embeds "
            f"{config.text_config.vocab_size}: give the CLIP tokenizer it was trained with."
        )
    clip_tokenizer.model_max_length = config.text_config.max_position_embeddings
    model = CLIPResNetModel(config)
    state_dict = load_open_clip_weights(name_or_path, **hub_kwargs)
    weights = map_open_clip_state_dict(state_dict, model, source=name_or_path)
    model.load_state_dict(
        weights, strict=False
    )  # strict above; only num_batches_tracked/position_ids may be absent
    return model.eval(), image_processor_from_open_clip(open_clip_config), clip_tokenizer


def convert_open_clip_resnet(
    name_or_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    **hub_kwargs,
) -> CLIPResNetModel:
    """Write the transformers folder of an open_clip ResNet CLIP (`config.json`, `model.safetensors`, image
    processor, tokenizer): any CLIP argument of this package then takes it (`from_clip_decoder_pretrained`,
    `--clip_model`). Returns the model.

    Example:

    ```python
    >>> convert_open_clip_resnet("timm/resnet50x4_clip.openai", "clip-rn50x4")  # doctest: +SKIP
    ```
    """
    model, image_processor, clip_tokenizer = load_open_clip_resnet(name_or_path, tokenizer, **hub_kwargs)
    model.save_pretrained(output_dir)
    image_processor.save_pretrained(output_dir)
    clip_tokenizer.save_pretrained(output_dir)
    return model


def resolve_clip_model(name_or_path: str, cache_dir: str | os.PathLike | None = None, **hub_kwargs) -> str:
    """`name_or_path` itself, unless it is an open_clip checkpoint: then the folder it is converted to, once, under
    `cache_dir` (default: `$HF_HOME/capdec/open_clip`). Commands call this on `--clip_model`, so users pass the
    open_clip Hub name (`timm/resnet50x4_clip.openai`) where a CLIP is asked for.

    Example:

    ```python
    >>> resolve_clip_model("openai/clip-vit-base-patch32")  # doctest: +SKIP
    'openai/clip-vit-base-patch32'
    >>> resolve_clip_model("timm/resnet50x4_clip.openai")  # doctest: +SKIP
    '/root/.cache/huggingface/capdec/open_clip/timm--resnet50x4_clip.openai'
    ```
    """
    if os.path.isfile(os.path.join(name_or_path, "config.json")) or not is_open_clip_checkpoint(
        name_or_path, **hub_kwargs
    ):
        return name_or_path
    if cache_dir is None:
        from huggingface_hub.constants import HF_HOME

        cache_dir = Path(HF_HOME) / "capdec" / "open_clip"
    if os.path.isdir(name_or_path):
        name = str(Path(name_or_path).resolve()).strip("/").replace("/", "--")
    else:
        name = name_or_path.replace("/", "--")
    if hub_kwargs.get("revision"):
        name += "@" + str(hub_kwargs["revision"])
    target = Path(cache_dir) / name
    # A Hub revision does not change under a name: convert it once. A local folder may: convert it each time.
    if os.path.isdir(name_or_path) or not (target / "config.json").is_file():
        convert_open_clip_resnet(name_or_path, target, **hub_kwargs)
    return str(target)


__all__ = [
    "clip_resnet_config_from_open_clip",
    "convert_open_clip_resnet",
    "image_processor_from_open_clip",
    "is_open_clip_checkpoint",
    "load_open_clip_resnet",
    "load_open_clip_weights",
    "map_open_clip_state_dict",
    "read_open_clip_config",
    "resolve_clip_model",
]
