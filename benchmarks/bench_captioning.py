"""Benchmarks 1 and 2: batched cached captioning against the paper's loop, and against the teacher-forced limit.

1. Captioning N images (greedy, and beam 5), max 20 new tokens: `model.generate` on the whole batch against the
   original code's decoding (one image at a time, decoder re-run over the whole sequence each step, no cache).
2. Batched greedy `generate` against one teacher-forced forward pass over the same final sequences.

    python -m benchmarks.bench_captioning            # 32 images, CLIP ViT-B/32 + GPT-2 124M, random weights
    python -m benchmarks.bench_captioning --quick    # 2 images, 4 tokens, beam 2, one run
    python -m benchmarks.bench_captioning --cache static   # static KV cache: on CUDA, generate compiles the
                                                           # decoder step (torch.compile, CUDA graphs)
"""

import torch

from benchmarks.common import base_parser, median, real_size_model, report, time_call
from benchmarks.reference_loops import uncached_beam_search, uncached_greedy


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--num_images", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=20)
    parser.add_argument("--num_beams", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder and the mapper")
    parser.add_argument(
        "--cache",
        choices=["dynamic", "static"],
        default="dynamic",
        help="generate's KV cache; with 'static' transformers compiles the decoding step on CUDA",
    )
    args = parser.parse_args()
    if args.quick:
        args.num_images, args.max_new_tokens, args.num_beams, args.repeats = 2, 4, 2, 1
    dtype = getattr(torch, args.dtype)
    model = real_size_model(args.device, dtype)
    if args.compile:
        model.decoder.forward = torch.compile(model.decoder.forward, dynamic=True)
        model.clip_project.forward = torch.compile(model.clip_project.forward)
    if args.cache == "static":
        model.generation_config.cache_implementation = "static"
    image_size = model.config.clip_config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(args.num_images, 3, image_size, image_size, generator=generator)
    pixel_values = pixel_values.to(args.device, dtype)
    # min_new_tokens keeps every caption at full length, so both sides do the same number of steps.
    tokens = args.max_new_tokens
    fast = dict(max_new_tokens=tokens, min_new_tokens=tokens)

    def batched_greedy():
        return model.generate(pixel_values=pixel_values, do_sample=False, **fast)

    def batched_beam():
        return model.generate(pixel_values=pixel_values, num_beams=args.num_beams, do_sample=False, **fast)

    no_eos = -1  # the baselines never stop early either
    rows = []
    t_fast = median(time_call(batched_greedy, args.device, args.repeats))
    t_slow = median(
        time_call(
            lambda: uncached_greedy(model, pixel_values, tokens, no_eos), args.device, args.repeats, warmup=0
        )
    )
    rows.append({"decoding": "greedy", "baseline_s": t_slow, "ours_s": t_fast, "speedup": t_slow / t_fast})
    t_fast_beam = median(time_call(batched_beam, args.device, args.repeats))
    t_slow_beam = median(
        time_call(
            lambda: uncached_beam_search(model, pixel_values, args.num_beams, tokens, no_eos),
            args.device,
            args.repeats,
            warmup=0,
        )
    )
    rows.append(
        {
            "decoding": f"beam{args.num_beams}",
            "baseline_s": t_slow_beam,
            "ours_s": t_fast_beam,
            "speedup": t_slow_beam / t_fast_beam,
        }
    )
    report(
        f"1. captioning {args.num_images} images, {tokens} tokens: batched+cached ({args.cache} cache) vs paper loop",
        rows,
        args,
    )

    # 2. distance to the limit: one teacher-forced forward over the final sequences (prefix + caption),
    # timed next to generate again so that both sides see the same machine load.
    sequences = batched_greedy()

    def teacher_forced():
        with torch.no_grad():
            model(pixel_values=pixel_values, input_ids=sequences)

    t_limit = median(time_call(teacher_forced, args.device, args.repeats))
    t_fast = median(time_call(batched_greedy, args.device, args.repeats, warmup=0))
    report(
        f"2. batched greedy generate ({args.cache} cache) vs one teacher-forced forward",
        [{"generate_s": t_fast, "forward_s": t_limit, "ratio": t_fast / t_limit}],
        args,
    )


if __name__ == "__main__":
    with torch.inference_mode():
        main()
