"""Does projecting the image embedding onto the text memory help? Captions of the shapes world's test splits by a
trained demo model, with `project_to_memory` off and at a few temperatures τ.

The memory holds the CLIP text embeddings of the distinct `train_text` captions (at most `--memory_size`, a seeded
sample), attached in memory to the model (the folder is not changed). Decoding is the demo's: greedy, at most 24
new tokens; scores are the COCO caption toolkit's, as in `python -m demo.run_demo`.

    python -m demo.run_demo --full                # trains demo_outputs/runs/eps_0.004 among others
    python -m demo.memory_projection_study --run demo_outputs/runs/eps_0.004 --temperatures 0.01 0.03 0.1
"""

import argparse
import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SPLITS = ("test_seen", "test_heldout")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run", required=True, help="a trained CapDec folder (e.g. demo_outputs/runs/eps_0.004)"
    )
    parser.add_argument("--world", default=str(REPO / "demo_outputs" / "world"))
    parser.add_argument("--memory_size", type=int, default=50_000)
    parser.add_argument(
        "--temperatures", type=float, nargs="*", default=[0.01, 0.03, 0.1], help="none: projection off only"
    )
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from datasets import load_from_disk

    from demo.run_demo import METRICS, score
    from modeling_capdec import CapDecForConditionalGeneration, CapDecProcessor
    from modeling_capdec.evaluation.captioning import caption_images
    from modeling_capdec.training.text_memory import text_memory_from_captions

    world = load_from_disk(args.world)
    model = CapDecForConditionalGeneration.from_pretrained(args.run).eval()
    processor = CapDecProcessor.from_pretrained(args.run)
    with torch.inference_mode():
        memory = text_memory_from_captions(
            world["train_text"]["caption"][:], model, processor, args.memory_size, args.seed
        )
    model.set_text_memory(memory)
    print(f"memory: {memory.shape[0]} distinct train_text captions; run: {args.run}")
    images = {split: world[split]["image"][:] for split in SPLITS}
    settings = {"off": {}} | {
        f"τ = {t:g}": {"project_to_memory": True, "memory_temperature": t} for t in args.temperatures
    }
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, memory_kwargs in settings.items():
        results[name] = {}
        for split in SPLITS:
            captions = caption_images(
                model,
                processor,
                images[split],
                batch_size=args.batch_size,
                max_new_tokens=24,
                **memory_kwargs,
            )
            results[name][split] = score(captions, world[split]["captions"][:])
    lines = [
        "| projection | split | " + " | ".join(METRICS) + " | exact match |",
        "|" + "---|" * (len(METRICS) + 3),
    ]
    for name, by_split in results.items():
        for split, metrics in by_split.items():
            values = " | ".join(f"{metrics[m]:.3f}" for m in METRICS)
            lines.append(f"| {name} | {split} | {values} | {metrics['exact']:.2f} |")
    print("\n".join(lines))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
