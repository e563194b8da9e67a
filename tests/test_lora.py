# ruff: noqa: F811  (the fixtures imported from test_train_capdec are, as pytest wants, parameters of the same name)
"""LoRA runs of train_capdec.py (peft): the adapter names its base folder and loads, the merged folder is a plain
Hub folder that captions as the adapter does, and a LoRA run resumes from its checkpoint exactly."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import peft  # noqa: F401  (a test requirement through [dev] -> [lora]: a missing peft fails here, never skips)
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from modeling_capdec import CapDecForConditionalGeneration, CapDecProcessor
from modeling_capdec.evaluation.captioning import caption_images
from modeling_capdec.training.lora import lora_target_modules, merge_lora_folder, parameter_counts
from tests.test_train_capdec import REPO, SUBPROCESS_ENV, cli, one_thread, parts  # noqa: F401 (fixtures)
from tests.tiny_models import tiny_model
from train_capdec import main


def lora_arguments(parts, output_dir: Path, *extra: str) -> list[str]:
    return cli(
        parts, output_dir, *"--lora_r 4 --lora_dropout 0.1 --max_steps 6 --save_steps 3".split(), *extra
    )


@pytest.fixture(scope="module")
def lora_run(parts, tmp_path_factory) -> SimpleNamespace:
    output_dir = tmp_path_factory.mktemp("lora") / "out"
    trainer = main(
        lora_arguments(parts, output_dir, "--merge_lora", "--logging_steps", "1")
        + f"--eval_file {parts.eval} --eval_metrics BLEU --generation_max_length 8".split()
    )
    return SimpleNamespace(trainer=trainer, output_dir=output_dir)


def test_lora_trains_adapters_and_the_mapper_only(lora_run, parts):
    model = lora_run.trainer.model
    assert lora_run.trainer.state.global_step == 6
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trainable and all("lora_" in name or "clip_project" in name for name in trainable)
    counts = parameter_counts(model)
    assert counts["trainable"] < 0.5 * counts["total"]
    # The decoder's own weights did not move: they equal the base folder's.
    base = load_file(lora_run.output_dir / "base_model" / "model.safetensors")
    trained = model.get_base_model().decoder.state_dict()
    name = "transformer.h.0.attn.c_attn.base_layer.weight"
    torch.testing.assert_close(trained[name], base["decoder." + name.replace(".base_layer", "")])


def test_adapter_names_its_base_folder_and_the_folder_loads(lora_run, image_files):
    out = lora_run.output_dir
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    base_folder = Path(adapter_config["base_model_name_or_path"])
    assert base_folder == (out / "base_model").resolve()
    assert (base_folder / "config.json").is_file() and (base_folder / "model.safetensors").is_file()
    # What save_model wrote beside the adapter: the code, the processor, the card (and no config.json, which
    # would tell transformers that the base weights are in this folder).
    for name in (
        "adapter_model.safetensors",
        "modeling_capdec.py",
        "pipeline_capdec.py",
        "processor_config.json",
    ):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "LoRA adapters (rank 4, alpha 8;" in card and f"names its base `{base_folder}`" in card
    # The run's evaluation captioned through the adapter: its predictions are the loaded folder's captions.
    assert "| BLEU-1 |" in card and (out / "eval_predictions.json").is_file()
    assert (out / "checkpoint-3" / "adapter_model.safetensors").is_file()
    loaded = AutoModelForImageTextToText.from_pretrained(out).eval()  # transformers: base + adapter
    processor = CapDecProcessor.from_pretrained(out)
    expected = caption_images(lora_run.trainer.model.eval(), processor, image_files, max_new_tokens=8)
    assert caption_images(loaded, processor, image_files, max_new_tokens=8) == expected


def test_merged_folder_loads_without_peft_and_captions_as_the_adapter(lora_run, image_files):
    merged_dir = lora_run.output_dir / "merged"
    assert not (merged_dir / "adapter_config.json").exists() and (merged_dir / "README.md").is_file()
    processor = CapDecProcessor.from_pretrained(merged_dir)
    expected = caption_images(lora_run.trainer.model.eval(), processor, image_files, max_new_tokens=8)
    # A fresh interpreter where peft cannot be imported, through the Hub code path (trust_remote_code).
    script = (
        "import json, sys\n"
        "sys.modules['peft'] = None\n"
        "from transformers import pipeline\n"
        f"captioner = pipeline(model={str(merged_dir)!r}, trust_remote_code=True)\n"
        f"print(json.dumps([o[0]['generated_text'] for o in captioner({image_files!r}, max_new_tokens=8)]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd="/", env={**SUBPROCESS_ENV, "PYTHONPATH": ""},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected
    # merge_lora_folder (after training, from the saved adapter) gives the same weights as --merge_lora.
    again = merge_lora_folder(lora_run.output_dir, lora_run.output_dir.parent / "merged_again")
    reference = CapDecForConditionalGeneration.from_pretrained(merged_dir)
    torch.testing.assert_close(again.state_dict(), reference.state_dict())


def test_lora_run_resumes_from_its_checkpoint_exactly(lora_run, parts, tmp_path):
    resumed_dir = tmp_path / "resumed"
    checkpoint = lora_run.output_dir / "checkpoint-3"
    main(lora_arguments(parts, resumed_dir, "--resume_from_checkpoint", str(checkpoint)))
    resumed = load_file(resumed_dir / "adapter_model.safetensors")
    reference = load_file(lora_run.output_dir / "adapter_model.safetensors")
    assert resumed.keys() == reference.keys() and any("lora_A" in name for name in reference)
    assert max((resumed[name] - reference[name]).abs().max().item() for name in reference) == 0.0


def test_lora_argument_errors(parts, tmp_path):
    with pytest.raises(ValueError, match=r"--merge_lora need\(s\) --lora_r"):
        main(cli(parts, tmp_path / "a", "--merge_lora"))
    with pytest.raises(ValueError, match=r"\['q_proj'\] name no Linear/Conv1D layer of the decoder"):
        main(
            cli(parts, tmp_path / "b", "--lora_r", "2", "--lora_target_modules", "q_proj", "--max_steps", "1")
        )
    with pytest.raises(ValueError, match="cannot be combined with --no_train_decoder"):
        main(cli(parts, tmp_path / "c", "--lora_r", "2", "--no_train_decoder", "--max_steps", "1"))
    with pytest.raises(ValueError, match="--lora_mapper adapts a trained mapper: give --init_from"):
        main(cli(parts, tmp_path / "d", "--lora_r", "2", "--lora_mapper", "--max_steps", "1"))


def test_lora_targets():
    model = tiny_model()
    assert lora_target_modules(model, ["c_fc"]) == [f"decoder.transformer.h.{i}.mlp.c_fc" for i in range(2)]
    every = lora_target_modules(model, lora_mapper=True)
    assert "decoder.lm_head" not in every and any(name.startswith("clip_project.") for name in every)
    assert not any(name.startswith("clip.") for name in every)
