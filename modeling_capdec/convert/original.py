"""Convert an official CapDec or ClipCap checkpoint (a `.pt` state dict) to a Hub-ready CapDec folder.

The authors' files hold only the mapping network (`clip_project.*`, kept as is) and GPT-2 (`gpt.*`, renamed
`decoder.*`); CLIP is loaded from `--clip_model`. Files are read with `torch.load(weights_only=True)` only: a
pickle that needs arbitrary classes is refused, never unpickled.

Example:

```bash
capdec-convert-original --checkpoint coco_prefix-009.pt --output_dir capdec-coco
```
"""

import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modeling_capdec import CapDecForConditionalGeneration, CapDecProcessor
from modeling_capdec.commands.recipes import parse_recipe_and_args
from modeling_capdec.convert.key_checks import key_mismatches
from modeling_capdec.convert.open_clip import resolve_clip_model

# GPT-2 causal-mask buffers that older transformers wrote into state dicts; today's GPT-2 builds them itself.
STALE_BUFFER = re.compile(r"^gpt\.transformer\.h\.\d+\.attn\.(bias|masked_bias)$")
# The original decoders stop after "." (kept) or 67 tokens; their checkpoints never saw an eos token.
ORIGINAL_STOP_TEXT = "."
ORIGINAL_MAX_NEW_TOKENS = 67
# The authors' transformer mapper always has 8 heads; no tensor shape reveals it.
ORIGINAL_MAPPING_HEADS = 8
# Fields of the original `{prefix}.json` run arguments and the CapDecConfig fields they set.
JSON_FIELDS = {
    "mapping_type": "mapping_type",
    "prefix_length": "prefix_length",
    "prefix_length_clip": "clip_length",
    "num_layers": "num_mapping_layers",
    "normalize_prefix": "normalize_prefix",
}


@dataclass
class ConvertArguments:
    """Arguments of `capdec-convert-original`."""

    checkpoint: str = field(metadata={"help": "The official .pt state dict (CapDec or ClipCap)."})
    output_dir: str = field(metadata={"help": "Where to write the Hub-ready folder."})
    args_json: str | None = field(
        default=None,
        metadata={"help": "The run's saved {prefix}.json arguments (optional; else shapes decide)."},
    )
    clip_model: str = field(
        default="openai/clip-vit-base-patch32",
        metadata={
            "help": "CLIP: a Hub name or a local folder; the paper's RN50x4 is open_clip's "
            "timm/resnet50x4_clip.openai (converted once, cached)."
        },
    )
    decoder_model: str = field(default="gpt2", metadata={"help": "The decoder: `gpt2` or a local folder."})
    num_mapping_heads: int = field(
        default=ORIGINAL_MAPPING_HEADS, metadata={"help": "Transformer-mapper heads (the authors use 8)."}
    )
    normalize_prefix: bool | None = field(
        default=None,
        metadata={
            "help": "L2-normalise the CLIP embedding (CapDec: true; ClipCap: false). Default: the JSON's, "
            "else true."
        },
    )


def load_original_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict with `torch.load(weights_only=True)`; errors name the file and what is wrong.

    Example:

    ```python
    >>> state_dict = load_original_state_dict("coco_prefix-009.pt")  # doctest: +SKIP
    ```
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} is not a weights-only file (it pickles other objects); it is refused rather than "
            f"unpickled. Save its `state_dict()` with torch.save and convert that. ({str(error).splitlines()[0]})"
        ) from error
    except Exception as error:  # a zip/pickle torch cannot read at all
        raise ValueError(f"Cannot read {path} as a torch checkpoint: {error}") from error
    if not isinstance(state_dict, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state_dict.items()
    ):
        raise ValueError(
            f"{path} holds a {type(state_dict).__name__}, not a state dict (a mapping of names to tensors)."
        )
    return state_dict


def rename_original_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' keys in CapDec's layout: stale GPT-2 buffers dropped, `gpt.*` -> `decoder.*`,
    `clip_project.*` kept; any other key is an error that names it.

    Example:

    ```python
    >>> sorted(rename_original_keys({"gpt.lm_head.weight": torch.zeros(1), "clip_project.linear.bias": torch.zeros(1)}))
    ['clip_project.linear.bias', 'decoder.lm_head.weight']
    ```
    """
    renamed, unknown = {}, []
    for key, value in state_dict.items():
        if STALE_BUFFER.match(key):
            continue
        if key.startswith("gpt."):
            renamed["decoder." + key[len("gpt.") :]] = value
        elif key.startswith("clip_project."):
            renamed[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"Unknown keys (an original checkpoint holds only gpt.* and clip_project.*): {sorted(unknown)}"
        )
    return renamed


def infer_mapping_config(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """CapDecConfig fields read from the tensor shapes of an original state dict (`gpt.*`/`clip_project.*`
    keys), plus `clip_width`, the CLIP embedding size the mapper expects.

    Example:

    ```python
    >>> infer_mapping_config(torch.load("coco_prefix-009.pt", weights_only=True))  # doctest: +SKIP
    {'mapping_type': 'transformer', 'prefix_length': 40, 'clip_length': 40, 'num_mapping_layers': 8, ...}
    ```
    """
    if "gpt.transformer.wte.weight" not in state_dict:
        raise ValueError("The checkpoint has no gpt.transformer.wte.weight: not a CapDec/ClipCap state dict.")
    hidden = state_dict["gpt.transformer.wte.weight"].shape[1]
    if "clip_project.model.0.weight" in state_dict:  # ClipCap's MLP: Linear -> Tanh -> Linear
        first, last = state_dict["clip_project.model.0.weight"], state_dict["clip_project.model.2.weight"]
        return {
            "mapping_type": "mlp",
            "prefix_length": last.shape[0] // hidden,
            "clip_width": first.shape[1],
        }
    if "clip_project.linear.weight" in state_dict:
        linear = state_dict["clip_project.linear.weight"]
        layers = {
            int(m.group(1))
            for k in state_dict
            if (m := re.match(r"clip_project\.transformer\.layers\.(\d+)\.", k))
        }
        inferred = {
            "mapping_type": "transformer",
            "prefix_length": state_dict["clip_project.prefix_const"].shape[0],
            "clip_length": linear.shape[0] // hidden,
            "num_mapping_layers": max(layers) + 1 if layers else 0,
            "clip_width": linear.shape[1],
        }
        if layers:
            inferred["mapping_mlp_ratio"] = (
                state_dict["clip_project.transformer.layers.0.mlp.fc1.weight"].shape[0] / hidden
            )
        return inferred
    raise ValueError(
        "Cannot tell the mapping type: neither clip_project.model.0.weight (MLP) nor clip_project.linear.weight "
        "(transformer) is in the checkpoint."
    )


def read_original_arguments(path: str | Path) -> dict[str, Any]:
    """The CapDecConfig fields set by an original run's arguments, a JSON object: ClipCap's `{prefix}.json` or
    CapDec's `commandline_args.txt` (its other fields are ignored). CapDec's `dont_norm` sets `normalize_prefix`.

    Example:

    ```python
    >>> read_original_arguments("commandline_args.txt")  # doctest: +SKIP
    {'prefix_length': 40, 'clip_length': 40, 'num_mapping_layers': 8, 'normalize_prefix': True}
    ```
    """
    arguments = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(arguments, dict):
        raise ValueError(f"{path} must hold the run's arguments as a JSON object.")
    settings = {ours: arguments[theirs] for theirs, ours in JSON_FIELDS.items() if theirs in arguments}
    if "dont_norm" in arguments:  # CapDec's train.py: --dont_norm trains on unnormalised embeddings
        normalize = not arguments["dont_norm"]
        if settings.get("normalize_prefix", normalize) != normalize:
            raise ValueError(
                f"{path} says both dont_norm={arguments['dont_norm']!r} and "
                f"normalize_prefix={settings['normalize_prefix']!r}."
            )
        settings["normalize_prefix"] = normalize
    return settings


def convert_original_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path,
    clip_model: str = "openai/clip-vit-base-patch32",
    decoder_model: str = "gpt2",
    args_json: str | Path | None = None,
    num_mapping_heads: int = ORIGINAL_MAPPING_HEADS,
    normalize_prefix: bool | None = None,
) -> CapDecForConditionalGeneration:
    """Convert the authors' checkpoint and write a Hub-ready folder (model, processor, a generation config
    that stops at "." or after 67 tokens, as the original). Returns the converted model.

    Example:

    ```python
    >>> model = convert_original_checkpoint("coco_prefix-009.pt", "capdec-coco")  # doctest: +SKIP
    ```
    """
    original = load_original_state_dict(checkpoint)
    inferred = infer_mapping_config(original)
    clip_width = inferred.pop("clip_width")
    settings = dict(inferred)
    if args_json is not None:
        from_json = read_original_arguments(args_json)
        for name, value in from_json.items():
            if name in inferred and inferred[name] != value:
                raise ValueError(
                    f"{args_json} says {name}={value!r} but the tensors of {checkpoint} say {inferred[name]!r}."
                )
        settings.update(from_json)
    else:
        print(f"Inferred from the tensor shapes of {checkpoint}: {inferred} (CLIP width {clip_width})")
    if normalize_prefix is not None:
        settings["normalize_prefix"] = normalize_prefix
    if settings["mapping_type"] == "transformer":
        settings["num_mapping_heads"] = num_mapping_heads

    weights = rename_original_keys(original)
    clip_model = resolve_clip_model(
        clip_model
    )  # an open_clip checkpoint (the paper's RN50x4) is converted first
    model = CapDecForConditionalGeneration.from_clip_decoder_pretrained(clip_model, decoder_model, **settings)
    if model.config.clip_projection_dim != clip_width:
        raise ValueError(
            f"{checkpoint} maps {clip_width}-d CLIP embeddings but {clip_model} gives "
            f"{model.config.clip_projection_dim}-d ones: choose the CLIP the checkpoint was trained with."
        )
    _load_strictly(model, weights, checkpoint)

    processor = CapDecProcessor.from_clip_decoder_pretrained(clip_model, decoder_model)
    stop_ids = processor.tokenizer.encode(ORIGINAL_STOP_TEXT, add_special_tokens=False)
    if len(stop_ids) != 1:
        raise ValueError(
            f"{decoder_model}'s tokenizer has no single token for {ORIGINAL_STOP_TEXT!r}: {stop_ids}"
        )
    generation_config = model.generation_config
    # The pad id stays the decoder's (GPT-2: its eos); only the stop moves to ".", as in the authors' loops.
    if generation_config.pad_token_id is None:
        generation_config.pad_token_id = generation_config.eos_token_id
    generation_config.eos_token_id = stop_ids[0]
    generation_config.max_new_tokens = ORIGINAL_MAX_NEW_TOKENS
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return model


def _load_strictly(
    model: CapDecForConditionalGeneration, weights: dict[str, torch.Tensor], source: Any
) -> None:
    """Load the mapper and decoder weights; every key of those parts must be there (a tied output layer may be
    absent), and shapes must agree. Errors name the keys."""
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("clip.")}
    missing, unexpected, mismatched = key_mismatches(weights, expected, optional={"decoder.lm_head.weight"})
    if "decoder.lm_head.weight" not in weights and not model.config.tie_word_embeddings:
        missing.append("decoder.lm_head.weight")
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{source} does not fit the model (mapping_type={model.config.mapping_type!r}, "
            f"prefix_length={model.config.prefix_length}): missing {missing}, unexpected {unexpected}, "
            f"shape mismatches {mismatched}."
        )
    model.load_state_dict(
        weights, strict=False
    )  # strict above, for the parts the file holds (CLIP is not there)


def main(argv: list[str] | None = None) -> None:
    """`capdec-convert-original --checkpoint FILE.pt --output_dir DIR [--clip_model ...] [--decoder_model ...]`."""
    (args,) = parse_recipe_and_args((ConvertArguments,), argv, description=__doc__)
    convert_original_checkpoint(
        args.checkpoint,
        args.output_dir,
        clip_model=args.clip_model,
        decoder_model=args.decoder_model,
        args_json=args.args_json,
        num_mapping_heads=args.num_mapping_heads,
        normalize_prefix=args.normalize_prefix,
    )
    print(f"Wrote {args.output_dir}")


if __name__ == "__main__":
    main()
