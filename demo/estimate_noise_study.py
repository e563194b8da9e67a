"""Which way of choosing ε from data predicts the shapes world's noise sweep?

Each estimator of `modeling_capdec.training.noise_estimate` computes ε before any training, from the CLIP
embeddings of the world's caption corpus (`train_text`, grouped into scenes by its `objects` column) and, for the
image estimators, of unlabelled images of the domain (the `train_pairs` images, their captions unused). The table
compares each ε with the sweep measured by `python -m demo.run_demo --full` (CIDEr on `test_seen` per ε); the
estimator whose ε falls closest to the sweep's peak (in log scale) is the one to keep. A "pairs" row applies the
same rule with the true matched image-caption cosine, which text-only training does not have: it tells whether the
rule or the estimate is off.

    python -m demo.estimate_noise_study                                  # the README's sweep, current tiny CLIP
    python -m demo.estimate_noise_study --sweep demo_outputs/results.json --clip demo/tiny_clip

Rerun it (with `--sweep` from a new `run_demo --full`) after the tiny CLIP changes: the sweep belongs to a CLIP.
"""

import argparse
import json
import math
import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
# CIDEr on test_seen per ε of the README's demo table (the ResNet tiny CLIP, 2026-11-30, means of three seeds,
# 2000 steps). Pass --sweep for another run's results.json.
README_SWEEP = {0.0: 3.536, 0.001: 5.651, 0.004: 6.819, 0.016: 7.137, 0.064: 6.576}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world", default=str(REPO / "demo_outputs" / "world"), help="built here if missing")
    parser.add_argument("--clip", default=str(REPO / "demo" / "tiny_clip"))
    parser.add_argument(
        "--sweep", default=None, help="a run_demo --full results.json (default: the README's)"
    )
    parser.add_argument("--num_images", type=int, default=1000, help="unlabelled train_pairs images used")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def read_sweep(path: str | None) -> dict[float, float]:
    """CIDEr on test_seen per ε: the README's, or the `eps=...` runs of a run_demo results.json.

    Example:
        >>> read_sweep(None)[0.016]
        7.137
    """
    if path is None:
        return dict(README_SWEEP)
    results = json.loads(Path(path).read_text())["results"]
    sweep = {
        float(name[4:]): runs["test_seen"]["CIDEr"]
        for name, runs in results.items()
        if re.fullmatch(r"eps=[0-9.e+-]+", name)  # the fixed-ε runs (not eps=auto, nor its memory variant)
    }
    if len(sweep) < 2:
        raise ValueError(f"{path} holds fewer than two eps=... runs: run `python -m demo.run_demo --full`.")
    return sweep


def nearest_sweep_point(epsilon: float, sweep: dict[float, float]) -> float:
    """The swept ε closest to `epsilon` in log scale (ε = 0 counts as 10x below the smallest positive one).

    Example:
        >>> nearest_sweep_point(0.003, {0.0: 1.0, 0.001: 2.0, 0.004: 3.0})
        0.004
    """
    positive = sorted(e for e in sweep if e > 0)
    floor = positive[0] / 10

    def log(value: float) -> float:
        return math.log10(max(value, floor))

    return min(sweep, key=lambda point: abs(log(point) - log(epsilon)))


def study(args: argparse.Namespace) -> list[dict]:
    """Every estimator's ε on the world, and the pairs reference, as table rows."""
    from demo.run_demo import build_world
    from demo.tiny_clip_model import embed_images, embed_texts, load_tiny_clip
    from modeling_capdec.training.noise_estimate import (
        ESTIMATORS,
        corpus_caption_groups,
        estimate_noise,
        variance_from_cosine,
    )

    world = build_world(Path(args.world), smoke=False, seed=args.seed)
    clip, processor = load_tiny_clip(args.clip)
    captions, groups = corpus_caption_groups(
        world["train_text"], "caption", group_column="objects", seed=args.seed
    )
    pairs = world["train_pairs"].select(range(min(args.num_images, world["train_pairs"].num_rows)))
    with torch.inference_mode():
        text_embeds = embed_texts(clip, processor, captions)
        image_embeds = embed_images(clip, processor, pairs["image"][:])
        own_caption_embeds = embed_texts(clip, processor, pairs["caption"][:])
    rows = []
    for estimator in ESTIMATORS:
        estimate = estimate_noise(text_embeds, image_embeds, groups, estimator)
        needs = "corpus only" if estimator == "caption_groups" else f"{estimate.num_images} unlabelled images"
        rows.append(
            {
                "estimator": estimator,
                "needs": needs,
                "cosine": estimate.cosine,
                "epsilon": estimate.noise_variance,
            }
        )
    matched = float((image_embeds * own_caption_embeds).sum(-1).mean())
    rows.append(
        {
            "estimator": "pairs (reference)",
            "needs": f"{len(pairs)} image-caption pairs",
            "cosine": matched,
            "epsilon": variance_from_cosine(matched, text_embeds.shape[-1]),
        }
    )
    print(
        f"{len(captions)} captions in {len(set(groups))} scenes, {len(pairs)} images, d = {text_embeds.shape[-1]}"
    )
    return rows


def table(rows: list[dict], sweep: dict[float, float]) -> str:
    """The study's table: each estimate, the nearest swept ε and its CIDEr, and the peak's."""
    peak = max(sweep, key=sweep.get)
    lines = [
        f"sweep (CIDEr test_seen): {', '.join(f'ε={e:g}: {c:.3f}' for e, c in sorted(sweep.items()))}; peak ε = {peak:g}",
        "",
        "| estimator | uses | cosine c | ε = (1/c² − 1)/d | ε / peak ε | nearest swept ε | its CIDEr |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        nearest = nearest_sweep_point(row["epsilon"], sweep)
        lines.append(
            f"| {row['estimator']} | {row['needs']} | {row['cosine']:.4f} | {row['epsilon']:.2g} | "
            f"{row['epsilon'] / peak:.2g} | {nearest:g} | {sweep[nearest]:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    sweep = read_sweep(args.sweep)
    rows = study(args)
    print(table(rows, sweep))
    return rows


if __name__ == "__main__":
    main()
