"""Benchmark 6: LoRA against full fine-tuning of the decoder: trainable parameters, peak memory, step time.

The real-size model of the other benchmarks (CLIP ViT-B/32 + GPT-2 124M + the paper's 8-layer transformer
mapper, random weights: memory and speed do not depend on weight values) trains on precomputed noised CLIP text
embeddings, as `train_capdec.py` does, with AdamW over the trainable parameters. Three sides, each in its own
fresh process so that its peak resident memory (VmHWM) is its own:

- `full`: mapper + decoder trained (the paper's default);
- `lora`: mapper trained, LoRA adapters (rank `--lora_r`) on every Linear/Conv1D layer of the decoder but its
  LM head (`train_capdec.py --lora_r`), decoder weights frozen;
- `mapper_only`: the decoder frozen (`--no_train_decoder`, the paper's only_prefix), for reference.

    python -m benchmarks.bench_lora                 # batch 8, 5 timed steps, median of 3
    python -m benchmarks.bench_lora --quick
"""

import json
import subprocess
import sys
import time

import torch

from benchmarks.common import base_parser, machine_description, median, real_size_model, synchronize

SIDES = ("full", "lora", "mapper_only")
CAPTION_TOKENS = 12  # about the mean GPT-2 length of a COCO caption with its eos


def peak_rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_side(
    side: str, batch_size: int, steps: int, warmup: int, repeats: int, lora_r: int, device: str
) -> dict:
    """Train `warmup + steps * repeats` steps of one side; report its parameters, memory and step time."""
    model = real_size_model(device)
    model.config.train_decoder = side != "mapper_only"
    model.decoder.requires_grad_(model.config.train_decoder)
    if side == "lora":
        from modeling_capdec.training.lora import apply_lora

        model = apply_lora(model, r=lora_r)
    model.train()
    trainable = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    clip_dim, vocab = model.config.clip_projection_dim, model.config.text_config.vocab_size

    def step() -> None:
        clip_embeds = torch.nn.functional.normalize(
            torch.randn(batch_size, clip_dim, generator=generator), dim=-1
        )
        input_ids = torch.randint(0, vocab, (batch_size, CAPTION_TOKENS), generator=generator)
        loss = model(
            input_ids=input_ids.to(device), clip_embeds=clip_embeds.to(device), labels=input_ids.to(device)
        ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        seconds.append((time.perf_counter() - start) / steps)
    optimizer_bytes = sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value)
    )
    return {
        "side": side,
        "trainable_params_M": sum(p.numel() for p in trainable) / 1e6,
        "total_params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "optimizer_state_MiB": optimizer_bytes / 2**20,
        "peak_rss_MiB": peak_rss_mib(),
        "step_s": median(seconds),
    }


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument(
        "--side", choices=SIDES, help="(internal) run one side in this process, print its row"
    )
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.steps, args.warmup_steps, args.repeats = 2, 1, 1, 1
    if args.side:
        row = run_side(
            args.side, args.batch_size, args.steps, args.warmup_steps, args.repeats, args.lora_r, args.device
        )
        print(json.dumps(row))
        return
    rows = []
    for side in SIDES:
        command = [sys.executable, "-m", "benchmarks.bench_lora", "--side", side, *sys.argv[1:]]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"side {side} failed:\n{result.stderr[-3000:]}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(
        f"\n## LoRA vs full fine-tuning ({machine_description(args.device)}, {torch.get_num_threads()} threads, "
        f"batch {args.batch_size}, {CAPTION_TOKENS} caption tokens + prefix 40, median of {args.repeats})"
    )
    for row in rows:
        print(
            "  " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        )
    if args.output:
        with open(args.output, "a") as output:
            output.write(json.dumps({"benchmark": "lora", "args": vars(args), "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
