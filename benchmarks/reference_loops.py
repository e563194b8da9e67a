"""The paper code's decoding loops, rebuilt on our model as speed baselines.

The original CapDec/ClipCap inference captions one image at a time and, at every step, re-runs the decoder over
the whole sequence (prefix + tokens so far) with no key/value cache. These functions do exactly that, so the
benchmarks can measure what batching and the cache buy, and the tests can check that speed never changes output.
"""

import torch

from modeling_capdec import CapDecForConditionalGeneration


@torch.no_grad()
def uncached_greedy(
    model: CapDecForConditionalGeneration, pixel_values: torch.Tensor, max_new_tokens: int, eos_token_id: int
) -> list[list[int]]:
    """Greedy captions, one image at a time, full decoder re-run per step (the original `generate2`, argmax)."""
    captions = []
    for image in pixel_values:
        sequence = model.get_prefix_embeds(pixel_values=image[None])
        tokens: list[int] = []
        for _ in range(max_new_tokens):
            logits = model.decoder(inputs_embeds=sequence, use_cache=False).logits[:, -1]
            token = int(logits.argmax(-1))
            tokens.append(token)
            if token == eos_token_id:
                break
            next_embed = model.get_input_embeddings()(torch.tensor([[token]], device=sequence.device))
            sequence = torch.cat([sequence, next_embed.to(sequence.dtype)], dim=1)
        captions.append(tokens)
    return captions


@torch.no_grad()
def uncached_beam_search(
    model: CapDecForConditionalGeneration,
    pixel_values: torch.Tensor,
    num_beams: int,
    max_new_tokens: int,
    eos_token_id: int,
) -> list[list[int]]:
    """Beam search as the original `generate_beam`: one image at a time, beams re-run in full each step,
    finished beams kept (score frozen), final choice by log-probability divided by length."""
    captions = []
    embed_tokens = model.get_input_embeddings()
    for image in pixel_values:
        sequence = model.get_prefix_embeds(pixel_values=image[None])
        scores = None
        tokens = None
        lengths = torch.ones(1, device=sequence.device)
        stopped = torch.zeros(1, dtype=torch.bool, device=sequence.device)
        for _ in range(max_new_tokens):
            logprobs = (
                model.decoder(inputs_embeds=sequence, use_cache=False).logits[:, -1].float().log_softmax(-1)
            )
            if scores is None:
                scores, next_tokens = logprobs.topk(num_beams, -1)
                sequence = sequence.expand(num_beams, -1, -1)
                next_tokens, scores = next_tokens.permute(1, 0), scores.squeeze(0)
                tokens = next_tokens
                lengths = lengths.expand(num_beams).clone()
                stopped = stopped.expand(num_beams).clone()
            else:
                logprobs[stopped] = -float("inf")
                logprobs[stopped, 0] = 0  # a finished beam continues with a zero-cost dummy token
                candidate = scores[:, None] + logprobs
                lengths[~stopped] += 1
                average = candidate / lengths[:, None]
                average, flat = average.view(-1).topk(num_beams, -1)
                source = flat // logprobs.shape[1]
                lengths = lengths[source]
                next_tokens = (flat % logprobs.shape[1]).unsqueeze(1)
                tokens = torch.cat([tokens[source], next_tokens], dim=1)
                sequence = sequence[source]
                scores = average * lengths
                stopped = stopped[source]
            next_embed = embed_tokens(next_tokens).to(sequence.dtype)
            sequence = torch.cat([sequence, next_embed], dim=1)
            stopped = stopped | next_tokens.squeeze(1).eq(eos_token_id)
            if bool(stopped.all()):
                break
        best = int((scores / lengths).argmax())
        kept = [int(t) for t in tokens[best][: int(lengths[best])]]
        captions.append(kept)
    return captions
