"""Benchmark 5: peak memory of the training data, memory-mapped Arrow against one pickle loaded into RAM.

A COCO-size text corpus (566,747 captions, synthetic, COCO-like lengths) with 512-d float32 CLIP embeddings
(a tiny random CLIP with ViT-B/32's projection size: the embedding values do not change the memory).

- Ours: what `prepare_training_dataset` produces, loaded again from its cache as a training run does: Arrow
  files that are memory-mapped, so only the pages that batches touch come into memory.
- Baseline: the original code's data: one `torch.save`d `{"clip_embedding": (N, 512) tensor, "captions": [...]}`
  file loaded whole into RAM (`torch.load(weights_only=True)`: no arbitrary unpickling), plus the caption
  token tensors built in RAM, one int64 tensor per caption.

Each side runs in its own fresh process: it loads its data, then draws `num_batches` random batches of
`batch_size` through a `DataLoader` with `CapDecDataCollator` (no model forward), and reports its peak resident
memory (VmHWM) and, at the end, the anonymous (RssAnon) and file-backed (RssFile) parts of its resident memory.
File-backed pages of a memory-mapped file are clean page cache: shared between processes and dropped under
memory pressure. Random rows fault in the kernel's read-around window around each (`read_ahead_kb`), so after
thousands of random rows they can cover most of the file: the anonymous part is what the data needs for itself.
The corpus is built once and kept under `benchmarks/.cache/` (git-ignored); its build time is reported.

    python -m benchmarks.bench_memory            # 566,747 captions (first run builds the corpus)
    python -m benchmarks.bench_memory --quick    # 20,000 captions, one run per side
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import DataLoader, RandomSampler
from transformers import CLIPConfig, GPT2Config

from benchmarks.captions import CLIP_CONTEXT, synthetic_captions, word_level_processor
from benchmarks.common import base_parser, median, report
from modeling_capdec import (
    CapDecConfig,
    CapDecDataCollator,
    CapDecForConditionalGeneration,
    CapDecProcessor,
    load_dataset_source,
    prepare_training_dataset,
)

COCO_TRAIN_CAPTIONS = 566_747  # Karpathy train split captions
CACHE_ROOT = Path(__file__).parent / ".cache"
PROJECTION_DIM = 512  # CLIP ViT-B/32's embedding size
BUILD_BATCH_SIZE = 1024


def tiny_clip_model(processor: CapDecProcessor) -> CapDecForConditionalGeneration:
    """A small random CLIP (2 layers, width 64) with a 512-d projection, and a tiny GPT-2: the embeddings have
    ViT-B/32's size while building 566k of them stays cheap. Seeded, so every process builds the same weights
    and finds the same cache files."""
    clip_tokenizer = processor.clip_tokenizer
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    clip_config = CLIPConfig(
        text_config=dict(
            vocab_size=len(clip_tokenizer),
            max_position_embeddings=CLIP_CONTEXT,
            eos_token_id=clip_tokenizer.eos_token_id,
            bos_token_id=clip_tokenizer.bos_token_id,
            pad_token_id=clip_tokenizer.pad_token_id,
            **small,
        ),
        vision_config=dict(image_size=32, patch_size=8, **small),
        projection_dim=PROJECTION_DIM,
    )
    eos = processor.tokenizer.eos_token_id
    text_config = GPT2Config(
        vocab_size=len(processor.tokenizer),
        n_positions=128,
        n_embd=32,
        n_layer=1,
        n_head=2,
        eos_token_id=eos,
        bos_token_id=eos,
    )
    config = CapDecConfig(
        clip_config=clip_config, text_config=text_config, mapping_type="mlp", prefix_length=4, clip_length=4
    )
    torch.manual_seed(0)
    return CapDecForConditionalGeneration(config).eval()


def corpus_dir(num_captions: int) -> Path:
    return CACHE_ROOT / f"memory-{num_captions}"


def load_prepared(folder: Path) -> tuple[Dataset, CapDecProcessor, bool]:
    """The training dataset as a training run gets it: `prepare_training_dataset` on the caption file.
    Returns it, the processor and whether the embeddings came from the cache."""
    processor = word_level_processor()
    model = tiny_clip_model(processor)
    source = load_dataset_source(folder / "captions.parquet", cache_dir=str(folder / "hf"))
    dataset, cleaning = prepare_training_dataset(
        source, model, processor, embedding_batch_size=BUILD_BATCH_SIZE, cache_dir=folder / "capdec"
    )
    return dataset, processor, cleaning.embeddings_from_cache


def build_corpus(num_captions: int) -> float:
    """Write the captions, run `prepare_training_dataset` (CLIP embeddings into the Arrow cache) and save the
    original-style pickle from the same embeddings. Returns the seconds the embedding stage took (0 if cached)."""
    folder = corpus_dir(num_captions)
    folder.mkdir(parents=True, exist_ok=True)
    captions_file = folder / "captions.parquet"
    if not captions_file.exists():
        Dataset.from_dict({"caption": synthetic_captions(num_captions)}).to_parquet(str(captions_file))
    start = time.perf_counter()
    dataset, _, from_cache = load_prepared(folder)
    build_seconds = 0.0 if from_cache else time.perf_counter() - start
    pickle_file = folder / "original.pt"
    if not pickle_file.exists():
        # parse_coco's layout: all embeddings in one tensor, each caption pointing at its row.
        captions = Dataset.from_parquet(str(captions_file))["caption"]
        embeddings = torch.from_numpy(np.asarray(dataset.with_format("numpy")[:]["clip_embeds"]))
        records = [{"caption": caption, "clip_embedding": index} for index, caption in enumerate(captions)]
        torch.save({"clip_embedding": embeddings, "captions": records}, pickle_file)
    return build_seconds


class InMemoryCaptions(torch.utils.data.Dataset):
    """The original code's dataset: embeddings and caption token tensors all held in RAM."""

    def __init__(self, pickle_file: Path, processor: CapDecProcessor, chunk_size: int = 10_000):
        data = torch.load(pickle_file, weights_only=True)
        self.embeddings = data["clip_embedding"]
        self.caption_to_embedding = [record["clip_embedding"] for record in data["captions"]]
        texts = [record["caption"] for record in data["captions"]]
        eos = processor.tokenizer.eos_token_id
        # One int64 tensor per caption, as the original; tokenised in chunks so that the tokenizer's temporary
        # lists do not inflate the baseline's peak beyond what the original's one-by-one loop needed.
        self.tokens: list[torch.Tensor] = []
        for start in range(0, len(texts), chunk_size):
            ids = processor.tokenizer(texts[start : start + chunk_size], add_special_tokens=False)[
                "input_ids"
            ]
            self.tokens.extend(torch.tensor(row + [eos], dtype=torch.int64) for row in ids)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict:
        embedding = self.embeddings[self.caption_to_embedding[index]]
        return {"input_ids": self.tokens[index], "clip_embeds": embedding, "example_id": index}


def memory_status() -> dict[str, float]:
    """Peak and current resident memory of this process, MiB, from /proc/self/status."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
            fields[key] = int(value.split()[0]) / 1024  # kB
    return fields


def measure_side(side: str, num_captions: int, num_batches: int, batch_size: int) -> dict:
    """Run in a fresh process: load one side's data, iterate the batches, report memory and times."""
    baseline_rss = memory_status()["VmRSS"]  # interpreter + torch + transformers + datasets imports
    folder = corpus_dir(num_captions)
    start = time.perf_counter()
    if side == "mmap":
        dataset, processor, from_cache = load_prepared(folder)
        if not from_cache:
            raise RuntimeError(f"{folder} has no cached embeddings: the memory run must not build them.")
    else:
        processor = word_level_processor()
        dataset = InMemoryCaptions(folder / "original.pt", processor)
    load_seconds = time.perf_counter() - start
    after_load = memory_status()
    collator = CapDecDataCollator(processor, noise_variance=0.016, seed=0)
    sampler = RandomSampler(
        dataset, num_samples=num_batches * batch_size, generator=torch.Generator().manual_seed(0)
    )
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collator)
    start = time.perf_counter()
    rows = 0
    for batch in loader:
        rows += batch["clip_embeds"].shape[0]
    if rows != num_batches * batch_size:
        raise RuntimeError(f"iterated {rows} rows, expected {num_batches * batch_size}")
    return {
        "side": side,
        "imports_rss_mib": baseline_rss,
        "after_load_rss_mib": after_load["VmRSS"],
        "load_s": load_seconds,
        "iterate_s": time.perf_counter() - start,
        **{f"{key}_mib": value for key, value in memory_status().items()},
    }


def run_side(side: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "benchmarks.bench_memory", "--side", side, "--num_captions"]
    command += [
        str(args.num_captions),
        "--num_batches",
        str(args.num_batches),
        "--batch_size",
        str(args.batch_size),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"the {side} process failed:\n{finished.stderr[-4000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--num_captions", type=int, default=COCO_TRAIN_CAPTIONS)
    parser.add_argument("--num_batches", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=40)
    parser.add_argument(
        "--side", choices=["mmap", "pickle"], help=argparse.SUPPRESS
    )  # set in the child process
    args = parser.parse_args()
    if args.quick:
        args.num_captions, args.repeats = 20_000, 1
    if args.side:
        print(json.dumps(measure_side(args.side, args.num_captions, args.num_batches, args.batch_size)))
        return
    build_seconds = build_corpus(args.num_captions)
    runs: dict[str, list[dict]] = {"pickle": [], "mmap": []}
    for _ in range(args.repeats):
        for side in runs:
            runs[side].append(run_side(side, args))
    rows = []
    for side, results in runs.items():
        row = {"data": {"pickle": "one pickle in RAM (original)", "mmap": "memory-mapped Arrow (ours)"}[side]}
        for key in results[0]:
            if key != "side":
                row[key] = median([result[key] for result in results])
        rows.append(row)
    embeddings_mib = args.num_captions * PROJECTION_DIM * 4 / 2**20
    rows.append(
        {
            "peak_ratio_mmap/pickle": rows[1]["VmHWM_mib"] / rows[0]["VmHWM_mib"],
            # File-backed pages are clean page cache of the Arrow file: shared, and dropped under memory pressure
            # (random rows fault in the kernel's read-around window, so they can add up to the whole file).
            # Anonymous memory is what the data needs for itself.
            "anon_ratio_mmap/pickle": rows[1]["RssAnon_mib"] / rows[0]["RssAnon_mib"],
            "embeddings_mib": embeddings_mib,
            "embedding_build_s": build_seconds if build_seconds else "cached",
        }
    )
    report(
        f"5. training-data peak RSS, {args.num_captions} captions, {args.num_batches} batches of "
        f"{args.batch_size}: memory-mapped Arrow vs one pickle in RAM",
        rows,
        args,
    )


if __name__ == "__main__":
    main()
