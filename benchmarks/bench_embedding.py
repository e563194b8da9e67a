"""Benchmark 3: precomputing CLIP text embeddings of a caption corpus, batched against one caption per forward.

Ours: the whole `prepare_training_dataset` call, computed afresh (a new cache folder each run): cleaning and
tokenising, CLIP text embeddings `embedding_batch_size` captions per forward (captions of like length batched
together, so each forward pads little), normalised, written to Arrow in corpus order.
Baseline: the paper's `parse_coco` loop, one caption per CLIP forward: tokenise it (padded to CLIP's 77-token
context, as `clip.tokenize` does), `get_text_features`, normalise, append. A second baseline row tokenises
without that padding, to show how much of the gap is padding and how much is batching.

Both sides use the real-size CLIP ViT-B/32 text tower (random weights) and give the same embeddings, which the
script asserts.

    python -m benchmarks.bench_embedding            # 1024 captions
    python -m benchmarks.bench_embedding --quick    # 64 captions, one run
"""

import tempfile

import torch
import torch.nn.functional as F
from datasets import Dataset

from benchmarks.captions import match_special_tokens, synthetic_captions, word_level_processor
from benchmarks.common import base_parser, median, real_size_model, report, time_call
from modeling_capdec import CapDecForConditionalGeneration, CapDecProcessor
from modeling_capdec.training.data import LENGTH_SORT_WINDOW, prepare_training_dataset


@torch.no_grad()
def one_caption_per_forward(
    model: CapDecForConditionalGeneration,
    processor: CapDecProcessor,
    captions: list[str],
    pad_to_context: bool,
) -> torch.Tensor:
    """The paper's precompute loop: `(num_captions, projection_dim)` normalised CLIP text embeddings."""
    device = model.clip.device
    embeds = []
    for caption in captions:
        clip_inputs = processor(clip_text=caption, padding="max_length" if pad_to_context else True).to(
            device
        )
        features = model.clip.get_text_features(
            input_ids=clip_inputs["clip_input_ids"], attention_mask=clip_inputs["clip_attention_mask"]
        )
        if not isinstance(features, torch.Tensor):  # transformers 5 returns an output object
            features = features.pooler_output
        embeds.append(F.normalize(features.float(), dim=-1).cpu())
    return torch.cat(embeds)


def batch_tokens(lengths: list[int], batch_size: int) -> int:
    """Tokens CLIP processes in `prepare_training_dataset`: each window of `LENGTH_SORT_WINDOW` batches is
    sorted by length, and each batch of `batch_size` is padded to its longest."""
    window = batch_size * LENGTH_SORT_WINDOW
    tokens = 0
    for begin in range(0, len(lengths), window):
        sorted_lengths = sorted(lengths[begin : begin + window])
        for i in range(0, len(sorted_lengths), batch_size):
            tokens += max(sorted_lengths[i : i + batch_size]) * len(sorted_lengths[i : i + batch_size])
    return tokens


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--num_captions", type=int, default=1024)
    parser.add_argument("--embedding_batch_size", type=int, default=256)
    args = parser.parse_args()
    if args.quick:
        args.num_captions, args.repeats = 64, 1
    dtype = getattr(torch, args.dtype)
    model = real_size_model(args.device, dtype)
    processor = word_level_processor()
    match_special_tokens(model, processor)
    captions = synthetic_captions(args.num_captions)
    lengths = [len(ids) for ids in processor.clip_tokenizer(captions)["input_ids"]]
    corpus = Dataset.from_dict({"caption": captions})
    results: dict[str, torch.Tensor] = {}

    def prepare() -> None:
        with tempfile.TemporaryDirectory() as cache_dir:
            dataset, cleaning = prepare_training_dataset(
                corpus,
                model,
                processor,
                embedding_batch_size=args.embedding_batch_size,
                cache_dir=cache_dir,
                overwrite_cache=True,
            )
            assert not cleaning.embeddings_from_cache
            results["ours"] = torch.from_numpy(dataset.with_format("numpy")[:]["clip_embeds"])

    sides = {
        "paper": lambda: results.update(paper=one_caption_per_forward(model, processor, captions, True)),
        "unpadded": lambda: results.update(
            unpadded=one_caption_per_forward(model, processor, captions, False)
        ),
        "ours": prepare,
    }
    prepare()  # warmup: first-call allocations, thread pools
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for run in range(args.repeats):
        # Interleaved, in a rotating order, so that a change in machine load does not favour one side.
        names = list(sides)[run % len(sides) :] + list(sides)[: run % len(sides)]
        for name in names:
            seconds[name] += time_call(sides[name], args.device, repeats=1, warmup=0)

    # Speed never changes results. Batched and one-row matrix products round differently (half precision: ~1e-2).
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for embeds in (results["paper"], results["unpadded"]):
        torch.testing.assert_close(results["ours"], embeds, atol=tolerance, rtol=0)

    tokens = {
        "paper": len(lengths) * processor.clip_max_length,
        "unpadded": sum(lengths),
        "ours": batch_tokens(lengths, args.embedding_batch_size),
    }
    labels = {
        "paper": "paper loop: 1 caption/forward, padded to 77",
        "unpadded": "1 caption/forward, unpadded",
        "ours": f"prepare_training_dataset, batch {args.embedding_batch_size}",
    }
    t = {name: median(values) for name, values in seconds.items()}
    rows = [
        {
            "side": labels[name],
            "seconds": t[name],
            "captions_per_s": args.num_captions / t[name],
            "clip_tokens_per_caption": tokens[name] / args.num_captions,
            "speedup_vs_paper": t["paper"] / t[name],
            "speedup_vs_unpadded": t["unpadded"] / t[name],
        }
        for name in sides
    ]
    report(
        f"3. CLIP text embeddings of {args.num_captions} captions (real captions average "
        f"{sum(lengths) / len(lengths):.1f} CLIP tokens): batched prepare_training_dataset vs one caption per forward",
        rows,
        args,
    )


if __name__ == "__main__":
    main()
