"""`generate(original_beam_search=True)` reproduces the authors' beam search (and greedy loop) token for token."""

import pytest
import torch

from modeling_capdec.pipeline_capdec import CapDecImageToTextPipeline
from tests.tiny_models import tiny_model

# Seed 2's random decoder emits token 68 often, but not always: with it as the stop token, beams end at
# different steps, finished hypotheses compete with open ones, and some run to the length limit.
SEED, STOP = 2, 68


def reference_beam_search(
    model, prefix: torch.Tensor, beams: int, stop: int, max_tokens: int = 67
) -> list[int]:
    """The authors' algorithm as it reads, for one image: no cache, the whole sequence recomputed each step.

    Each hypothesis is (tokens, summed log-probability, length, ended). An ended one is extended by token 0 at no
    cost and without counting it; all candidates are ranked by summed log-probability / length; the loop stops
    when every hypothesis has ended; the best average wins and is cut to its length ("." kept)."""
    embed = model.decoder.get_input_embeddings()

    def next_log_probs(tokens: list[int]) -> torch.Tensor:
        sequence = torch.cat([prefix[None], embed(torch.tensor([tokens], dtype=torch.long))], dim=1)
        return model.decoder(inputs_embeds=sequence).logits[0, -1].softmax(-1).log()

    log_probs = model.decoder(inputs_embeds=prefix[None]).logits[0, -1].softmax(-1).log()
    top_scores, top_tokens = log_probs.topk(beams)
    hypotheses = [
        ([token], score, torch.tensor(1.0), token == stop)
        for token, score in zip(top_tokens.tolist(), top_scores, strict=True)
    ]
    for _ in range(max_tokens - 1):
        if all(ended for *_, ended in hypotheses):
            break
        averages, lengths = [], []
        for tokens, score, length, ended in hypotheses:
            if ended:
                log_probs = torch.full_like(log_probs, -torch.inf)
                log_probs[0] = 0.0
            else:
                log_probs = next_log_probs(tokens)
                length = length + 1
            averages.append((score + log_probs) / length)
            lengths.append(length)
        vocab = log_probs.shape[0]
        best, flat = torch.cat(averages).topk(beams)
        new = []
        for average, index in zip(best, flat.tolist(), strict=True):
            tokens, _, _, ended = hypotheses[index // vocab]
            token, length = index % vocab, lengths[index // vocab]
            new.append((tokens + [token], average * length, length, ended or token == stop))
        hypotheses = new
    tokens, _, length, _ = max(hypotheses, key=lambda hypothesis: hypothesis[1] / hypothesis[2])
    return tokens[: int(length)]


@pytest.fixture(scope="module")
def stop_model(processor):
    model = tiny_model(processor, seed=SEED)
    model.generation_config.eos_token_id = STOP
    return model


@pytest.mark.parametrize("batch,beams", [(1, 5), (8, 3), (8, 5)])
def test_equals_the_original_algorithm(stop_model, batch, beams):
    clip_embeds = torch.randn(batch, 16, generator=torch.Generator().manual_seed(batch + beams))
    with torch.no_grad():
        ids = stop_model.generate(clip_embeds=clip_embeds, original_beam_search=True, num_beams=beams)
        prefixes = stop_model.get_prefix_embeds(clip_embeds=clip_embeds)
        expected = [reference_beam_search(stop_model, prefix, beams, STOP) for prefix in prefixes]
    pad = stop_model.generation_config.pad_token_id
    for row, caption in zip(ids.tolist(), expected, strict=True):
        assert row[: len(caption)] == caption and set(row[len(caption) :]) <= {pad}
    if batch == 8:
        # The setting tests something: captions end in the stop token at different lengths, some not at all.
        assert len({len(caption) for caption in expected}) > 2
        assert any(caption[-1] == STOP for caption in expected) and any(len(c) == 67 for c in expected)


def test_differs_from_transformers_beam_search(stop_model):
    """Why the option exists: on this model transformers' beam search gives other captions for some inputs."""
    clip_embeds = torch.randn(8, 16, generator=torch.Generator().manual_seed(11))
    pad = stop_model.generation_config.pad_token_id

    def captions(ids: torch.Tensor) -> list[list[int]]:
        return [[token for token in row if token != pad] for row in ids.tolist()]

    original = stop_model.generate(clip_embeds=clip_embeds, original_beam_search=True, num_beams=5)
    ours = stop_model.generate(clip_embeds=clip_embeds, num_beams=5, max_new_tokens=67)
    assert captions(original) != captions(ours)


@pytest.mark.parametrize("stop", [STOP, "."])
def test_greedy_equals_plain_greedy_with_that_eos(processor, stop):
    model = tiny_model(processor, seed=SEED)
    if stop == ".":
        (stop,) = processor.tokenizer.encode(".", add_special_tokens=False)
    model.generation_config.eos_token_id = stop
    clip_embeds = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))
    original = model.generate(
        clip_embeds=clip_embeds, original_beam_search=True, num_beams=1, max_new_tokens=30
    )
    plain = model.generate(clip_embeds=clip_embeds, do_sample=False, num_beams=1, max_new_tokens=30)
    assert torch.equal(original, plain)
    with torch.no_grad():
        expected = reference_beam_search(
            model, model.get_prefix_embeds(clip_embeds=clip_embeds)[0], 1, stop, 30
        )
    assert original[0, : len(expected)].tolist() == expected


def test_through_the_pipeline(stop_model, processor, images):
    captioner = CapDecImageToTextPipeline(model=stop_model, processor=processor)
    captions = captioner(images, generate_kwargs={"original_beam_search": True, "num_beams": 3})
    inputs = processor(images=images, return_tensors="pt")
    ids = stop_model.generate(**inputs, original_beam_search=True, num_beams=3)
    assert [c[0]["generated_text"] for c in captions] == processor.batch_decode(ids)


def test_unsupported_settings_are_named(stop_model):
    clip_embeds = torch.randn(1, 16)
    with pytest.raises(ValueError, match="do_sample"):
        stop_model.generate(clip_embeds=clip_embeds, original_beam_search=True, do_sample=True)
    with pytest.raises(ValueError, match="no input_ids"):
        stop_model.generate(clip_embeds=clip_embeds, input_ids=torch.tensor([[5]]), original_beam_search=True)
