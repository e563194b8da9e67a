"""Benchmark 3: precomputing CLIP text embeddings of a caption corpus, batched against one caption per forward.

Ours: the whole `prepare_training_dataset` call, computed afresh (a new cache folder each run): cleaning and
tokenising, CLIP text embeddings `embedding_batch_size` captions per forward, normalised, written to Arrow.
Baseline: the paper's `parse_coco` loop, one caption per CLIP forward: tokenise it (padded to CLIP's 77-token
context, as `clip.tokenize` does), `get_text_features`, normalise, append. A second baseline row tokenises
without that padding, to show how much of the gap is padding and how much is batching. A what-if row runs
`prepare_training_dataset` on the corpus sorted by caption length: batches then need almost no padding, which
shows what sorting inside `data_capdec` would buy.

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
from modeling_capdec import CapDecForConditionalGeneration, CapDecProcessor, prepare_training_dataset


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
    """Tokens CLIP processes when each batch of `batch_size` consecutive captions is padded to its longest."""
    return sum(
        max(lengths[i : i + batch_size]) * len(lengths[i : i + batch_size])
        for i in range(0, len(lengths), batch_size)
    )


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
    # What-if: the same call on the corpus sorted by length, so that batches hold captions of one length and
    # hardly any padding (prepare_training_dataset keeps the corpus order, so each batch pads to its longest).
    by_length = sorted(range(len(captions)), key=lengths.__getitem__)
    corpora = {
        "ours": Dataset.from_dict({"caption": captions}),
        "ours_sorted": Dataset.from_dict({"caption": [captions[i] for i in by_length]}),
    }
    results: dict[str, torch.Tensor] = {}

    def prepare(name: str) -> None:
        with tempfile.TemporaryDirectory() as cache_dir:
            dataset, cleaning = prepare_training_dataset(
                corpora[name],
                model,
                processor,
                embedding_batch_size=args.embedding_batch_size,
                cache_dir=cache_dir,
                overwrite_cache=True,
            )
            assert not cleaning.embeddings_from_cache
            results[name] = torch.from_numpy(dataset.with_format("numpy")[:]["clip_embeds"])

    sides = {
        "paper": lambda: results.update(paper=one_caption_per_forward(model, processor, captions, True)),
        "unpadded": lambda: results.update(
            unpadded=one_caption_per_forward(model, processor, captions, False)
        ),
        "ours": lambda: prepare("ours"),
        "ours_sorted": lambda: prepare("ours_sorted"),
    }
    prepare("ours")  # warmup: first-call allocations, thread pools
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for run in range(args.repeats):
        # Interleaved, in a rotating order, so that a change in machine load does not favour one side.
        names = list(sides)[run % len(sides) :] + list(sides)[: run % len(sides)]
        for name in names:
            seconds[name] += time_call(sides[name], args.device, repeats=1, warmup=0)

    # Speed never changes results. Batched and one-row matrix products round differently (half precision: ~1e-2).
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    unsorted = torch.empty_like(results["ours_sorted"])
    unsorted[torch.tensor(by_length)] = results["ours_sorted"]
    for embeds in (results["paper"], results["unpadded"], unsorted):
        torch.testing.assert_close(results["ours"], embeds, atol=tolerance, rtol=0)

    tokens = {
        "paper": len(lengths) * processor.clip_max_length,
        "unpadded": sum(lengths),
        "ours": batch_tokens(lengths, args.embedding_batch_size),
        "ours_sorted": batch_tokens(sorted(lengths), args.embedding_batch_size),
    }
    labels = {
        "paper": "paper loop: 1 caption/forward, padded to 77",
        "unpadded": "1 caption/forward, unpadded",
        "ours": f"prepare_training_dataset, batch {args.embedding_batch_size}",
        "ours_sorted": "what-if: the same on a length-sorted corpus",
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
