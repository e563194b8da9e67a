"""Benchmark 4: training throughput, dynamic padding per batch against padding every caption to the corpus maximum.

One training step = collate a batch (noise included), forward, backward, AdamW step, on the real-size model
(CLIP ViT-B/32 frozen, transformer mapper, GPT-2 124M; random weights) with precomputed CLIP embeddings.

- Ours: `CapDecDataCollator` pads each batch to its longest caption ("dynamic"), or to the next multiple of 8
  ("dynamic_8", what `train_capdec.py` does on CUDA).
- Baseline: the original code's fixed-length padding: every caption padded to the longest caption of the corpus,
  attention mask 0 and labels -100 on the padding. Built as the same collator with `pad_to_multiple_of` = that
  length, so the two sides differ only in padding.

All sides see the same batches in the same order, rotating their order between runs so that machine load hits
them alike. The warmup runs one batch of every padded length the timed batches use, so the timings are the steady
state of a long run: on CUDA the first batch of a new length builds attention plans (0.06-0.8 s on an H100). The
captions are synthetic with COCO's length distribution (`benchmarks.captions`). The script first checks that
both paddings give the same loss on a batch (speed never changes results).

    python -m benchmarks.bench_training            # batch 8, 3 timed steps per run
    python -m benchmarks.bench_training --quick    # batch 2, 2 steps, one run
"""

import time

import numpy as np
import torch

from benchmarks.captions import match_special_tokens, synthetic_captions, word_level_processor
from benchmarks.common import base_parser, median, real_size_model, report, synchronize
from modeling_capdec import CapDecForConditionalGeneration, CapDecProcessor
from modeling_capdec.training.collator import CapDecDataCollator


def caption_corpus(processor: CapDecProcessor, num_captions: int, projection_dim: int) -> list[dict]:
    """Training rows as `prepare_training_dataset` gives them: caption ids + eos, example id, and a unit-norm
    CLIP embedding (random: the values do not change the speed)."""
    token_ids = processor.tokenizer(synthetic_captions(num_captions), add_special_tokens=False)["input_ids"]
    eos = processor.tokenizer.eos_token_id
    embeds = torch.nn.functional.normalize(torch.randn(num_captions, projection_dim), dim=-1)
    return [
        {"input_ids": ids + [eos], "clip_embeds": embeds[index], "example_id": index}
        for index, ids in enumerate(token_ids)
    ]


def padding_collators(processor: CapDecProcessor, corpus_max_length: int) -> dict[str, CapDecDataCollator]:
    """The dynamic collators and the fixed-length baseline (every batch padded to `corpus_max_length`)."""
    return {
        "dynamic": CapDecDataCollator(processor, noise_variance=0.016, seed=0),
        "dynamic_8": CapDecDataCollator(processor, noise_variance=0.016, seed=0, pad_to_multiple_of=8),
        "fixed": CapDecDataCollator(
            processor, noise_variance=0.016, seed=0, pad_to_multiple_of=corpus_max_length
        ),
    }


def train_steps(
    model: CapDecForConditionalGeneration,
    optimizer: torch.optim.Optimizer,
    collator: CapDecDataCollator,
    batches: list[list[dict]],
    device: str,
) -> int:
    """Collate, forward, backward and step on each batch; returns the padded caption tokens processed."""
    padded_tokens = 0
    for features in batches:
        batch = {key: value.to(device) for key, value in collator(features).items()}
        padded_tokens += batch["input_ids"].numel()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return padded_tokens


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--warmup_steps", type=int, default=1)
    parser.add_argument("--corpus_size", type=int, default=10_000, help="captions the batches are drawn from")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.steps, args.repeats = 2, 2, 1
    dtype = getattr(torch, args.dtype)
    model = real_size_model(args.device, dtype)
    processor = word_level_processor()
    match_special_tokens(model, processor)
    corpus = caption_corpus(processor, args.corpus_size, model.config.clip_projection_dim)
    lengths = np.array([len(row["input_ids"]) for row in corpus])
    corpus_max_length = int(lengths.max())
    collators = padding_collators(processor, corpus_max_length)

    # The same random batches for both sides: warmup first, then `steps` new ones per run.
    rng = np.random.default_rng(0)
    num_steps = args.warmup_steps + args.steps * args.repeats
    order = rng.permutation(len(corpus))[: num_steps * args.batch_size]
    batches = [
        [corpus[i] for i in order[s : s + args.batch_size]] for s in range(0, len(order), args.batch_size)
    ]
    warmup, timed = batches[: args.warmup_steps], batches[args.warmup_steps :]

    # Speed never changes results: without dropout both paddings give the same loss.
    with torch.no_grad():
        losses = {
            name: model(**{k: v.to(args.device) for k, v in c(batches[0]).items()}).loss
            for name, c in collators.items()
        }
    # Half precision: other sequence lengths take other attention kernels and reduction orders.
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    for name in ("dynamic", "dynamic_8"):
        torch.testing.assert_close(losses[name], losses["fixed"], atol=tolerance, rtol=tolerance)

    model.train()
    trainable = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    for collator in collators.values():
        train_steps(model, optimizer, collator, warmup, args.device)
        # One timed batch of each padded length this side will see (the first batch of a length is slow on CUDA).
        first_of_length = {len(collator(features)["input_ids"][0]): features for features in timed}
        train_steps(model, optimizer, collator, list(first_of_length.values()), args.device)
    seconds: dict[str, list[float]] = {name: [] for name in collators}
    tokens: dict[str, int] = dict.fromkeys(collators, 0)
    for run in range(args.repeats):
        run_batches = timed[run * args.steps : (run + 1) * args.steps]
        # Rotate which side goes first, so a change in machine load does not favour one.
        names = list(collators)[run % len(collators) :] + list(collators)[: run % len(collators)]
        for name in names:
            synchronize(args.device)
            start = time.perf_counter()
            tokens[name] += train_steps(model, optimizer, collators[name], run_batches, args.device)
            synchronize(args.device)
            seconds[name].append(time.perf_counter() - start)
    captions_per_run = args.steps * args.batch_size
    throughput = {name: captions_per_run / median(values) for name, values in seconds.items()}
    rows = [
        {
            "padding": name,
            "captions_per_s": throughput[name],
            "step_s": median(seconds[name]) / args.steps,
            "mean_caption_tokens_padded": tokens[name] / (args.repeats * captions_per_run),
        }
        for name in ("fixed", "dynamic", "dynamic_8")
    ]
    rows.append(
        {
            "speedup_dynamic_over_fixed": throughput["dynamic"] / throughput["fixed"],
            "speedup_dynamic_8_over_fixed": throughput["dynamic_8"] / throughput["fixed"],
        }
    )
    report(
        f"4. training throughput, batch {args.batch_size}, {args.steps} steps/run: dynamic padding vs padding to "
        f"the corpus max ({corpus_max_length} tokens; captions mean {lengths.mean():.1f} tokens incl. eos)",
        rows,
        args,
    )


if __name__ == "__main__":
    main()
