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

`--suite speed` is benchmark 6: the authors' training loop (`reference_loops.authors_train_steps`: float32,
batch 36, fixed-length padding, unfused AdamW, `loss.item()` every step) against our `CapDecTrainer` path as
`train_capdec.py` runs it, and each speed option changed alone (bf16, fused AdamW, per-step syncs, workers, length
buckets, `torch.compile` with buckets or dynamic shapes, CUDA graphs), with captions/s, MFU (`benchmarks.mfu`)
and the COCO epoch time; `benchmarks/README.md` describes the rows.

    python -m benchmarks.bench_training --suite speed --batch_size 128 --steps 10 --repeats 3   # on a GPU
    python -m benchmarks.bench_training --suite speed --quick                                   # a check
"""

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from benchmarks.captions import match_special_tokens, synthetic_captions, word_level_processor
from benchmarks.common import base_parser, median, real_size_model, report, synchronize
from benchmarks.mfu import mfu, peak_flops, training_flops_per_caption
from benchmarks.reference_loops import (
    AUTHORS_BATCH_SIZE,
    authors_batch,
    authors_fixed_length,
    authors_loss,
    authors_optimizer,
    authors_train_steps,
)
from modeling_capdec import CapDecForConditionalGeneration, CapDecProcessor
from modeling_capdec.training.arguments import (
    DEFAULT_COMPILE_BUCKETS,
    SPEED_DEFAULT_WORKERS,
    CapDecTrainingArguments,
)
from modeling_capdec.training.collator import CapDecDataCollator
from modeling_capdec.training.trainer import CapDecTrainer, NonFiniteGuardCallback


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


def padding_suite(args: argparse.Namespace) -> None:
    """Benchmark 4: dynamic padding against padding to the corpus maximum (same hand loop for both)."""
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


# -- benchmark 6: our Trainer path against the authors' loop, and each speed option alone -----------------------
COCO_CAPTIONS = (
    566_747  # the paper's COCO corpus (Karpathy train + restval captions): the epoch-time estimate
)


@dataclass
class SpeedRow:
    """One row of the ablation: `options` are `CapDecTrainingArguments` fields on top of `ours_options`, or the
    collator's padding (`pad_to_buckets`, `pad_to_multiple_of`); `guard=False` leaves out the NaN guard's per-step
    sync; `cuda_only` rows are skipped on other devices."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    guard: bool = True
    cuda_only: bool = False


def speed_rows(bucket_lengths: list[int]) -> list[SpeedRow]:
    """Ours as `train_capdec.py` runs by default, then each option changed alone (compilation last: slowest)."""
    return [
        SpeedRow("ours_default"),
        SpeedRow("ours_float32", {"bf16": False}, cuda_only=True),
        SpeedRow("ours_adamw_foreach", {"optim": "adamw_torch"}),
        SpeedRow("ours_sync_every_step", {"logging_nan_inf_filter": True}),
        SpeedRow("ours_log_every_step", {"logging_steps": 1}),
        SpeedRow("ours_no_nan_guard", guard=False),
        SpeedRow("ours_workers_0", {"dataloader_num_workers": 0}, cuda_only=True),
        SpeedRow("ours_buckets", {"pad_to_buckets": bucket_lengths}),
        SpeedRow("ours_compile_buckets", {"torch_compile": True, "pad_to_buckets": bucket_lengths}),
        SpeedRow("ours_compile_dynamic", {"torch_compile": True, "pad_to_multiple_of": 1}),
        SpeedRow(
            "ours_compile_cudagraphs",
            {
                "torch_compile": True,
                "torch_compile_mode": "reduce-overhead",
                "pad_to_buckets": bucket_lengths,
            },
            cuda_only=True,
        ),
    ]


def ours_options(device: str) -> dict[str, Any]:
    """What `train_capdec.py` uses on `device` with the COCO recipe's optimiser settings, given explicitly (so that
    each row changes one thing): on CUDA its speed defaults (bf16, 2 workers), everywhere Trainer's fused AdamW."""
    on_cuda = device.startswith("cuda")
    return {
        "bf16": on_cuda and torch.cuda.is_bf16_supported(),
        "dataloader_num_workers": SPEED_DEFAULT_WORKERS if on_cuda else 0,
        "optim": "adamw_torch_fused",
        "logging_nan_inf_filter": False,
        "speed_defaults": False,
    }


class StepTimer(TrainerCallback):
    """Wall-clock seconds of consecutive blocks of `block_steps` steps after `start_step` (synchronised)."""

    def __init__(self, device: str, start_step: int, block_steps: int):
        self.device, self.start_step, self.block_steps = device, start_step, block_steps
        self.block_seconds: list[float] = []
        self.started: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step >= self.start_step and (step - self.start_step) % self.block_steps == 0:
            synchronize(self.device)
            now = time.perf_counter()
            if self.started is not None:
                self.block_seconds.append(now - self.started)
            self.started = now
        return control


def padded_length(collator: CapDecDataCollator, batch: list[dict]) -> int:
    return collator.pad_captions([row["input_ids"] for row in batch])["input_ids"].shape[1]


def run_ours(
    model: CapDecForConditionalGeneration,
    processor: CapDecProcessor,
    batches: list[list[dict]],
    warmup: list[list[dict]],
    row: SpeedRow,
    args: argparse.Namespace,
    output_dir: str,
) -> list[float]:
    """Train through `CapDecTrainer` on `warmup` + one batch of each padded length + `batches` (in this order, a
    sequential sampler); returns the seconds of each block of `args.steps` timed steps."""
    options = {**ours_options(args.device), **row.options}
    padding = {
        name: options.pop(name) for name in ("pad_to_buckets", "pad_to_multiple_of") if name in options
    }
    collator = CapDecDataCollator(processor, noise_variance=0.016, seed=0, **padding)
    untimed = list(warmup)
    if args.device.startswith("cuda") or options.get("torch_compile"):
        # One batch of every padded length first: on CUDA the first batch of a length builds attention plans
        # (benchmark 4), and a compiled model compiles each new shape.
        untimed += list({padded_length(collator, batch): batch for batch in batches}.values())
    order = untimed + batches
    training_args = CapDecTrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=len(order),
        train_sampling_strategy="sequential",
        dataloader_drop_last=True,
        learning_rate=2e-5,
        adam_epsilon=1e-6,
        warmup_steps=5000,
        weight_decay=0.0,
        max_grad_norm=0.0,
        logging_steps=options.pop("logging_steps", 100),
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=not args.device.startswith("cuda"),
        seed=0,
        **options,
    )
    timer = StepTimer(args.device, len(untimed), args.steps)
    trainer = CapDecTrainer(
        model=model,
        args=training_args,
        train_dataset=[row for batch in order for row in batch],
        data_collator=collator,
        callbacks=[timer],
    )
    if not row.guard:
        trainer.remove_callback(NonFiniteGuardCallback)
    trainer.train()
    return timer.block_seconds


def run_authors(
    model: CapDecForConditionalGeneration,
    batches: list[list[dict]],
    warmup: list[list[dict]],
    fixed_length: int,
    args: argparse.Namespace,
) -> list[float]:
    """The authors' loop (`reference_loops.authors_train_steps`) on captions without eos (theirs have none);
    returns the seconds of each block of `args.steps` timed steps."""

    def theirs(batch: list[dict]) -> tuple[list[list[int]], torch.Tensor]:
        return [row["input_ids"][:-1] for row in batch], torch.stack([row["clip_embeds"] for row in batch])

    model.train()
    optimizer, scheduler = authors_optimizer(model, len(warmup) + len(batches))
    authors_train_steps(model, optimizer, scheduler, [theirs(b) for b in warmup], fixed_length, args.device)
    seconds = []
    for start in range(0, len(batches), args.steps):
        block = [theirs(batch) for batch in batches[start : start + args.steps]]
        synchronize(args.device)
        began = time.perf_counter()
        authors_train_steps(model, optimizer, scheduler, block, fixed_length, args.device)
        synchronize(args.device)
        seconds.append(time.perf_counter() - began)
    return seconds


def draw_batches(corpus: list[dict], batch_size: int, count: int, seed: int) -> list[list[dict]]:
    order = np.random.default_rng(seed).permutation(len(corpus))[: count * batch_size]
    return [[corpus[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]


def check_authors_loss_equals_ours(
    model: CapDecForConditionalGeneration, processor: CapDecProcessor, batch: list[dict], fixed_length: int
) -> None:
    """On captions without token 0 and without noise, the authors' loss (fixed padding, `ignore_index=0`) is ours."""
    rows = [{**row, "input_ids": row["input_ids"][:-1][:fixed_length]} for row in batch]
    assert all(0 not in row["input_ids"] for row in rows), "a caption holds token 0, which their loss ignores"
    ours = {k: v.to(model.device) for k, v in CapDecDataCollator(processor, noise_variance=0.0)(rows).items()}
    tokens, mask, embeds = authors_batch(
        [row["input_ids"] for row in rows], ours["clip_embeds"], fixed_length, model.config.prefix_length
    )
    was_training = model.training
    model.eval()
    with torch.no_grad():
        theirs = authors_loss(model, tokens.to(model.device), mask.to(model.device), embeds)
        torch.testing.assert_close(model(**ours).loss, theirs, atol=1e-4, rtol=1e-4)
    model.train(was_training)


def speed_suite(args: argparse.Namespace) -> None:
    """Benchmark 6: captions/s and MFU of the authors' loop and of our Trainer path, default and per option."""
    model = real_size_model(args.device, torch.float32)
    processor = word_level_processor()
    match_special_tokens(model, processor)
    corpus = caption_corpus(processor, args.corpus_size, model.config.clip_projection_dim)
    fixed_length = authors_fixed_length([len(row["input_ids"]) - 1 for row in corpus])
    longest = max(len(row["input_ids"]) for row in corpus)
    bucket_lengths = [b for b in DEFAULT_COMPILE_BUCKETS[:-1] if b < longest] + [longest]
    timed_steps = args.steps * args.repeats
    authors_batches = draw_batches(corpus, args.authors_batch_size, args.warmup_steps + timed_steps, seed=1)
    ours_batches = draw_batches(corpus, args.batch_size, args.warmup_steps + timed_steps, seed=2)
    check_authors_loss_equals_ours(model, processor, authors_batches[0], fixed_length)

    rows = [
        row
        for row in speed_rows(bucket_lengths)
        if not (row.cuda_only and not args.device.startswith("cuda"))
    ]
    if args.rows:
        rows = [row for row in rows if row.name in args.rows]
    elif args.quick:  # a check that the suite runs: the default path and one option
        rows = [row for row in rows if row.name in ("ours_default", "ours_buckets")]
    elif not args.device.startswith(
        "cuda"
    ):  # compiling the real-size model takes minutes on a CPU: ask by name
        rows = [row for row in rows if not row.options.get("torch_compile")]
    names = ["authors_loop"] + [row.name for row in rows if row.name != "authors_loop"]
    by_name = {row.name: row for row in rows}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    errors: dict[str, str] = {}
    began, interrupted = time.perf_counter(), False
    with tempfile.TemporaryDirectory() as output_dir:
        for round_index in range(args.rounds):
            # Rotate the order between rounds, so that a change in machine load does not favour one side.
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                if name in errors:
                    continue
                if interrupted or (args.budget_s and time.perf_counter() - began > args.budget_s):
                    reason = (
                        "the time limit interrupted the run"
                        if interrupted
                        else f"the {args.budget_s:.0f} s budget was spent"
                    )
                    errors.setdefault(name, f"skipped: {reason}")
                    continue
                try:
                    if name == "authors_loop":
                        warmup, timed = (
                            authors_batches[: args.warmup_steps],
                            authors_batches[args.warmup_steps :],
                        )
                        seconds[name] += run_authors(model, timed, warmup, fixed_length, args)
                    else:
                        warmup, timed = ours_batches[: args.warmup_steps], ours_batches[args.warmup_steps :]
                        seconds[name] += run_ours(
                            model, processor, timed, warmup, by_name[name], args, output_dir
                        )
                except Exception as error:  # one failing option (e.g. compilation) must not lose the others
                    errors[name] = f"{type(error).__name__}: {str(error)[:300]}"
                except KeyboardInterrupt:  # gpu.sh's step limit (SIGINT): report what was measured
                    errors[name] = "interrupted by the time limit"
                    interrupted = True  # and skip the rest
                print(f"  {name}: {seconds[name] or errors.get(name)}", flush=True)
    report_speed(model, corpus, fixed_length, names, seconds, errors, args)


def report_speed(
    model: CapDecForConditionalGeneration,
    corpus: list[dict],
    fixed_length: int,
    names: list[str],
    seconds: dict[str, list[float]],
    errors: dict[str, str],
    args: argparse.Namespace,
) -> None:
    mean_tokens = float(np.mean([len(row["input_ids"]) for row in corpus]))
    flops = training_flops_per_caption(model, mean_tokens)
    rates: dict[str, float] = {}
    spreads: dict[str, tuple[float, float]] = {}
    for name in names:
        if seconds[name]:
            batch = args.authors_batch_size if name == "authors_loop" else args.batch_size
            per_block = [args.steps * batch / value for value in seconds[name]]
            rates[name], spreads[name] = median(per_block), (min(per_block), max(per_block))
    rows = []
    for name in names:
        if name not in rates:
            rows.append({"loop": name, "error": errors.get(name, "no timing")})
            continue
        on_cuda = args.device.startswith("cuda")
        bf16 = (
            name != "authors_loop"
            and on_cuda
            and ours_options(args.device)["bf16"]
            and name != "ours_float32"
        )
        dtype = "bfloat16" if bf16 else "float32"
        batch = args.authors_batch_size if name == "authors_loop" else args.batch_size
        utilisation = mfu(rates[name], flops, peak_flops(args.device, dtype))
        row = {
            "loop": name,
            "batch": batch,
            "matmul_dtype": dtype,
            "captions_per_s": rates[name],
            "captions_per_s_min": spreads[name][0],
            "captions_per_s_max": spreads[name][1],
            "blocks": len(seconds[name]),
            "mfu": utilisation if utilisation is not None else "n/a",
            "coco_epoch_h": (COCO_CAPTIONS // batch) * batch / rates[name] / 3600,
        }
        if "authors_loop" in rates:
            row["vs_authors"] = rates[name] / rates["authors_loop"]
        if "ours_default" in rates:
            row["vs_ours_default"] = rates[name] / rates["ours_default"]
        rows.append(row)
    report(
        f"6. training captions/s, our Trainer path (batch {args.batch_size}) vs the authors' loop (batch "
        f"{args.authors_batch_size}, float32, padded to {fixed_length} tokens, unfused AdamW, loss.item() per "
        f"step); {args.steps} steps per block; model FLOPs {flops / 1e9:.1f} G/caption at {mean_tokens:.1f} "
        f"caption tokens; COCO epoch = {COCO_CAPTIONS} // batch * batch / (captions/s)",
        rows,
        args,
    )


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--suite", choices=["padding", "speed"], default="padding")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument(
        "--steps", type=int, default=3, help="timed steps per run (padding) or per block (speed)"
    )
    parser.add_argument("--warmup_steps", type=int, default=1)
    parser.add_argument("--corpus_size", type=int, default=10_000, help="captions the batches are drawn from")
    parser.add_argument(
        "--authors_batch_size", type=int, default=AUTHORS_BATCH_SIZE, help="speed: the authors' loop's batch"
    )
    parser.add_argument("--rounds", type=int, default=1, help="speed: runs of every row, in rotated order")
    parser.add_argument("--rows", nargs="+", help="speed: only these rows (the authors' loop always runs)")
    parser.add_argument(
        "--budget_s", type=float, default=0, help="speed: skip rows once this is spent (0: none)"
    )
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.steps, args.repeats = 2, 2, 1
        args.authors_batch_size = min(args.authors_batch_size, 2)
    if args.suite == "padding":
        padding_suite(args)
    else:
        speed_suite(args)


if __name__ == "__main__":
    main()
