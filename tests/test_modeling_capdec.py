"""CapDecConfig and CapDecForConditionalGeneration: numbers, shapes, round trips and errors."""

import json
import re
import shutil

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassError
from transformers import CLIPConfig, GPT2Config

from modeling_capdec import CapDecConfig, CapDecForConditionalGeneration
from tests.tiny_models import tiny_model


def _batch(processor, images, captions=("a dog running", "a cat on a red sofa", "two people", "a boat")):
    batch = processor(images=images, text=list(captions)[: len(images)], add_eos=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch, labels


# -- config --------------------------------------------------------------------------------------------
def test_config_defaults_follow_the_paper():
    config = CapDecConfig()
    assert (config.mapping_type, config.prefix_length, config.clip_length, config.num_mapping_layers) == (
        "transformer",
        40,
        40,
        8,
    )
    assert config.normalize_prefix and config.train_decoder
    # The training noise is the training layer's (the collator's), not a model setting.
    assert not any(hasattr(config, name) for name in ("noise_variance", "noise_type", "modality_offset"))
    assert config.clip_config.model_type == "clip" and config.text_config.model_type == "gpt2"
    assert config.get_text_config(decoder=True) is config.text_config  # generation finds eos/pad there
    assert (config.clip_projection_dim, config.decoder_hidden_size) == (512, 768)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"mapping_type": "rnn"}, "mapping_type"),
        ({"prefix_length": 0}, "prefix_length"),
        ({"clip_length": -1}, "clip_length"),
        ({"num_mapping_layers": 0}, "num_mapping_layers"),
        ({"prefix_length": "40"}, "prefix_length"),
        ({"num_mapping_heads": 7}, "num_mapping_heads"),
    ],
)
def test_config_rejects_invalid_values_naming_the_field(kwargs, field):
    # @strict wraps the field's own error (the validator's ValueError, or a TypeError) in StrictDataclassError.
    with pytest.raises(StrictDataclassError, match=field):
        CapDecConfig(**kwargs)


def test_config_round_trip(tmp_path):
    config = CapDecConfig(
        clip_config=CLIPConfig(projection_dim=16).to_dict(),
        text_config=GPT2Config(n_embd=32, n_head=4).to_dict(),
        mapping_type="mlp",
        prefix_length=10,
    )
    config.training_noise = {"noise_variance": 0.004, "noise_type": "gaussian"}  # what train_capdec records
    config.save_pretrained(tmp_path)
    loaded = CapDecConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.text_config.n_embd == 32 and loaded.clip_projection_dim == 16
    assert loaded.training_noise == {"noise_variance": 0.004, "noise_type": "gaussian"}


def test_folders_saved_with_noise_in_the_config_still_load(saved_dir, tmp_path, images, processor):
    """Configs written before the training layer was split out hold the noise fields: they load unchanged."""
    old = tmp_path / "old"
    shutil.copytree(saved_dir, old)
    config = json.loads((old / "config.json").read_text())
    config.update(noise_variance=0.016, noise_type="gaussian", modality_offset=[0.1] * 16)
    (old / "config.json").write_text(json.dumps(config))
    loaded = CapDecForConditionalGeneration.from_pretrained(old)
    fresh = CapDecForConditionalGeneration.from_pretrained(saved_dir)
    assert loaded.config.noise_variance == 0.016  # kept as a plain attribute
    pixel_values = processor(images=images[:2])["pixel_values"]
    assert torch.equal(loaded.generate(pixel_values=pixel_values), fresh.generate(pixel_values=pixel_values))


# -- mapping networks -------------------------------------------------------------------------------------
def test_parameter_names_map_to_the_original_checkpoints(processor):
    transformer = tiny_model(processor, num_mapping_layers=2)
    names = {n for n, _ in transformer.named_parameters() if n.startswith("clip_project")}
    expected = {"clip_project.linear.weight", "clip_project.linear.bias", "clip_project.prefix_const"}
    for part in ("norm1", "attn.project", "norm2", "mlp.fc1", "mlp.fc2"):
        expected |= {
            f"clip_project.transformer.layers.1.{part}.weight",
            f"clip_project.transformer.layers.1.{part}.bias",
        }
    expected |= {
        "clip_project.transformer.layers.1.attn.to_queries.weight",  # no bias in the paper's mapper
        "clip_project.transformer.layers.1.attn.to_keys_values.weight",
    }
    assert expected <= names
    assert not any("to_queries.bias" in n or "to_keys_values.bias" in n for n in names)
    mlp = tiny_model(processor, mapping_type="mlp")
    shapes = {n: tuple(p.shape) for n, p in mlp.named_parameters() if n.startswith("clip_project")}
    hidden, prefix, dim = 32, 4, 16
    assert shapes == {
        "clip_project.model.0.weight": (hidden * prefix // 2, dim),
        "clip_project.model.0.bias": (hidden * prefix // 2,),
        "clip_project.model.2.weight": (hidden * prefix, hidden * prefix // 2),
        "clip_project.model.2.bias": (hidden * prefix,),
    }


def test_transformer_mapper_matches_the_papers_computation(model):
    """Recompute the mapper by hand (einsum attention, ReLU MLP, pre-LN, last prefix_length outputs)."""
    mapper = model.clip_project
    embeds = F.normalize(torch.randn(3, 16), dim=-1)
    x = mapper.linear(embeds).view(3, model.config.clip_length, -1)
    x = torch.cat([x, mapper.prefix_const.expand(3, -1, -1)], dim=1)
    heads = model.config.num_mapping_heads
    for layer in mapper.transformer.layers:
        h = layer.norm1(x)
        b, n, c = h.shape
        q = layer.attn.to_queries(h).reshape(b, n, heads, c // heads)
        kv = layer.attn.to_keys_values(h).reshape(b, n, 2, heads, c // heads)
        k, v = kv[:, :, 0], kv[:, :, 1]
        att = torch.einsum("bnhd,bmhd->bnmh", q, k) * (c // heads) ** -0.5
        out = torch.einsum("bnmh,bmhd->bnhd", att.softmax(dim=2), v).reshape(b, n, c)
        x = x + layer.attn.project(out)
        x = x + layer.mlp.fc2(torch.relu(layer.mlp.fc1(layer.norm2(x))))
    expected = x[:, model.config.clip_length :]
    with torch.no_grad():
        actual = model.get_prefix_embeds(clip_embeds=embeds)
    assert actual.shape == (3, model.config.prefix_length, 32)
    torch.testing.assert_close(actual, expected.detach(), rtol=1e-5, atol=1e-5)


# -- forward and loss ---------------------------------------------------------------------------------
def test_loss_equals_hand_computed_cross_entropy(model, processor, images):
    batch, labels = _batch(processor, images[:3])
    with torch.no_grad():
        out = model(
            pixel_values=batch["pixel_values"],
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=labels,
        )
        full = model(
            pixel_values=batch["pixel_values"],
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
        ).logits
    prefix = model.config.prefix_length
    seq_len = batch["input_ids"].shape[1]
    assert full.shape[:2] == (3, prefix + seq_len)
    # position prefix-1+i predicts caption token i; the prefix itself is never a target
    predicting = full[:, prefix - 1 : prefix - 1 + seq_len]
    mask = labels != -100
    per_token = F.cross_entropy(
        predicting.reshape(-1, full.shape[-1]), batch["input_ids"].reshape(-1), reduction="none"
    )
    expected = per_token[mask.reshape(-1)].mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(out.logits, predicting, rtol=1e-5, atol=1e-5)
    # Trainer passes num_items_in_batch (tokens over all accumulated micro-batches): sum / that count
    with torch.no_grad():
        scaled = model(
            pixel_values=batch["pixel_values"],
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=labels,
            num_items_in_batch=torch.tensor(50),
        )
    assert scaled.loss.item() == pytest.approx(per_token[mask.reshape(-1)].sum().item() / 50, rel=1e-5)


def test_trainer_counts_every_label_as_a_target(model):
    # With the "ForConditionalGeneration" loss type, Trainer would count labels[..., 1:] and over-scale.
    assert model.loss_type is None


def test_clip_inputs_are_interchangeable(model, processor):
    batch = processor(clip_text=["a dog running", "a cat"], text=["a dog running", "a cat"])
    with torch.no_grad():
        embeds = model.get_text_embeds(batch["clip_input_ids"], batch["clip_attention_mask"])
        from_ids = model(
            clip_input_ids=batch["clip_input_ids"],
            clip_attention_mask=batch["clip_attention_mask"],
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
        ).logits
        from_embeds = model(
            clip_embeds=embeds * 3.0, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(
        from_ids, from_embeds, rtol=1e-4, atol=1e-4
    )  # precomputed ones are re-normalised


def test_the_model_never_adds_noise(processor):
    """Noise is the training collator's: the model maps what it is given, identically every time."""
    model = tiny_model(processor)
    batch = processor(clip_text=["a dog running"], text=["a dog running"])
    inputs = dict(clip_input_ids=batch["clip_input_ids"], clip_attention_mask=batch["clip_attention_mask"])
    with torch.no_grad():
        clean = model.get_prefix_embeds(**inputs)
        embeds = model.get_text_embeds(**{k.removeprefix("clip_"): v for k, v in inputs.items()})
        torch.testing.assert_close(model.get_prefix_embeds(**inputs), clean, rtol=0, atol=0)
        torch.testing.assert_close(model.get_prefix_embeds(clip_embeds=embeds), clean)
    with pytest.raises(TypeError, match="inject_noise"):
        model.get_prefix_embeds(**inputs, inject_noise=True)


def test_wrong_inputs_raise_clear_errors(model, processor, images):
    batch, labels = _batch(processor, images[:2])
    with pytest.raises(ValueError, match="exactly one of pixel_values, clip_input_ids or clip_embeds"):
        model.get_prefix_embeds(pixel_values=batch["pixel_values"], clip_embeds=torch.zeros(2, 16))
    with pytest.raises(ValueError, match=r"clip_embeds must have shape \(batch, 16\)"):
        model(clip_embeds=torch.zeros(2, 7), input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="labels must have the caption's shape"):
        model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"], labels=labels[:, :2])
    with pytest.raises(ValueError, match="labels need a CLIP input"):
        model(input_ids=batch["input_ids"], labels=labels)


# -- generation ---------------------------------------------------------------------------------------
def test_greedy_generate_equals_step_by_step_argmax(model, processor, images):
    pixel_values = processor(images=images[:2])["pixel_values"]
    generated = model.generate(pixel_values=pixel_values, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert generated.shape == (2, 6)  # caption tokens only, no prefix positions
    tokens = torch.zeros(2, 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(6):  # no cache: the whole sequence again at every step
            logits = model(pixel_values=pixel_values, input_ids=tokens).logits[:, -1]
            if tokens.shape[1] < 6:
                logits[:, processor.tokenizer.eos_token_id] = -float("inf")  # as min_new_tokens does
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, tokens)


def test_caption_length_defaults_to_the_original_codes_67_tokens(model, processor, images):
    from modeling_capdec.modeling_capdec import DEFAULT_MAX_NEW_TOKENS

    pixel_values = processor(images=images[:1])["pixel_values"]
    no_eos = {"bad_words_ids": [[processor.tokenizer.eos_token_id]]}  # so that only the length limit stops it
    assert model.generate(pixel_values=pixel_values, **no_eos).shape == (1, DEFAULT_MAX_NEW_TOKENS) == (1, 67)
    assert model.generate(pixel_values=pixel_values, max_new_tokens=5, **no_eos).shape == (1, 5)
    model.generation_config.max_new_tokens = 9  # a saved generation config wins over the default
    try:
        assert model.generate(pixel_values=pixel_values, **no_eos).shape == (1, 9)
    finally:
        model.generation_config.max_new_tokens = None
    # The default never runs past the decoder's positions.
    positions = model.config.text_config.n_positions
    assert model._default_max_new_tokens(positions - 10) == 10


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_generation_equals_one_by_one(model, processor, images, num_beams):
    pixel_values = processor(images=images)["pixel_values"]
    batched = model.generate(pixel_values=pixel_values, max_new_tokens=7, num_beams=num_beams)
    for index in range(len(images)):
        single = model.generate(
            pixel_values=pixel_values[index : index + 1], max_new_tokens=7, num_beams=num_beams
        )
        assert batched[index, : single.shape[1]].tolist() == single[0].tolist()
    assert len({tuple(row) for row in batched.tolist()}) > 1  # the captions depend on the image


def test_beam_search_returns_only_caption_tokens(model, processor, images):
    pixel_values = processor(images=images[:2])["pixel_values"]
    out = model.generate(pixel_values=pixel_values, max_new_tokens=5, num_beams=4, num_return_sequences=2)
    assert out.shape[0] == 4 and out.shape[1] <= 5
    assert out.dtype == torch.long and int(out.max()) < len(processor.tokenizer)


def test_sampling_is_seeded(model, processor, images):
    pixel_values = processor(images=images[:2])["pixel_values"]
    torch.manual_seed(1)
    a = model.generate(pixel_values=pixel_values, max_new_tokens=5, do_sample=True, top_k=0, temperature=1.0)
    torch.manual_seed(1)
    b = model.generate(pixel_values=pixel_values, max_new_tokens=5, do_sample=True, top_k=0, temperature=1.0)
    assert torch.equal(a, b)


def test_prompt_continues_after_the_prefix(model, processor, images):
    pixel_values = processor(images=images[:1])["pixel_values"]
    prompt = processor(text=["a dog"])
    out = model.generate(
        pixel_values=pixel_values,
        input_ids=prompt["input_ids"],
        attention_mask=prompt["attention_mask"],
        max_new_tokens=4,
        min_new_tokens=4,
    )
    prompt_len = prompt["input_ids"].shape[1]
    assert torch.equal(out[:, :prompt_len], prompt["input_ids"])
    with torch.no_grad():
        logits = model(pixel_values=pixel_values, input_ids=prompt["input_ids"]).logits[:, -1]
    logits[:, processor.tokenizer.eos_token_id] = -float("inf")
    assert out[0, prompt_len].item() == logits.argmax(-1).item()


# -- freezing ----------------------------------------------------------------------------------------
def test_clip_is_frozen_and_unchanged_by_training(processor, images):
    model = tiny_model(processor).train()
    assert not model.clip.training and model.decoder.training and model.clip_project.training
    before = {n: p.detach().clone() for n, p in model.clip.named_parameters()}
    mapper_before = model.clip_project.linear.weight.detach().clone()
    batch, labels = _batch(processor, images[:2])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(
        pixel_values=batch["pixel_values"],
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=labels,
    ).loss
    loss.backward()
    assert all(p.grad is None for p in model.clip.parameters())
    optimizer.step()
    assert all(torch.equal(before[n], p) for n, p in model.clip.named_parameters())
    assert not torch.equal(mapper_before, model.clip_project.linear.weight)


def test_only_prefix_freezes_the_decoder(processor):
    model = tiny_model(processor, train_decoder=False).train()
    assert not any(p.requires_grad for p in model.decoder.parameters())
    assert not model.decoder.training
    assert all(p.requires_grad for p in model.clip_project.parameters())


# -- save / load --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mapping_type", ["transformer", "mlp"])
def test_save_load_round_trip_gives_identical_logits(processor, images, tmp_path, mapping_type):
    model = tiny_model(processor, mapping_type=mapping_type)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = CapDecForConditionalGeneration.from_pretrained(tmp_path).eval()
    batch, _ = _batch(processor, images[:2])
    with torch.no_grad():
        expected = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"]).logits
        actual = loaded(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"]).logits
    assert torch.equal(expected, actual)
    # frozen again after loading (from_pretrained recreates parameters with requires_grad=True)
    assert not any(p.requires_grad for p in loaded.clip.parameters())
    loaded.train()
    assert not loaded.clip.training
    # tied decoder weights survive
    assert loaded.decoder.lm_head.weight.data_ptr() == loaded.decoder.get_input_embeddings().weight.data_ptr()


def test_saved_folder_is_hub_ready(saved_dir):
    files = {p.name for p in saved_dir.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "configuration_capdec.py",
        "modeling_capdec.py",
        "processing_capdec.py",
        "pipeline_capdec.py",
        "processor_config.json",
    } <= files
    # Only the inference unit travels: no training or evaluation code in a Hub folder.
    assert {name for name in files if name.endswith(".py")} == {
        "configuration_capdec.py",
        "modeling_capdec.py",
        "processing_capdec.py",
        "pipeline_capdec.py",
    }
    config = json.loads((saved_dir / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_capdec.CapDecConfig",
        "AutoModel": "modeling_capdec.CapDecForConditionalGeneration",
        "AutoModelForImageTextToText": "modeling_capdec.CapDecForConditionalGeneration",
        "AutoProcessor": "processing_capdec.CapDecProcessor",
    }
    assert config["custom_pipelines"]["image-to-text"]["impl"] == "pipeline_capdec.CapDecImageToTextPipeline"
    # The copied code imports its siblings relatively only, so the remote copy resolves them.
    for name in ("modeling_capdec.py", "pipeline_capdec.py", "processing_capdec.py"):
        code_lines = [line.strip() for line in (saved_dir / name).read_text().splitlines()]
        assert not [line for line in code_lines if re.match(r"(from|import)\s+modeling_capdec\b", line)], name


def test_config_disagreeing_with_weights_names_the_mismatch(saved_dir, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(saved_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["prefix_length"] = 6
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"clip_project\.prefix_const: shape \(4, 32\) in the checkpoint, \(6, 32\)"
    ):
        CapDecForConditionalGeneration.from_pretrained(folder)
    config["prefix_length"], config["mapping_type"] = 4, "mlp"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing from the checkpoint: clip_project\.model\.0\.bias"):
        CapDecForConditionalGeneration.from_pretrained(folder)


def test_from_clip_decoder_pretrained_composes_local_parts(processor, tmp_path):
    source = tiny_model(processor)
    source.clip.save_pretrained(tmp_path / "clip")
    source.decoder.save_pretrained(tmp_path / "decoder")
    model = CapDecForConditionalGeneration.from_clip_decoder_pretrained(
        str(tmp_path / "clip"),
        str(tmp_path / "decoder"),
        mapping_type="transformer",
        prefix_length=5,
        clip_length=3,
        num_mapping_layers=1,
        num_mapping_heads=4,
        decoder_attn_implementation="eager",
    )
    assert (model.config.prefix_length, model.config.clip_length, model.config.num_mapping_layers) == (
        5,
        3,
        1,
    )
    assert model.decoder.config._attn_implementation == "eager"
    for name, param in source.clip.named_parameters():
        assert torch.equal(param, model.clip.get_parameter(name)), name  # pretrained weights kept
    for name, param in source.decoder.named_parameters():
        assert torch.equal(param, model.decoder.get_parameter(name)), name
    assert not any(p.requires_grad for p in model.clip.parameters())
    assert model.get_prefix_embeds(clip_embeds=torch.randn(2, 16)).shape == (2, 5, 32)
