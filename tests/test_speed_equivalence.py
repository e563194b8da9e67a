"""Speed never changes output: the fast paths give the captions of the paper's slow loops."""

import torch

from benchmarks.reference_loops import uncached_greedy
from tests.tiny_models import tiny_model


def test_batched_cached_greedy_equals_the_uncached_one_by_one_loop(processor, images):
    model = tiny_model(processor, seed=3)
    pixel_values = processor(images=images)["pixel_values"]
    eos = processor.tokenizer.eos_token_id
    fast = model.generate(pixel_values=pixel_values, max_new_tokens=12, do_sample=False)
    slow = uncached_greedy(model, pixel_values, max_new_tokens=12, eos_token_id=eos)
    assert processor.batch_decode(fast) == processor.batch_decode([torch.tensor(t) for t in slow])
    # token for token: fast rows are the slow captions, padded with eos after the first eos
    for row, tokens in zip(fast.tolist(), slow, strict=True):
        assert row[: len(tokens)] == tokens
        assert all(t == eos for t in row[len(tokens) :])


def test_batched_beam_search_equals_one_by_one(processor, images):
    model = tiny_model(processor, seed=4)
    pixel_values = processor(images=images)["pixel_values"]
    kwargs = dict(max_new_tokens=10, num_beams=5, do_sample=False)
    batched = model.generate(pixel_values=pixel_values, **kwargs)
    for index in range(len(images)):
        single = model.generate(pixel_values=pixel_values[index : index + 1], **kwargs)
        length = single.shape[1]
        assert batched[index, :length].tolist() == single[0].tolist()
        assert processor.batch_decode(batched[index : index + 1]) == processor.batch_decode(single)


def test_sdpa_and_eager_attention_give_the_same_captions(processor, images):
    sdpa = tiny_model(processor, seed=5)
    eager = tiny_model(processor, seed=5, attn_implementation="eager")
    assert sdpa.decoder.config._attn_implementation == "sdpa"
    assert eager.decoder.config._attn_implementation == "eager"
    assert eager.clip.config.vision_config._attn_implementation == "eager"
    pixel_values = processor(images=images)["pixel_values"]
    a = sdpa.generate(pixel_values=pixel_values, max_new_tokens=8)
    b = eager.generate(pixel_values=pixel_values, max_new_tokens=8)
    assert torch.equal(a, b)
