"""Other CLIP-likes as CapDec's CLIP through transformers' own classes: SigLIP works (it has no projection: the text
width is the embedding size); SigLIP 2's Siglip2Model, which embeds patch sequences, is refused for images with an
error that says why."""

import pytest
import torch
from transformers import GPT2Config, Siglip2Config, SiglipConfig

from modeling_capdec import CapDecConfig, CapDecForConditionalGeneration

TEXT = {
    "vocab_size": 100,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 16,
}
VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "patch_size": 8,
}


def capdec_with(clip_config) -> CapDecForConditionalGeneration:
    decoder = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, eos_token_id=0)
    config = CapDecConfig(
        clip_config=clip_config,
        text_config=decoder,
        prefix_length=4,
        clip_length=4,
        num_mapping_layers=1,
        num_mapping_heads=4,
    )
    torch.manual_seed(0)
    return CapDecForConditionalGeneration(config).eval()


def test_siglip_is_capdecs_clip(tmp_path):
    model = capdec_with(SiglipConfig(text_config=TEXT, vision_config={**VISION, "image_size": 32}))
    assert type(model.clip).__name__ == "SiglipModel" and model.config.clip_projection_dim == 32
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad():
        image_embeds = model.get_image_embeds(pixels)
        text_embeds = model.get_text_embeds(ids)
        expected_image = model.clip.get_image_features(pixel_values=pixels).pooler_output
    assert image_embeds.shape == text_embeds.shape == (2, 32)
    torch.testing.assert_close(image_embeds, torch.nn.functional.normalize(expected_image, dim=-1))
    captions = model.generate(pixel_values=pixels, max_new_tokens=4)
    assert captions.shape == (2, 4)
    model.save_pretrained(tmp_path)
    reloaded = CapDecForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert type(reloaded.clip).__name__ == "SiglipModel"
    assert torch.equal(reloaded.generate(pixel_values=pixels, max_new_tokens=4), captions)


def test_siglip2_patch_sequences_are_refused_with_a_clear_error():
    model = capdec_with(Siglip2Config(text_config=TEXT, vision_config={**VISION, "num_patches": 16}))
    with torch.no_grad():  # its text tower works (text-only training would run) ...
        assert model.get_text_embeds(torch.tensor([[5, 6, 7, 8]])).shape == (1, 32)
    # ... but captioning an image would need pixel_attention_mask and spatial_shapes, which CapDec does not pass.
    with pytest.raises(
        ValueError, match=r"Siglip2Model embeds images as patch sequences with pixel_attention_mask"
    ):
        model.generate(pixel_values=torch.randn(1, 16, 3 * 8 * 8), max_new_tokens=2)
