"""The paper's CLIP, OpenAI's ResNets (RN50x4): the image tower equals open_clip's `ModifiedResNet`, open_clip's
layout loads through the key map (strictly), and an RN-backed CapDec captions the same after save, in a fresh
process that never imported this package."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel

from modeling_capdec import CapDecForConditionalGeneration, CapDecProcessor
from modeling_capdec.configuration_capdec import CapDecConfig, CLIPResNetConfig, CLIPResNetVisionConfig
from modeling_capdec.convert.open_clip import (
    clip_resnet_config_from_open_clip,
    convert_open_clip_resnet,
    load_open_clip_resnet,
    map_open_clip_state_dict,
    resolve_clip_model,
)
from modeling_capdec.convert.original import convert_original_checkpoint
from modeling_capdec.modeling_capdec import CLIPResNetModel, CLIPResNetVisionModel
from tests.clip_resnet_reference import (
    TINY_MODEL_CFG,
    open_clip_resnet,
    openai_text_features,
    write_open_clip_folder,
)
from tests.test_convert_original import original_state_dict
from tests.test_pipeline_capdec import FRESH_PROCESS_SCRIPT
from tests.tiny_models import run_in_fresh_process, tiny_gpt2_config

GENERATE = {"max_new_tokens": 6, "num_beams": 2}
RN50X4 = {"embed_dim": 640, "vision_cfg": {"image_size": 288, "layers": [4, 6, 10, 6], "width": 80}}


def vision_config(model_cfg: dict) -> CLIPResNetVisionConfig:
    vision = model_cfg["vision_cfg"]
    return CLIPResNetVisionConfig(
        layers=vision["layers"],
        width=vision["width"],
        image_size=vision["image_size"],
        num_attention_heads=vision["width"] * 32 // vision.get("head_width", 64),
        output_dim=model_cfg["embed_dim"],
    )


@pytest.mark.parametrize("model_cfg", [TINY_MODEL_CFG, RN50X4], ids=["tiny", "RN50x4"])
def test_image_tower_equals_open_clip_modified_resnet(model_cfg):
    reference = open_clip_resnet(model_cfg)
    ours = CLIPResNetVisionModel(vision_config(model_cfg)).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)  # the same module names as OpenAI's `visual.*`
    size = model_cfg["vision_cfg"]["image_size"]
    generator = torch.Generator().manual_seed(0)
    # Images of different statistics: deep random ResNets give nearly the same output for alike noise images.
    pixels = torch.stack(
        [
            torch.randn(3, size, size, generator=generator),
            torch.randn(3, size, size, generator=generator) * 0.3 + 1,
        ]
    )
    with torch.no_grad():
        expected = reference(pixels)
        expected_map = reference.layer4(
            reference.layer3(reference.layer2(reference.layer1(reference.stem(pixels))))
        )
        got = ours(pixels)
    assert got.pooler_output.shape == (2, model_cfg["embed_dim"])
    torch.testing.assert_close(got.last_hidden_state, expected_map, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.pooler_output, expected, atol=1e-5, rtol=0)
    # Input-dependent far beyond the tolerance: not a collapsed network that any code would match.
    assert (expected[0] - expected[1]).abs().max() > 100 * 1e-5


def test_wrong_image_size_names_the_expected_shape():
    model = CLIPResNetVisionModel(vision_config(TINY_MODEL_CFG)).eval()
    with pytest.raises(
        ValueError, match=r"pixel_values must have shape \(batch, 3, 64, 64\).*got \(1, 3, 32, 32\)"
    ):
        model(torch.zeros(1, 3, 32, 32))


@pytest.fixture(scope="module")
def clip_tokenizer_dir(tmp_path_factory, processor):
    folder = tmp_path_factory.mktemp("clip_tokenizer")
    processor.clip_tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def model_cfg(processor) -> dict:
    """The tiny model_cfg with the text vocabulary of the tests' CLIP tokenizer."""
    return {
        **TINY_MODEL_CFG,
        "text_cfg": {**TINY_MODEL_CFG["text_cfg"], "vocab_size": len(processor.clip_tokenizer)},
    }


@pytest.fixture(scope="module")
def open_clip_folder(tmp_path_factory, processor, model_cfg):
    folder = tmp_path_factory.mktemp("resnet_clip.openai")
    reference, state_dict = write_open_clip_folder(folder, model_cfg, clip_tokenizer=processor.clip_tokenizer)
    return folder, reference, state_dict


def test_open_clip_layout_loads_through_the_key_map(
    open_clip_folder, clip_tokenizer_dir, processor, model_cfg
):
    folder, reference, state_dict = open_clip_folder
    model, image_processor, tokenizer = load_open_clip_resnet(folder, tokenizer=clip_tokenizer_dir)
    assert (
        model.config.vision_config.layers == [2, 1, 2, 1]
        and model.config.vision_config.num_attention_heads == 8
    )
    assert model.config.text_config.hidden_act == "quick_gelu"
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ids = processor.clip_tokenizer(["a dog running", "a red sofa and a cat", "two horses"], padding=True)
    input_ids, attention_mask = torch.tensor(ids["input_ids"]), torch.tensor(ids["attention_mask"])
    with torch.no_grad():
        image = model.get_image_features(pixels).pooler_output
        text = model.get_text_features(input_ids, attention_mask).pooler_output
        torch.testing.assert_close(image, reference(pixels), atol=1e-5, rtol=0)
        # Pad positions lie after the end-of-text token, which the causal mask keeps them from influencing.
        expected_text = openai_text_features(state_dict, model_cfg, input_ids, tokenizer.eos_token_id)
    torch.testing.assert_close(text, expected_text, atol=1e-5, rtol=1e-5)
    assert torch.equal(model.logit_scale, state_dict["logit_scale"])
    assert (
        tokenizer.model_max_length == 16 and tokenizer.eos_token_id == model.config.text_config.eos_token_id
    )


def test_processor_reproduces_openai_preprocessing(open_clip_folder, clip_tokenizer_dir):
    """Resize the shorter side to the model's size (bicubic), centre crop, [0, 1], OpenAI mean/std: written out
    with PIL and numpy."""
    _, image_processor, _ = load_open_clip_resnet(open_clip_folder[0], tokenizer=clip_tokenizer_dir)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (90, 150, 3), dtype=np.uint8))
    resized = image.resize((106, 64), Image.Resampling.BICUBIC)  # 150 * 64 / 90 = 106.7, truncated
    left = (106 - 64) // 2
    array = np.asarray(resized.crop((left, 0, left + 64, 64)), dtype=np.float32) / 255.0
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    expected = ((array - mean) / std).transpose(2, 0, 1)
    got = image_processor(images=[image], return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_key_map_is_strict_and_names_the_keys(open_clip_folder, model_cfg):
    _, _, state_dict = open_clip_folder
    config = clip_resnet_config_from_open_clip(model_cfg)
    model = CLIPResNetModel(config)
    extra = dict(
        state_dict,
        **{"visual.extra.weight": torch.zeros(1), "transformer.resblocks.0.attn.gate": torch.zeros(1)},
    )
    with pytest.raises(
        ValueError, match=r"unknown \['transformer.resblocks.0.attn.gate', 'vision_model.extra.weight'\]"
    ):
        map_open_clip_state_dict(extra, model)
    missing = {
        k: v for k, v in state_dict.items() if k not in ("visual.attnpool.c_proj.bias", "ln_final.weight")
    }
    with pytest.raises(
        ValueError,
        match=r"missing \['text_model.final_layer_norm.weight', 'vision_model.attnpool.c_proj.bias'\]",
    ):
        map_open_clip_state_dict(missing, model)
    reshaped = dict(state_dict, text_projection=torch.zeros(32, 25))
    with pytest.raises(
        ValueError, match=r"text_projection.weight: \(25, 32\) in the file, \(24, 32\) in the model"
    ):
        map_open_clip_state_dict(reshaped, model, source="rn.safetensors")
    # OpenAI's metadata entries are dropped; batch norms' num_batches_tracked may be absent.
    lean = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    lean["input_resolution"] = torch.tensor(64)
    assert "input_resolution" not in map_open_clip_state_dict(lean, model)


def test_bad_files_get_clear_errors(tmp_path, open_clip_folder, clip_tokenizer_dir):
    with pytest.raises(
        FileNotFoundError, match=r"has no open_clip_config.json: it is not an open_clip checkpoint"
    ):
        load_open_clip_resnet(tmp_path, tokenizer=clip_tokenizer_dir)
    vit = tmp_path / "vit"
    vit.mkdir()
    vit_cfg = {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
    }
    (vit / "open_clip_config.json").write_text(json.dumps({"model_cfg": vit_cfg}))
    with pytest.raises(ValueError, match=r"vision_cfg.layers is 12.*not a ResNet CLIP"):
        load_open_clip_resnet(vit, tokenizer=clip_tokenizer_dir)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "open_clip_config.json").write_text((open_clip_folder[0] / "open_clip_config.json").read_text())
    (broken / "open_clip_model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match=r"Cannot read .*open_clip_model.safetensors as safetensors"):
        load_open_clip_resnet(broken, tokenizer=clip_tokenizer_dir)
    (broken / "open_clip_model.safetensors").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"neither open_clip_model.safetensors nor open_clip_pytorch_model.bin"
    ):
        load_open_clip_resnet(broken, tokenizer=clip_tokenizer_dir)
    torch.save(
        {"weights": [torch.zeros(1)], "note": object.__new__(CapDecConfig)},
        broken / "open_clip_pytorch_model.bin",
    )
    with pytest.raises(ValueError, match=r"weights-only torch file \(it is refused rather than unpickled\)"):
        load_open_clip_resnet(broken, tokenizer=clip_tokenizer_dir)
    unsupported = tmp_path / "unsupported"
    unsupported.mkdir()
    cfg = {**TINY_MODEL_CFG, "text_cfg": {**TINY_MODEL_CFG["text_cfg"], "pool_type": "last"}}
    (unsupported / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    with pytest.raises(ValueError, match=r"text_cfg.pool_type='last' is not supported"):
        load_open_clip_resnet(unsupported, tokenizer=clip_tokenizer_dir)


def test_wrong_tokenizer_size_is_refused(open_clip_folder, tmp_path, processor):
    from demo.bpe_tokenizers import train_clip_tokenizer

    small = train_clip_tokenizer(["a dog", "a cat"], vocab_size=280)
    small.save_pretrained(tmp_path / "tok")
    with pytest.raises(
        ValueError, match=rf"has {len(small)} tokens but .* text tower embeds {len(processor.clip_tokenizer)}"
    ):
        load_open_clip_resnet(open_clip_folder[0], tokenizer=tmp_path / "tok")


def test_config_and_model_are_auto_registered(tmp_path, model_cfg):
    config = clip_resnet_config_from_open_clip(model_cfg, bos_token_id=0, eos_token_id=1)
    CLIPResNetModel(config).save_pretrained(tmp_path)
    loaded_config = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded_config) is CLIPResNetConfig and loaded_config.vision_config.layers == [2, 1, 2, 1]
    assert type(AutoModel.from_pretrained(tmp_path)) is CLIPResNetModel


@pytest.fixture(scope="module")
def rn_capdec_dir(tmp_path_factory, open_clip_folder, clip_tokenizer_dir, processor):
    """A tiny RN-backed CapDec built as users build it: the open_clip folder converted, a decoder, saved."""
    root = tmp_path_factory.mktemp("rn_capdec")
    clip_dir = resolve_clip_model(str(open_clip_folder[0]), cache_dir=root / "cache")
    assert clip_dir != str(open_clip_folder[0]) and os.path.isfile(os.path.join(clip_dir, "config.json"))
    decoder_dir = root / "gpt2"
    torch.manual_seed(0)
    from transformers import GPT2LMHeadModel

    GPT2LMHeadModel(
        tiny_gpt2_config(len(processor.tokenizer), processor.tokenizer.eos_token_id)
    ).save_pretrained(decoder_dir)
    processor.tokenizer.save_pretrained(decoder_dir)
    torch.manual_seed(3)
    model = CapDecForConditionalGeneration.from_clip_decoder_pretrained(
        clip_dir, str(decoder_dir), prefix_length=4, clip_length=4, num_mapping_layers=2, num_mapping_heads=4
    )
    rn_processor = CapDecProcessor.from_clip_decoder_pretrained(clip_dir, str(decoder_dir))
    folder = root / "capdec"
    model.save_pretrained(folder)
    rn_processor.save_pretrained(folder)
    return folder, clip_dir, str(decoder_dir)


def test_rn_capdec_round_trips_through_a_fresh_process(rn_capdec_dir, image_files, tmp_path):
    folder = rn_capdec_dir[0]
    model = CapDecForConditionalGeneration.from_pretrained(folder).eval()
    assert type(model.clip) is CLIPResNetModel and model.config.clip_projection_dim == 24
    assert not any(p.requires_grad for p in model.clip.parameters())
    processor = CapDecProcessor.from_pretrained(folder)
    assert processor(images=image_files)["pixel_values"].shape == (4, 3, 64, 64)
    expected = processor.batch_decode(model.generate(**processor(images=image_files), **GENERATE))
    assert len(set(expected)) > 1  # the image decides the caption

    report = run_in_fresh_process(
        FRESH_PROCESS_SCRIPT, [str(folder), json.dumps(image_files), json.dumps(GENERATE)], tmp_path
    )
    assert report["module"].startswith("transformers_modules.") and report["clip_frozen"]
    assert report["direct"] == expected
    assert report["pipeline"] == expected


def test_rn_capdec_embeddings_equal_open_clip(rn_capdec_dir, open_clip_folder):
    model = CapDecForConditionalGeneration.from_pretrained(rn_capdec_dir[0]).eval()
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = torch.nn.functional.normalize(open_clip_folder[1](pixels), dim=-1)
    torch.testing.assert_close(model.get_image_embeds(pixels), expected, atol=1e-5, rtol=0)


def test_original_checkpoint_converts_with_an_open_clip_resnet(rn_capdec_dir, open_clip_folder, tmp_path):
    """`capdec-convert-original --clip_model` takes the open_clip folder (or Hub name) of the paper's CLIP."""
    source = CapDecForConditionalGeneration.from_pretrained(rn_capdec_dir[0]).eval()
    checkpoint = tmp_path / "coco_prefix-009.pt"
    torch.save(original_state_dict(source), checkpoint)
    converted = convert_original_checkpoint(
        checkpoint,
        tmp_path / "out",
        clip_model=str(open_clip_folder[0]),
        decoder_model=rn_capdec_dir[2],
        num_mapping_heads=4,
    )
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(converted.get_prefix_embeds(pixels), source.get_prefix_embeds(pixels))


def test_convert_writes_a_clip_folder_for_any_clip_argument(open_clip_folder, clip_tokenizer_dir, tmp_path):
    convert_open_clip_resnet(open_clip_folder[0], tmp_path / "clip", tokenizer=clip_tokenizer_dir)
    names = sorted(os.listdir(tmp_path / "clip"))
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(names)
    assert resolve_clip_model(str(tmp_path / "clip")) == str(tmp_path / "clip")  # already converted: as is


def test_bad_weights_in_a_saved_rn_capdec_are_named(rn_capdec_dir, tmp_path):
    """A saved RN-backed folder whose weights lack part of the ResNet is refused, naming the keys."""
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "capdec"
    shutil.copytree(rn_capdec_dir[0], folder)
    weights = load_file(folder / "model.safetensors")
    weights.pop("clip.vision_model.attnpool.positional_embedding")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match=r"missing from the checkpoint: clip.vision_model.attnpool.positional_embedding"
    ):
        CapDecForConditionalGeneration.from_pretrained(folder)
