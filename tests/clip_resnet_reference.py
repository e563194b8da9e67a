"""References for the CLIP ResNet tests: open_clip's own `ModifiedResNet` (fetched from its wheel, loaded by path),
random weights in OpenAI's layout, and tiny open_clip folders laid out as open_clip's Hub repos."""

import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

OPEN_CLIP_DIR = Path(__file__).resolve().parent / "open_clip_upstream"
FETCH_HINT = "run `python tests/open_clip_upstream/fetch.py` (or `make test`, which runs it)"

# A tiny ResNet CLIP in open_clip's model_cfg terms: every stage kind (layer1's unstrided shortcut with a
# channel change, strided stages, several blocks), 8 attention-pool heads, 64 px.
TINY_MODEL_CFG = {
    "embed_dim": 24,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": [2, 1, 2, 1], "width": 16, "head_width": 64},
    "text_cfg": {"context_length": 16, "vocab_size": 300, "width": 32, "heads": 4, "layers": 2},
}


def load_open_clip_modified_resnet() -> types.ModuleType:
    """open_clip's `modified_resnet` module, imported from the fetched file; its `utils` import gets a stand-in for
    torchvision's `FrozenBatchNorm2d` (used only by `freeze_batch_norm_2d`, which the tests never call)."""
    if not (OPEN_CLIP_DIR / "modified_resnet.py").is_file() or not (OPEN_CLIP_DIR / "utils.py").is_file():
        raise FileNotFoundError(f"open_clip's modified_resnet.py is not in {OPEN_CLIP_DIR}: {FETCH_HINT}.")
    package_name = "open_clip_reference"
    if f"{package_name}.modified_resnet" in sys.modules:
        return sys.modules[f"{package_name}.modified_resnet"]
    package = types.ModuleType(package_name)
    package.__path__ = [str(OPEN_CLIP_DIR)]
    sys.modules[package_name] = package

    class FrozenBatchNorm2d(nn.Module):  # stand-in: never instantiated by these tests
        pass

    stand_ins = {
        "torchvision": types.ModuleType("torchvision"),
        "torchvision.ops": types.ModuleType("torchvision.ops"),
    }
    stand_ins["torchvision.ops.misc"] = types.ModuleType("torchvision.ops.misc")
    stand_ins["torchvision.ops.misc"].FrozenBatchNorm2d = FrozenBatchNorm2d
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        for name in ("utils", "modified_resnet"):
            spec = importlib.util.spec_from_file_location(
                f"{package_name}.{name}", OPEN_CLIP_DIR / f"{name}.py"
            )
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
    finally:  # the stand-ins must not leak into other tests
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return sys.modules[f"{package_name}.modified_resnet"]


def randomize_like_a_trained_resnet(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and batch-norm statistics of a trained net's scale, in place (OpenAI's init zeroes each block's
    last batch norm, which would hide the residual branches); returns the module in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", ".bias")) or name.endswith("positional_embedding"):
                # Small: large constant terms would give every image nearly the same embedding.
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
            elif tensor.dim() == 1:  # batch-norm scales
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.5)
            else:  # He-scaled weights keep activations of order one through many blocks
                tensor.copy_(
                    torch.randn(tensor.shape, generator=generator) * math.sqrt(1.0 / tensor[0].numel())
                )
    return module.eval()


def open_clip_resnet(model_cfg: dict, seed: int = 0) -> nn.Module:
    """open_clip's `ModifiedResNet` for `model_cfg`, with random weights (`randomize_like_a_trained_resnet`)."""
    vision = model_cfg["vision_cfg"]
    module = load_open_clip_modified_resnet()
    reference = module.ModifiedResNet(
        layers=vision["layers"],
        output_dim=model_cfg["embed_dim"],
        heads=vision["width"] * 32 // vision.get("head_width", 64),
        image_size=vision["image_size"],
        width=vision["width"],
    )
    return randomize_like_a_trained_resnet(reference, seed)


def openai_text_state_dict(model_cfg: dict, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random text-tower weights in OpenAI's layout (fused `in_proj_weight`, `text_projection` as width × embed)."""
    text = model_cfg["text_cfg"]
    width, length, embed = text["width"], text["context_length"], model_cfg["embed_dim"]
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    weights = {
        "token_embedding.weight": rand(text["vocab_size"], width),
        "positional_embedding": rand(length, width),
        "ln_final.weight": 1 + rand(width, scale=0.1),
        "ln_final.bias": rand(width, scale=0.1),
        "text_projection": rand(width, embed),
        "logit_scale": torch.tensor(4.6052),
    }
    for block in range(text["layers"]):
        prefix = f"transformer.resblocks.{block}."
        weights |= {
            prefix + "attn.in_proj_weight": rand(3 * width, width),
            prefix + "attn.in_proj_bias": rand(3 * width, scale=0.1),
            prefix + "attn.out_proj.weight": rand(width, width),
            prefix + "attn.out_proj.bias": rand(width, scale=0.1),
            prefix + "ln_1.weight": 1 + rand(width, scale=0.1),
            prefix + "ln_1.bias": rand(width, scale=0.1),
            prefix + "ln_2.weight": 1 + rand(width, scale=0.1),
            prefix + "ln_2.bias": rand(width, scale=0.1),
            prefix + "mlp.c_fc.weight": rand(4 * width, width),
            prefix + "mlp.c_fc.bias": rand(4 * width, scale=0.1),
            prefix + "mlp.c_proj.weight": rand(width, 4 * width),
            prefix + "mlp.c_proj.bias": rand(width, scale=0.1),
        }
    return weights


def openai_text_features(
    weights: dict[str, torch.Tensor], model_cfg: dict, input_ids: torch.Tensor, eos_token_id: int
) -> torch.Tensor:
    """OpenAI's text tower written out in plain torch from the formulas of their paper's code: token + position
    embeddings, pre-LayerNorm blocks with causal multi-head attention and a QuickGELU MLP, a final LayerNorm, the
    state at the first end-of-text token times `text_projection`. (OpenAI's code takes the largest id, which is the
    end-of-text token in CLIP's vocabulary; the tests' tiny tokenizer numbers it 1.)"""
    text = model_cfg["text_cfg"]
    width, heads = text["width"], text["heads"]
    length = input_ids.shape[1]
    hidden = weights["token_embedding.weight"][input_ids] + weights["positional_embedding"][:length]
    causal = torch.full((length, length), float("-inf")).triu(1)
    for block in range(text["layers"]):
        w = {
            k.split(f"resblocks.{block}.", 1)[1]: v for k, v in weights.items() if f"resblocks.{block}." in k
        }
        normed = F.layer_norm(hidden, (width,), w["ln_1.weight"], w["ln_1.bias"])
        query, key, value = F.linear(normed, w["attn.in_proj_weight"], w["attn.in_proj_bias"]).chunk(
            3, dim=-1
        )

        def split(states: torch.Tensor) -> torch.Tensor:
            return states.view(states.shape[0], length, heads, width // heads).transpose(1, 2)

        scores = split(query) @ split(key).transpose(-1, -2) / math.sqrt(width // heads) + causal
        attended = (scores.softmax(-1) @ split(value)).transpose(1, 2).reshape(-1, length, width)
        hidden = hidden + F.linear(attended, w["attn.out_proj.weight"], w["attn.out_proj.bias"])
        normed = F.layer_norm(hidden, (width,), w["ln_2.weight"], w["ln_2.bias"])
        inner = F.linear(normed, w["mlp.c_fc.weight"], w["mlp.c_fc.bias"])
        hidden = hidden + F.linear(
            inner * torch.sigmoid(1.702 * inner), w["mlp.c_proj.weight"], w["mlp.c_proj.bias"]
        )
    hidden = F.layer_norm(hidden, (width,), weights["ln_final.weight"], weights["ln_final.bias"])
    eos_positions = (input_ids == eos_token_id).int().argmax(-1)
    return hidden[torch.arange(hidden.shape[0]), eos_positions] @ weights["text_projection"]


def write_open_clip_folder(
    folder: Path,
    model_cfg: dict = TINY_MODEL_CFG,
    preprocess_cfg: dict | None = None,
    clip_tokenizer=None,
    with_open_clip: bool = True,
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A folder laid out as open_clip's Hub repos (`open_clip_config.json`, `open_clip_model.safetensors`) with
    random weights, plus `clip_tokenizer`'s files if given (the tests have no Hub to take CLIP's from); returns
    open_clip's image tower holding the weights (this package's, with `with_open_clip=False`) and the whole state
    dict."""
    folder.mkdir(parents=True, exist_ok=True)
    if clip_tokenizer is not None:
        clip_tokenizer.save_pretrained(folder)
    if with_open_clip:
        reference = open_clip_resnet(model_cfg)
    else:  # the same module names and weights, from this package's tower (no fetched open_clip needed)
        from modeling_capdec.convert.open_clip import clip_resnet_config_from_open_clip
        from modeling_capdec.modeling_capdec import CLIPResNetVisionModel

        config = clip_resnet_config_from_open_clip(model_cfg).vision_config
        reference = randomize_like_a_trained_resnet(CLIPResNetVisionModel(config))
    state_dict = {"visual." + key: value.clone() for key, value in reference.state_dict().items()}
    state_dict |= openai_text_state_dict(model_cfg)
    save_file(state_dict, folder / "open_clip_model.safetensors")
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {"interpolation": "bicubic"}}
    (folder / "open_clip_config.json").write_text(json.dumps(config), encoding="utf-8")
    return reference, state_dict
