"""The paper code's decoding and training loops, rebuilt on our model as speed baselines.

The original CapDec/ClipCap inference captions one image at a time and, at every step, re-runs the decoder over
the whole sequence (prefix + tokens so far) with no key/value cache. These functions do exactly that, so the
benchmarks can measure what batching and the cache buy, and the tests can check that speed never changes output.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

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


# -- the authors' training loop ---------------------------------------------------------------------------------
# CapDec's and ClipCap's `train.py`, rebuilt on our model as the training speed baseline. What it keeps of theirs,
# as facts (their code is not copied): float32; batch 36 (their COCO setting, 40 otherwise); every caption padded
# with token 0 (or cut) to one fixed length, `min(int(mean + 10 * std), max)` of the corpus's caption lengths; the
# attention mask 1 on the prefix and on caption tokens; the LM head over every position and the logits
# `[:, prefix_length - 1 : -1]` scored by `cross_entropy(..., ignore_index=0)`; the noise drawn on the device from
# the global generator (normalise, add `randn * sqrt(eps)`, normalise); transformers' old `AdamW` (a Python loop
# over the parameters: `torch.optim.AdamW(foreach=False)` here) with eps 1e-6 and no weight decay, a linear warmup
# schedule stepped every step, and `loss.item()` at every step (their progress bar): one host sync per step.
#
# Their loss ignores the padding through `ignore_index=0`: token 0 is the padding *and* a real token (GPT-2's "!",
# the benchmark tokenizer's eos), so their loss also drops every real token 0. Their captions carry no eos (GPT-2's
# tokenizer adds none; their models stop at "."). On captions without a token 0 their loss equals ours.
AUTHORS_BATCH_SIZE = 36
AUTHORS_LEARNING_RATE = 2e-5
AUTHORS_WARMUP_STEPS = 5000


def authors_fixed_length(caption_lengths: Sequence[int]) -> int:
    """The length every caption is padded or cut to: `min(int(mean + 10 * std), max)` (std with Bessel's
    correction, as `torch.Tensor.std`)."""
    lengths = torch.tensor(list(caption_lengths), dtype=torch.float32)
    return min(int(lengths.mean() + lengths.std() * 10), int(lengths.max()))


def authors_batch(
    captions: Sequence[Sequence[int]], clip_embeds: torch.Tensor, fixed_length: int, prefix_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(tokens, mask, clip_embeds)` as their dataset and default collation give them: tokens `(B, fixed_length)`
    padded with 0, mask `(B, prefix_length + fixed_length)` float."""
    tokens = torch.zeros(len(captions), fixed_length, dtype=torch.long)
    mask = torch.zeros(len(captions), prefix_length + fixed_length)
    mask[:, :prefix_length] = 1
    for index, caption in enumerate(captions):
        kept = torch.as_tensor(list(caption), dtype=torch.long)[:fixed_length]
        tokens[index, : len(kept)] = kept
        mask[index, prefix_length : prefix_length + len(kept)] = 1
    return tokens, mask, clip_embeds


def authors_noise(clip_embeds: torch.Tensor, noise_variance: float) -> torch.Tensor:
    """Their Gaussian noise injection, drawn on the embeddings' device from the global generator."""
    if noise_variance == 0:
        return clip_embeds
    noised = F.normalize(clip_embeds, dim=1) + torch.randn_like(clip_embeds) * noise_variance**0.5
    return F.normalize(noised, dim=1)


def authors_loss(
    model: CapDecForConditionalGeneration, tokens: torch.Tensor, mask: torch.Tensor, clip_embeds: torch.Tensor
) -> torch.Tensor:
    """Their forward and loss: logits over every position, targets `tokens`, `ignore_index=0`."""
    prefix = model.get_prefix_embeds(clip_embeds=clip_embeds)
    embeds = torch.cat([prefix, model.get_input_embeddings()(tokens).to(prefix.dtype)], dim=1)
    logits = model.decoder(inputs_embeds=embeds, attention_mask=mask).logits
    logits = logits[:, prefix.shape[1] - 1 : -1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.flatten(), ignore_index=0)


def authors_optimizer(
    model: CapDecForConditionalGeneration, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Their optimizer and schedule on our trainable parameters: unfused AdamW, linear warmup."""
    from transformers import get_linear_schedule_with_warmup

    trainable = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=AUTHORS_LEARNING_RATE, eps=1e-6, weight_decay=0.0, foreach=False, fused=False
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, AUTHORS_WARMUP_STEPS, total_steps)
    return optimizer, scheduler


def authors_train_steps(
    model: CapDecForConditionalGeneration,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    batches: Sequence[tuple[Sequence[Sequence[int]], torch.Tensor]],
    fixed_length: int,
    device: str,
    noise_variance: float = 0.016,
) -> list[float]:
    """Their step on each `(captions, clip_embeds)` batch, padding included; returns the losses (read with `.item()`
    at every step, as their progress bar does)."""
    losses = []
    for captions, clip_embeds in batches:
        model.zero_grad()
        tokens, mask, prefix = authors_batch(captions, clip_embeds, fixed_length, model.config.prefix_length)
        tokens, mask, prefix = tokens.to(device), mask.to(device), prefix.to(device, dtype=torch.float32)
        prefix = authors_noise(prefix, noise_variance)
        loss = authors_loss(model, tokens, mask, prefix)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses
