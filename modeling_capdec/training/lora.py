"""LoRA fine-tuning of CapDec with peft (`pip install "capdec[lora]"`): low-rank adapters on the decoder (and,
optionally, the mapper), a saved adapter that names its base folder, and merging into a plain Hub folder.

What a LoRA run of `train_capdec.py` writes:

- `<output_dir>/base_model/` — the model training started from (a plain CapDec folder: config, code, processor,
  weights), written once when the run composes CLIP + decoder; with `--init_from DIR` the base is DIR itself.
- `<output_dir>/` — the adapter (`adapter_config.json` whose `base_model_name_or_path` is the base folder,
  `adapter_model.safetensors` with the LoRA matrices and the fully trained mapper), the code and the processor.
  It holds no `config.json` on purpose: transformers treats a folder with both `config.json` and an adapter as
  "base weights included" and would look for `model.safetensors` there; without it, `from_pretrained(out)` and
  `pipeline(model=out, trust_remote_code=True)` load the named base and apply the adapter (peft installed).
- `<output_dir>/merged/` with `--merge_lora` — the adapter merged into the weights: a plain Hub folder that
  loads without peft.
"""

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from transformers.pytorch_utils import Conv1D

logger = logging.getLogger(__name__)

BASE_FOLDER_NAME = "base_model"
MERGED_FOLDER_NAME = "merged"
PEFT_INSTALL_HINT = 'LoRA needs peft: pip install "capdec[lora]" (or pip install peft).'


def _import_peft():
    try:
        import peft
    except ImportError as error:
        raise ImportError(PEFT_INSTALL_HINT) from error
    return peft


def is_lora_model(model: Any) -> bool:
    """Whether `model` is a peft model (the LoRA-wrapped CapDec of a `--lora_r` run).

    Example:

    ```python
    >>> is_lora_model(object())
    False
    ```
    """
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _adaptable_layers(part: nn.Module, skip: nn.Module | None = None) -> dict[str, nn.Module]:
    """The Linear (and GPT-2 Conv1D) layers of `part` by name; `skip` (the LM head, tied to the embeddings) is
    left out: adapting it would also change the input embeddings it shares weights with."""
    return {
        name: module
        for name, module in part.named_modules()
        if isinstance(module, nn.Linear | Conv1D) and module is not skip
    }


def lora_target_modules(
    model: nn.Module, target_modules: Sequence[str] | None = None, lora_mapper: bool = False
) -> list[str]:
    """Full names of the layers that get LoRA adapters in a CapDec model.

    Without `target_modules`, every Linear/Conv1D layer of the decoder except the LM head (for GPT-2: `c_attn`,
    `c_proj`, `c_fc`); otherwise the decoder layers whose last name part is one of `target_modules`. With
    `lora_mapper`, every Linear layer of the mapping network (`clip_project`) too. CLIP is never adapted.

    Example:

    ```python
    >>> from tests.tiny_models import tiny_model
    >>> lora_target_modules(tiny_model(), ["c_attn"])
    ['decoder.transformer.h.0.attn.c_attn', 'decoder.transformer.h.1.attn.c_attn']
    ```
    """
    decoder_layers = _adaptable_layers(model.decoder, skip=model.decoder.get_output_embeddings())
    if target_modules:
        available = sorted({name.rsplit(".", 1)[-1] for name in decoder_layers})
        unknown = [name for name in target_modules if name not in available]
        if unknown:
            raise ValueError(
                f"--lora_target_modules {unknown} name no Linear/Conv1D layer of the decoder "
                f"({type(model.decoder).__name__}); its layers are {available}."
            )
        decoder_layers = {
            name: layer for name, layer in decoder_layers.items() if name.rsplit(".", 1)[-1] in target_modules
        }
    names = [f"decoder.{name}" for name in decoder_layers]
    if lora_mapper:
        names += [f"clip_project.{name}" for name in _adaptable_layers(model.clip_project)]
    return names


def apply_lora(
    model: nn.Module,
    *,
    r: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
    lora_mapper: bool = False,
    base_model_name_or_path: str | None = None,
) -> Any:
    """Wrap a CapDec model in a peft `PeftModel` with LoRA adapters of rank `r` (`lora_target_modules`).

    The mapping network trains fully (peft's `modules_to_save`, saved in the adapter) unless `lora_mapper`
    gives it adapters too; CLIP and the decoder's own weights are frozen. `alpha` defaults to `2 * r`.
    `base_model_name_or_path` is what the saved adapter names as its base (a CapDec folder).

    Example:

    ```python
    >>> from tests.tiny_models import tiny_model
    >>> lora_model = apply_lora(tiny_model(), r=4, base_model_name_or_path="runs/base_model")
    >>> lora_model.peft_config["default"].base_model_name_or_path
    'runs/base_model'
    ```
    """
    peft = _import_peft()
    if r <= 0:
        raise ValueError(f"--lora_r must be a positive rank, got {r}.")
    targets = lora_target_modules(model, target_modules, lora_mapper)
    decoder_conv1d = any(isinstance(model.get_submodule(name), Conv1D) for name in targets)
    config = peft.LoraConfig(
        r=r,
        lora_alpha=2 * r if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=targets,
        # GPT-2's Conv1D stores its weight transposed; peft needs to know (it would guess, with a warning).
        fan_in_fan_out=decoder_conv1d,
        modules_to_save=None if lora_mapper else ["clip_project"],
    )
    if base_model_name_or_path is not None:
        # peft names the adapter's base after `model.name_or_path`, empty for a model composed in memory.
        model.name_or_path = base_model_name_or_path
    with warnings.catch_warnings():
        # Mapper Linear layers next to GPT-2 Conv1D ones: peft switches fan_in_fan_out per layer and warns each time.
        warnings.filterwarnings("ignore", message="fan_in_fan_out is set to")
        lora_model = peft.get_peft_model(model, config)
    return lora_model


def lora_from_arguments(
    model: nn.Module, processor: Any, model_args: Any, output_dir: str, *, save: bool
) -> Any:
    """`train_capdec.py`'s LoRA step: write the base folder (when the run composed CLIP + decoder and `save`, the
    main process) and return `apply_lora(model, ...)` whose adapter names it.

    Example:

    ```python
    >>> lora_model = lora_from_arguments(model, processor, model_args, "out", save=True)  # doctest: +SKIP
    ```
    """
    if not model_args.train_decoder:
        raise ValueError(
            "--lora_r trains adapters in the decoder; it cannot be combined with --no_train_decoder."
        )
    if model_args.lora_mapper and not model_args.init_from:
        raise ValueError(
            "--lora_mapper adapts a trained mapper: give --init_from DIR. A freshly composed mapper starts from "
            "random weights, so it must train fully (the default with --lora_r)."
        )
    if model_args.init_from:
        base = model_args.init_from
    else:
        base = str(Path(output_dir, BASE_FOLDER_NAME).resolve())
        if save:
            model.save_pretrained(base)
            processor.save_pretrained(base)
    return apply_lora(
        model,
        r=model_args.lora_r,
        alpha=model_args.lora_alpha,
        dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        lora_mapper=model_args.lora_mapper,
        base_model_name_or_path=base,
    )


def merge_after_run(trainer: Any, processor: Any, output_dir: str | os.PathLike) -> Path:
    """`--merge_lora`: write `output_dir/merged/`, the adapters merged into a plain Hub folder, with the run's card."""
    merged_dir = Path(output_dir, MERGED_FOLDER_NAME)
    merge_lora(trainer.model, processor, merged_dir)
    card = Path(output_dir, "README.md")
    if card.exists():
        (merged_dir / "README.md").write_text(card.read_text(encoding="utf-8"), encoding="utf-8")
    return merged_dir


def save_lora_code(lora_model: Any, output_dir: str | os.PathLike) -> None:
    """Copy the model's code files (configuration, modeling, processing, pipeline) beside a saved adapter, as a
    plain `save_pretrained` does, so an adapter folder pushed to the Hub carries the code it was trained with.

    Example:

    ```python
    >>> save_lora_code(trainer.model, "out")  # doctest: +SKIP
    ```
    """
    from transformers.dynamic_module_utils import custom_object_save

    base = lora_model.get_base_model()
    custom_object_save(base, output_dir)
    custom_object_save(base.config, output_dir)
    from ..pipeline_capdec import CapDecImageToTextPipeline

    custom_object_save(CapDecImageToTextPipeline, output_dir)


def merge_lora(lora_model: Any, processor: Any, output_dir: str | os.PathLike) -> nn.Module:
    """Merge the adapters into a copy of the weights and save a plain CapDec folder (weights, config, code,
    processor) that loads without peft: `pipeline("image-to-text", model=output_dir, trust_remote_code=True)`.

    The merged model is returned; `lora_model` keeps its adapters (it is copied first).

    Example:

    ```python
    >>> merged = merge_lora(trainer.model, processor, "out/merged")  # doctest: +SKIP
    ```
    """
    import copy

    merged = copy.deepcopy(lora_model).merge_and_unload()
    merged.eval()
    merged.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return merged


def merge_lora_folder(adapter_dir: str | os.PathLike, output_dir: str | os.PathLike) -> nn.Module:
    """Merge a saved adapter folder (from a `--lora_r` run) into a plain Hub folder, after training.

    Example:

    ```python
    >>> merge_lora_folder("outputs/lora", "outputs/lora-merged")  # doctest: +SKIP
    ```
    """
    peft = _import_peft()
    from ..modeling_capdec import CapDecForConditionalGeneration
    from ..processing_capdec import CapDecProcessor

    base_path = peft.PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
    if not base_path:
        raise ValueError(
            f"The adapter in {adapter_dir} names no base model (base_model_name_or_path is empty)."
        )
    base = CapDecForConditionalGeneration.from_pretrained(base_path)
    lora_model = peft.PeftModel.from_pretrained(base, adapter_dir)
    return merge_lora(lora_model, CapDecProcessor.from_pretrained(base_path), output_dir)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters (a LoRA run logs them).

    Example:

    ```python
    >>> parameter_counts(nn.Linear(2, 3))
    {'trainable': 9, 'total': 9}
    ```
    """
    return {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
    }


__all__ = [
    "BASE_FOLDER_NAME",
    "MERGED_FOLDER_NAME",
    "apply_lora",
    "is_lora_model",
    "lora_from_arguments",
    "lora_target_modules",
    "merge_lora",
    "merge_lora_folder",
    "parameter_counts",
    "save_lora_code",
]
