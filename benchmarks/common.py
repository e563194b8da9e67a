"""Shared pieces of the benchmarks: real-size random models, timing, and result tables."""

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from transformers import CLIPConfig, GPT2Config

from modeling_capdec import CapDecConfig, CapDecForConditionalGeneration


def real_size_model(
    device: str = "cpu", dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa", seed: int = 0
) -> CapDecForConditionalGeneration:
    """CLIP ViT-B/32 (`CLIPConfig` defaults) + GPT-2 124M (`GPT2Config` defaults) + the paper's transformer mapper
    (prefix 40, clip_length 40, 8 layers), random weights: speed does not depend on weight values."""
    torch.manual_seed(seed)
    config = CapDecConfig(
        clip_config=CLIPConfig().to_dict(),
        text_config=GPT2Config().to_dict(),
        mapping_type="transformer",
        prefix_length=40,
        clip_length=40,
        num_mapping_layers=8,
    )
    config._attn_implementation = attn_implementation
    model = CapDecForConditionalGeneration(config)
    return model.to(device=device, dtype=dtype).eval()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: str, repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine_description(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a check that it runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--output", help="append the results as one JSON line to this file")
    return parser


def report(name: str, rows: list[dict], args: argparse.Namespace) -> None:
    """Print a table and optionally append a JSON record."""
    print(f"\n## {name}  ({machine_description(args.device)}, {args.dtype}, median of {args.repeats})")
    for row in rows:
        print(
            "  " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        )
    if args.output:
        with open(args.output, "a") as handle:
            handle.write(
                json.dumps(
                    {
                        "benchmark": name,
                        "device": machine_description(args.device),
                        "dtype": args.dtype,
                        "quick": args.quick,
                        "rows": rows,
                    }
                )
                + "\n"
            )
