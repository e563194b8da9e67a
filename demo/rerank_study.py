"""Does letting CLIP choose among beam candidates help? Captions of the shapes world's test splits by trained demo
models: greedy (the demo's decoding), beam search's best, and CLIP reranking of the beams (`clip_rerank`).

Each `--runs` folder is captioned three ways, at most 24 new tokens: greedy; beam search with `num_beams=K`, its
best beam; and `clip_rerank=K`, the same K beams, of which the pipeline keeps the caption whose CLIP text embedding
is nearest the image's. Scores are the COCO caption toolkit's, as in `python -m demo.run_demo`. Folders that
differ only in a `_seedN` suffix are one configuration: its rows give mean ± std over them.

    python -m demo.run_demo --full    # trains demo_outputs/runs/eps_auto_map_shape_seed0 among others
    python -m demo.rerank_study --runs demo_outputs/runs/eps_auto_map_shape_seed{0,1,2} --candidates 5
"""

import argparse
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPLITS = ("test_seen", "test_heldout")
MAX_NEW_TOKENS = 24


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", nargs="+", required=True, help="trained CapDec folders")
    parser.add_argument("--world", default=str(REPO / "demo_outputs" / "world"))
    parser.add_argument(
        "--candidates", type=int, default=5, help="K: beams, and candidates CLIP chooses from"
    )
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--output", default=None, help="also write the scores as JSON here")
    args = parser.parse_args(argv)
    if args.candidates < 2:
        parser.error(f"--candidates must be at least 2, got {args.candidates}")
    missing = [run for run in args.runs if not (Path(run) / "config.json").is_file()]
    if missing:
        parser.error(f"not a trained CapDec folder (no config.json): {', '.join(missing)}")
    return args


def configuration(run: str) -> tuple[str, int]:
    """`eps_auto_seed2` -> (`eps_auto`, 2); a folder without a seed suffix is seed 0."""
    name = Path(run).name
    match = re.fullmatch(r"(.+)_seed(\d+)", name)
    return (match.group(1), int(match.group(2))) if match else (name, 0)


def decodings(candidates: int) -> dict[str, dict]:
    return {
        "greedy": {},
        f"beam {candidates}": {"num_beams": candidates},
        f"clip_rerank {candidates}": {"clip_rerank": candidates},
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from datasets import load_from_disk

    from demo.run_demo import mean_and_std, results_table, score_sets
    from modeling_capdec import CapDecForConditionalGeneration, CapDecImageToTextPipeline, CapDecProcessor

    world = load_from_disk(args.world)
    images = {split: world[split]["image"][:] for split in SPLITS}
    references = {split: world[split]["captions"][:] for split in SPLITS}
    captions: dict[tuple[str, int], dict[str, list[str]]] = {}
    for run in args.runs:
        name, seed = configuration(run)
        print(f"captioning {run} ...", flush=True)
        # This package's pipeline, not the folder's copy of the code (a folder saved before clip_rerank lacks it).
        captioner = CapDecImageToTextPipeline(
            model=CapDecForConditionalGeneration.from_pretrained(run).eval(),
            processor=CapDecProcessor.from_pretrained(run),
        )
        for decoding, kwargs in decodings(args.candidates).items():
            captions[(f"{name}, {decoding}", seed)] = {
                split: [
                    output[0]["generated_text"]
                    for output in captioner(
                        split_images, batch_size=args.batch_size, max_new_tokens=MAX_NEW_TOKENS, **kwargs
                    )
                ]
                for split, split_images in images.items()
            }
    per_seed: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    for split in SPLITS:  # one start of the toolkit's Java per split
        sets = {key: by_split[split] for key, by_split in captions.items()}
        for (row, seed), metrics in score_sets(sets, references[split]).items():
            per_seed.setdefault(row, {}).setdefault(seed, {})[split] = metrics
    means, stds = mean_and_std(per_seed)
    print(results_table(means, stds))
    if args.output:
        Path(args.output).write_text(json.dumps({"mean": means, "std": stds, "per_seed": per_seed}, indent=1))
    return {"mean": means, "std": stds, "per_seed": per_seed}


if __name__ == "__main__":
    main()
