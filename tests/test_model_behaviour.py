"""What a user of a transformers model expects of CapDec: resizing, generation outputs and caches, positions,
loading, and clear errors (issues 11 and 12)."""

import copy
import shutil

import pytest
import torch
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as hf_logging
from transformers.utils.generic import find_labels

from modeling_capdec import CapDecForConditionalGeneration
from tests.tiny_models import tiny_model

LOGGER = hf_logging.get_logger("modeling_capdec.modeling_capdec")


@pytest.fixture(scope="module")
def pixel_values(processor, images):
    return processor(images=images)["pixel_values"]


def _left_padded_prompts(processor, texts=("a dog", "a cat on a red sofa")):
    processor.tokenizer.padding_side = "left"
    try:
        return processor(text=list(texts))
    finally:
        processor.tokenizer.padding_side = "right"


# -- resize_token_embeddings -------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [True, False])
def test_resize_train_save_reload_generate(processor, pixel_values, tmp_path, tied):
    model = tiny_model(processor, seed=1)
    if not tied:
        config = copy.deepcopy(model.config)
        config.tie_word_embeddings = False
        config.text_config.tie_word_embeddings = False
        torch.manual_seed(1)
        model = CapDecForConditionalGeneration(config)
    new_size = len(processor.tokenizer) + 3  # e.g. three style tokens added to the tokenizer
    model.resize_token_embeddings(new_size)
    assert model.get_input_embeddings().num_embeddings == new_size
    assert model.get_output_embeddings().out_features == new_size
    assert model.config.text_config.vocab_size == new_size
    head, embeddings = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert (head.data_ptr() == embeddings.data_ptr()) == tied

    # One training step on a caption that uses the new tokens.
    model.train()
    input_ids = torch.tensor([[new_size - 3, 5, new_size - 1, 7]] * 2)
    loss = model(pixel_values=pixel_values[:2], input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    model.eval()

    model.save_pretrained(tmp_path)
    reloaded = CapDecForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.get_input_embeddings().num_embeddings == new_size
    kwargs = {"pixel_values": pixel_values, "max_new_tokens": 5}
    assert torch.equal(reloaded.generate(**kwargs), model.generate(**kwargs))


# -- generation outputs ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "strategy",
    [
        {"num_beams": 1},
        {"num_beams": 1, "do_sample": True},
        {"num_beams": 2},
        {"num_beams": 2, "do_sample": True},
    ],
    ids=["greedy", "sample", "beam", "beam-sample"],
)
def test_return_dict_in_generate_sequences_equal_the_tensor_return(model, processor, pixel_values, strategy):
    prompt = _left_padded_prompts(processor)
    kwargs = {
        "pixel_values": pixel_values[:2],
        **prompt,
        "max_new_tokens": 4,
        "min_new_tokens": 4,
        **strategy,
    }
    torch.manual_seed(0)
    tensor = model.generate(**kwargs)
    torch.manual_seed(0)
    output = model.generate(**kwargs, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(output.sequences, tensor)
    assert torch.equal(output.sequences[:, : prompt["input_ids"].shape[1]], prompt["input_ids"])
    assert len(output.scores) == 4  # one per new token
    if strategy == {"num_beams": 1}:
        chosen = torch.stack([score.argmax(-1) for score in output.scores], dim=1)
        assert torch.equal(chosen, output.sequences[:, -4:])


@pytest.mark.parametrize("cache_name", ["cache", "past_key_values"])
def test_generate_continued_from_its_own_cache_equals_one_long_generate(model, pixel_values, cache_name):
    kwargs = {"pixel_values": pixel_values[:1]}
    full = model.generate(**kwargs, max_new_tokens=6, min_new_tokens=6)
    first = model.generate(**kwargs, max_new_tokens=3, min_new_tokens=3, return_dict_in_generate=True)
    continued = model.generate(
        **kwargs,
        input_ids=first.sequences,
        **{cache_name: first.cache},
        max_new_tokens=3,
        min_new_tokens=3,
    )
    assert torch.equal(continued, full)


def test_assisted_decoding_equals_plain_greedy(model, pixel_values):
    kwargs = {"pixel_values": pixel_values[1:2], "max_new_tokens": 6, "min_new_tokens": 6}
    assert torch.equal(model.generate(**kwargs, assistant_model=model), model.generate(**kwargs))
    torch.manual_seed(0)
    sampled = model.generate(**kwargs, assistant_model=model, do_sample=True)
    assert sampled.shape == (1, 6)


def test_static_cache_generates_as_the_dynamic_cache(model, pixel_values):
    kwargs = {"pixel_values": pixel_values, "max_new_tokens": 5, "min_new_tokens": 5}
    assert torch.equal(model.generate(**kwargs, cache_implementation="static"), model.generate(**kwargs))


def test_generate_accepts_prompt_position_ids(model, processor, pixel_values):
    prompt = _left_padded_prompts(processor)
    kwargs = {"pixel_values": pixel_values[:2], **prompt, "max_new_tokens": 4}
    # The positions generate derives from a left-padded mask, passed explicitly, counted from the prompt.
    positions = (prompt["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    assert torch.equal(model.generate(**kwargs, position_ids=positions), model.generate(**kwargs))


# -- forward -----------------------------------------------------------------------------------------
def test_left_padded_batch_scores_as_the_unpadded_rows(model, processor, pixel_values):
    texts = ["a dog", "a cat on a red sofa"]
    batch = _left_padded_prompts(processor, texts)
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        padded = model(pixel_values=pixel_values[:2], **batch, position_ids=positions).logits
        for row, text in enumerate(texts):
            ids = processor(text=[text])["input_ids"]
            alone = model(pixel_values=pixel_values[row : row + 1], input_ids=ids).logits[0, -ids.shape[1] :]
            torch.testing.assert_close(padded[row, -ids.shape[1] :], alone, atol=1e-5, rtol=1e-5)


def test_forward_continues_from_past_key_values(model, pixel_values):
    ids = torch.tensor([[5, 9, 12, 7, 3]])
    with torch.no_grad():
        full = model(pixel_values=pixel_values[:1], input_ids=ids).logits
        first = model(pixel_values=pixel_values[:1], input_ids=ids[:, :3], use_cache=True)
        with pytest.warns(FutureWarning, match="past_key_values"):
            rest = model(input_ids=ids[:, 3:], past_key_values=first.cache).logits
    torch.testing.assert_close(rest, full[:, -2:], atol=1e-5, rtol=1e-5)


def test_return_dict_false_gives_a_tuple(model, pixel_values):
    ids = torch.tensor([[5, 9, 12]])
    with torch.no_grad():
        output = model(pixel_values=pixel_values[:1], input_ids=ids, labels=ids)
        as_tuple = model(pixel_values=pixel_values[:1], input_ids=ids, labels=ids, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], output.loss) and torch.equal(as_tuple[1], output.logits)


def test_shift_labels_are_the_loss_targets(model, pixel_values):
    ids = torch.tensor([[5, 9, 12, 7]])
    other = torch.tensor([[8, 8, -100, 2]])
    with torch.no_grad():
        by_labels = model(pixel_values=pixel_values[:1], input_ids=ids, labels=other).loss
        by_shift = model(pixel_values=pixel_values[:1], input_ids=ids, shift_labels=other).loss
        # As in transformers' causal-LM loss, shift_labels win over labels.
        both = model(pixel_values=pixel_values[:1], input_ids=ids, labels=ids, shift_labels=other).loss
    assert torch.equal(by_shift, by_labels) and torch.equal(both, by_labels)
    # shift_labels is a keyword, not a parameter: Trainer infers its label columns from forward's parameters.
    assert find_labels(CapDecForConditionalGeneration) == ["labels"]


def test_activation_checkpointing_gives_the_same_loss_and_gradients(processor, pixel_values):
    model = tiny_model(processor, seed=2).train()
    ids = torch.tensor([[5, 9, 12, 7]] * 2)

    def loss_and_grads():
        model.zero_grad()
        torch.manual_seed(0)  # the same dropout draws (checkpointing replays them on recomputation)
        loss = model(pixel_values=pixel_values[:2], input_ids=ids, labels=ids).loss
        loss.backward()
        return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads()
    model.activation_checkpointing_enable()
    loss_cp, grads_cp = loss_and_grads()
    torch.testing.assert_close(loss_cp, loss)
    assert grads.keys() == grads_cp.keys() and any(n.startswith("clip_project") for n in grads)
    for name in grads:
        torch.testing.assert_close(grads_cp[name], grads[name], atol=1e-5, rtol=1e-4)


def test_set_attn_implementation_switches_every_part(processor, pixel_values):
    model = tiny_model(processor, seed=2)
    ids = torch.tensor([[5, 9, 12]])
    with torch.no_grad():
        sdpa = model(pixel_values=pixel_values[:1], input_ids=ids).logits
        model.set_attn_implementation("eager")
        parts = (
            model.config,
            model.clip.config,
            model.decoder.config,
            model.clip_project.transformer.layers[0].attn.config,
        )
        assert all(config._attn_implementation == "eager" for config in parts)
        eager = model(pixel_values=pixel_values[:1], input_ids=ids).logits
    torch.testing.assert_close(eager, sdpa, atol=1e-4, rtol=1e-4)


def test_image_and_text_features_use_the_v5_names(model, processor, pixel_values):
    image_features = model.get_image_features(pixel_values)
    torch.testing.assert_close(
        torch.nn.functional.normalize(image_features.pooler_output, dim=-1),
        model.get_image_embeds(pixel_values),
    )
    clip_text = processor.clip_tokenizer(["a dog"], return_tensors="pt")
    text_features = model.get_text_features(clip_text["input_ids"], clip_text["attention_mask"])
    torch.testing.assert_close(
        torch.nn.functional.normalize(text_features.pooler_output, dim=-1),
        model.get_text_embeds(clip_text["input_ids"], clip_text["attention_mask"]),
    )


# -- loading -----------------------------------------------------------------------------------------
def test_loading_info_reports_missing_weights_initialised_like_a_fresh_model(saved_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "partial"
    shutil.copytree(saved_dir, folder)
    weights = load_file(saved_dir / "model.safetensors")
    kept = {key: value for key, value in weights.items() if not key.startswith("clip.")}
    save_file(kept, folder / "model.safetensors", metadata={"format": "pt"})

    with pytest.raises(ValueError, match="missing from the checkpoint: clip"):
        CapDecForConditionalGeneration.from_pretrained(folder)  # the default stays strict
    model, info = CapDecForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] and all(key.startswith("clip.") for key in info["missing_keys"])
    # CLIP's own init, as in a fresh model: logit_scale's initial value, the attention's scaled projections.
    assert model.clip.logit_scale.item() == pytest.approx(model.clip.config.logit_scale_init_value)
    fresh = CapDecForConditionalGeneration(model.config)
    for name in ("clip.text_model.encoder.layers.0.self_attn.q_proj.weight", "clip.visual_projection.weight"):
        loaded_std = model.get_parameter(name).std().item()
        assert loaded_std == pytest.approx(fresh.get_parameter(name).std().item(), rel=0.3)


def test_tied_head_absent_from_the_file_is_not_missing(saved_dir):
    from safetensors import safe_open

    with safe_open(saved_dir / "model.safetensors", framework="pt") as reader:
        assert "decoder.lm_head.weight" not in set(reader.keys())
    _, info = CapDecForConditionalGeneration.from_pretrained(saved_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_from_pretrained_with_a_state_dict_and_no_folder(model):
    reloaded = CapDecForConditionalGeneration.from_pretrained(
        None, config=model.config, state_dict=model.state_dict()
    )
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


# -- clear errors (issue 12) -------------------------------------------------------------------------
def test_generate_with_an_empty_batch_says_so(model, pixel_values):
    with pytest.raises(ValueError, match="empty batch"):
        model.generate(pixel_values=pixel_values[:0])


@pytest.mark.parametrize("num_beams", [0, -2])
def test_generate_rejects_a_non_positive_num_beams(model, pixel_values, num_beams):
    with pytest.raises(ValueError, match=f"num_beams must be a positive integer.*got {num_beams}"):
        model.generate(pixel_values=pixel_values[:1], num_beams=num_beams)


def test_generate_past_the_decoders_positions_is_capped_with_a_warning(model, pixel_values):
    positions = model.config.text_config.n_positions
    room = positions - model.config.prefix_length
    with CaptureLogger(LOGGER) as captured:
        # Suppressing eos makes a caption that never ends.
        ids = model.generate(
            pixel_values=pixel_values[:1],
            max_new_tokens=positions + 50,
            suppress_tokens=[model.generation_config.eos_token_id],
        )
    assert ids.shape[1] == room
    assert f"max_new_tokens={positions + 50}" in captured.out and f"{positions} positions" in captured.out


def test_token_ids_past_the_decoders_vocabulary_raise_a_clear_error(model, pixel_values):
    vocab_size = model.get_input_embeddings().num_embeddings
    with pytest.raises(
        ValueError, match=rf"token id {vocab_size + 2}.*vocabulary of {vocab_size} tokens.*resize_token"
    ):
        model(pixel_values=pixel_values[:1], input_ids=torch.tensor([[3, vocab_size + 2]]))


def test_folder_without_config_json_names_the_folder_and_the_file(saved_dir, tmp_path):
    folder = tmp_path / "no_config"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((saved_dir / "model.safetensors").read_bytes())
    with pytest.raises(OSError, match=rf"{folder} has no config\.json"):
        CapDecForConditionalGeneration.from_pretrained(folder)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_weights_file_names_its_path(saved_dir, tmp_path, damage):
    folder = tmp_path / damage
    shutil.copytree(saved_dir, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a safetensors file" * 10)
    with pytest.raises(OSError, match=rf"{weights}"):
        CapDecForConditionalGeneration.from_pretrained(folder)
