"""The converter of the authors' CapDec/ClipCap checkpoints (`modeling_capdec.convert.original`)."""

import json

import pytest
import torch

from modeling_capdec import CapDecForConditionalGeneration
from modeling_capdec.convert.original import (
    convert_original_checkpoint,
    infer_mapping_config,
    load_original_state_dict,
    main,
)
from tests.tiny_models import tiny_model


class NotAStateDict:
    """A local class: pickling an instance makes a file that `weights_only=True` refuses."""

    def __init__(self):
        self.weights = torch.zeros(2)


def original_state_dict(model: CapDecForConditionalGeneration) -> dict[str, torch.Tensor]:
    """`model`'s weights laid out as the authors' code saves them: `gpt.*` for the decoder, `clip_project.*`,
    no CLIP, and the causal-mask buffers older transformers wrote for every GPT-2 block."""
    state_dict = {}
    for key, value in model.state_dict().items():
        if key.startswith("decoder."):
            state_dict["gpt." + key[len("decoder.") :]] = value.clone()
        elif key.startswith("clip_project."):
            state_dict[key] = value.clone()
    positions = model.config.text_config.n_positions
    for block in range(model.config.text_config.n_layer):
        mask = torch.tril(torch.ones(positions, positions, dtype=torch.bool)).view(1, 1, positions, positions)
        state_dict[f"gpt.transformer.h.{block}.attn.bias"] = mask
        state_dict[f"gpt.transformer.h.{block}.attn.masked_bias"] = torch.tensor(-1e4)
    return state_dict


@pytest.fixture(scope="module")
def parts(tmp_path_factory, processor):
    """Local folders of a tiny CLIP and a tiny GPT-2 (with their processors), as `--clip_model`/`--decoder_model`."""
    source = tiny_model(processor, seed=5)
    root = tmp_path_factory.mktemp("parts")
    clip_dir, decoder_dir = root / "clip", root / "gpt2"
    source.clip.save_pretrained(clip_dir)
    processor.image_processor.save_pretrained(clip_dir)
    processor.clip_tokenizer.save_pretrained(clip_dir)
    source.decoder.save_pretrained(decoder_dir)
    processor.tokenizer.save_pretrained(decoder_dir)
    return str(clip_dir), str(decoder_dir)


def convert(tmp_path, source, parts, **kwargs):
    checkpoint = tmp_path / "coco_prefix-009.pt"
    torch.save(original_state_dict(source), checkpoint)
    clip_dir, decoder_dir = parts
    convert_original_checkpoint(
        checkpoint, tmp_path / "out", clip_model=clip_dir, decoder_model=decoder_dir, **kwargs
    )
    return CapDecForConditionalGeneration.from_pretrained(tmp_path / "out").eval()


@pytest.mark.parametrize("mapping_type", ["transformer", "mlp"])
def test_round_trip_is_exact(tmp_path, processor, parts, images, mapping_type):
    # Same CLIP as the folders, so that prefixes from pixels can be compared too.
    source = tiny_model(processor, mapping_type=mapping_type, seed=5)
    converted = convert(tmp_path, source, parts, num_mapping_heads=4)
    assert converted.config.mapping_type == mapping_type
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    ids = torch.tensor([[5, 9, 12, 7]] * len(images))
    with torch.no_grad():
        assert torch.equal(source.get_prefix_embeds(pixel_values), converted.get_prefix_embeds(pixel_values))
        expected = source(pixel_values=pixel_values, input_ids=ids).logits
        assert torch.equal(expected, converted(pixel_values=pixel_values, input_ids=ids).logits)
    # The original stop: "." (kept), at most 67 new tokens; the pad id is still the decoder's.
    period = processor.tokenizer.encode(".", add_special_tokens=False)
    assert converted.generation_config.eos_token_id == period[0]
    assert converted.generation_config.max_new_tokens == 67
    assert converted.generation_config.pad_token_id == processor.tokenizer.eos_token_id


def test_inference_from_shapes(processor):
    transformer = original_state_dict(
        tiny_model(processor, prefix_length=3, clip_length=5, num_mapping_layers=3)
    )
    assert infer_mapping_config(transformer) == {
        "mapping_type": "transformer",
        "prefix_length": 3,
        "clip_length": 5,
        "num_mapping_layers": 3,
        "clip_width": 16,
        "mapping_mlp_ratio": 2.0,
    }
    mlp = original_state_dict(tiny_model(processor, mapping_type="mlp", prefix_length=6))
    assert infer_mapping_config(mlp) == {"mapping_type": "mlp", "prefix_length": 6, "clip_width": 16}


def test_clipcap_mlp_checkpoint_with_its_arguments(tmp_path, processor, parts, capsys):
    # ClipCap's COCO model: an MLP mapper, a prefix of 10, no normalisation of the CLIP embedding.
    source = tiny_model(processor, mapping_type="mlp", prefix_length=10, normalize_prefix=False, seed=5)
    arguments = tmp_path / "coco_prefix.json"
    arguments.write_text(json.dumps({"prefix_length": 10, "mapping_type": "mlp", "only_prefix": False}))
    checkpoint = tmp_path / "coco_weights.pt"
    torch.save(original_state_dict(source), checkpoint)
    clip_dir, decoder_dir = parts
    out = tmp_path / "out"
    main(
        ["--checkpoint", str(checkpoint), "--output_dir", str(out), "--args_json", str(arguments)]
        + ["--clip_model", clip_dir, "--decoder_model", decoder_dir, "--normalize_prefix", "false"]
    )
    assert "Inferred" not in capsys.readouterr().out  # the JSON was given
    converted = CapDecForConditionalGeneration.from_pretrained(out).eval()
    assert (converted.config.prefix_length, converted.config.normalize_prefix) == (10, False)
    embeds = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(
            source.get_prefix_embeds(clip_embeds=embeds), converted.get_prefix_embeds(clip_embeds=embeds)
        )


def test_shapes_are_printed_without_json(tmp_path, processor, parts, capsys):
    convert(tmp_path, tiny_model(processor, seed=5), parts, num_mapping_heads=4)
    assert "Inferred from the tensor shapes" in capsys.readouterr().out


def test_json_contradicting_the_tensors(tmp_path, processor, parts):
    arguments = tmp_path / "args.json"
    arguments.write_text(json.dumps({"prefix_length": 40}))
    with pytest.raises(ValueError, match="prefix_length=40"):
        convert(tmp_path, tiny_model(processor, seed=5), parts, args_json=arguments, num_mapping_heads=4)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="list.pt holds a list, not a state dict"):
        load_original_state_dict(path)


def test_pickle_that_is_not_weights_only(tmp_path):
    path = tmp_path / "object.pt"
    torch.save(NotAStateDict(), path)
    with pytest.raises(ValueError, match="object.pt is not a weights-only file"):
        load_original_state_dict(path)


def test_unknown_keys_are_named(tmp_path, processor, parts):
    state_dict = original_state_dict(tiny_model(processor, seed=5))
    state_dict["optimizer.step"] = torch.zeros(1)
    checkpoint = tmp_path / "extra.pt"
    torch.save(state_dict, checkpoint)
    with pytest.raises(ValueError, match=r"Unknown keys.*optimizer\.step"):
        convert_original_checkpoint(checkpoint, tmp_path / "out", *parts, num_mapping_heads=4)


def test_missing_keys_are_named(tmp_path, processor, parts):
    state_dict = original_state_dict(tiny_model(processor, seed=5))
    del state_dict["clip_project.transformer.layers.1.norm2.weight"]
    checkpoint = tmp_path / "missing.pt"
    torch.save(state_dict, checkpoint)
    with pytest.raises(ValueError, match=r"missing \['clip_project.transformer.layers.1.norm2.weight'\]"):
        convert_original_checkpoint(checkpoint, tmp_path / "out", *parts, num_mapping_heads=4)


def test_readme_convert_commands_parse():
    """The README's `capdec-convert-original` lines parse with today's flags (tests/test_readme.py covers the
    other commands)."""
    from pathlib import Path

    from modeling_capdec.commands.recipes import parse_recipe_and_args
    from modeling_capdec.convert.original import ConvertArguments
    from tests.test_readme import _blocks, _command_lines

    readme = Path(__file__).resolve().parents[1] / "README.md"
    commands = [
        command
        for block in _blocks(readme, "bash")
        for command in _command_lines(block)
        if command[:1] == ["capdec-convert-original"]
    ]
    assert len(commands) >= 2
    for command in commands:
        parse_recipe_and_args((ConvertArguments,), command[1:])


def test_command_prints_its_help(monkeypatch, capsys):
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", ["capdec-convert-original", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("modeling_capdec.convert.original", run_name="__main__", alter_sys=True)
    assert exit_info.value.code in (0, None)
    assert "--checkpoint" in capsys.readouterr().out


@pytest.mark.parametrize("dont_norm", [False, True])
def test_capdec_commandline_args_set_normalisation(tmp_path, processor, parts, dont_norm):
    """CapDec's train.py writes its arguments to commandline_args.txt (JSON, without mapping_type) with `dont_norm`."""
    source = tiny_model(processor, normalize_prefix=not dont_norm, seed=5)
    arguments = tmp_path / "commandline_args.txt"
    fields = {"prefix_length": 4, "prefix_length_clip": 4, "num_layers": 2, "dont_norm": dont_norm, "bs": 40}
    arguments.write_text(json.dumps(fields, indent=2))
    converted = convert(tmp_path, source, parts, args_json=arguments, num_mapping_heads=4)
    assert converted.config.normalize_prefix is (not dont_norm)
    embeds = torch.randn(2, 16) * 3
    with torch.no_grad():
        assert torch.equal(
            source.get_prefix_embeds(clip_embeds=embeds), converted.get_prefix_embeds(clip_embeds=embeds)
        )
    fields["normalize_prefix"] = dont_norm  # contradicts dont_norm
    arguments.write_text(json.dumps(fields))
    with pytest.raises(ValueError, match=rf"both dont_norm={dont_norm} and normalize_prefix={dont_norm}"):
        convert(tmp_path, source, parts, args_json=arguments, num_mapping_heads=4)
