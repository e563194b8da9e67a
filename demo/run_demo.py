"""The offline CapDec demo: text-only captioning in a procedural shapes world, end to end.

    make demo                            # = python -m demo.run_demo (from the repository root): 1000 steps per run
    python -m demo.run_demo --full       # + the sweep, the supervised reference, projection, 3 seeds; 2000 steps
    python -m demo.run_demo --smoke      # a few steps and images: checks that everything runs

1. Build the shapes world (`demo/shapes_world.py`): a caption corpus, image-caption pairs, and two test
   sets (seen attribute combinations, and held-out colour+shape combinations).
2. Start from the tiny CLIP committed in `demo/tiny_clip/` (trained by `demo/train_tiny_clip.py`).
3. Train a tiny GPT-2 CapDec **text-only** with `train_capdec.py` and `configuration/shapes_text_only.json`,
   with ε chosen from the data (`--noise_variance auto`: unlabelled images of the world against the corpus) and
   ε = 0 (side by side, one thread each); with --full also ε = auto with the measured modality offset added in
   training (`--noise_offset`), with the noise also shaped like the measured residuals (`--noise_shape
   measured`), and with the captions mapped by the measured modality map instead of the offset (`--noise_map`,
   shaped noise), the sweep, the paper's 0.016, the supervised reference, and the auto run captioned with
   projection onto its text memory. With --self_train each ε = auto run then captions the unlabelled images
   itself (`processing/pseudo_captions.py`) and trains on them once more (`configuration/shapes_self_train.json`).
4. Caption the test images with `pipeline("image-to-text", trust_remote_code=True)`, score them with the COCO
   caption toolkit (`modeling_capdec.evaluation.metrics`), and compare with a no-decoder baseline that returns the
   nearest training caption by CLIP similarity.
5. Print a table, write `results.json` / `results.md`, and a gallery PNG of test images with both runs' captions.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import torch
import transformers
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parent.parent

TINY_CLIP = REPO / "demo" / "tiny_clip"
RECIPE = REPO / "configuration" / "shapes_text_only.json"
SUPERVISED_RECIPE = REPO / "configuration" / "shapes_supervised.json"
SELF_TRAIN_RECIPE = REPO / "configuration" / "shapes_self_train.json"
# --self_train: beams per unlabelled image, of which the caption is the most probable beam among those CLIP scores
# within SELF_TRAIN_TOLERANCE of its best. CLIP sorts out content (more beams: more scenes right) but hardly the
# wording of paraphrases; with the tolerance the decoder's ranking keeps the wording of its training captions.
SELF_TRAIN_RERANK = 20
SELF_TRAIN_TOLERANCE = 0.01
# --self_train: the train_pairs images (captions unused) it captions, apart from the ones the noise is measured on:
# self-training gains from many images, while the noise estimate is the recipe's, on --unlabelled_images
SELF_TRAIN_FOLDER = "self_train_images"
SWEEP = (0.0, 0.001, 0.004, 0.016, 0.064)
UNLABELLED_IMAGES = 1000  # train_pairs images saved without their captions, for --noise_variance auto
MEMORY_SIZE = 20_000  # text memory rows of the auto run under --full (at most the corpus's distinct captions)
SPLITS = ("test_seen", "test_heldout")
# Steps per run of the default demo: half the recipe's 2000, which --full trains (measured in the README).
QUICK_STEPS = 1000
METRICS = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
# The commands the demo runs (training, self-training's captioning): one thread each, offline.
TRAINING_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
    "HF_HUB_OFFLINE": "1",
}


def noise_level(parser: argparse.ArgumentParser, value: str) -> float | str:
    """One `--noise_levels` value: a number or one of `AUTO_LEVELS` (anything else stops with a usage error)."""
    if value in AUTO_LEVELS:
        return value
    try:
        return float(value)
    except ValueError:
        parser.error(f"--noise_levels: {value!r} is not a number nor one of {', '.join(AUTO_LEVELS)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output_dir", default=str(REPO / "demo_outputs"), help="where everything is written"
    )
    parser.add_argument(
        "--full", action="store_true", help="also the supervised reference and the noise sweep"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps (CI)")
    parser.add_argument("--clip", default=str(TINY_CLIP), help="the CLIP folder (default: the committed one)")
    parser.add_argument(
        "--max_steps",
        type=int,
        default=None,
        help=f"training steps per run (default: {QUICK_STEPS}, so that `make demo` stays within 10 minutes on 2 cores; "
        "with --full the recipe's 2000)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="training runs side by side (one thread each)")
    parser.add_argument(
        "--seed", type=int, default=0, help="the world's seed, and the training seed by default"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="training seeds; the table reports mean ± std over them (default: --seed; with --full: 0 1 2)",
    )
    parser.add_argument(
        "--noise_levels",
        nargs="+",
        default=None,
        help=f"the text-only runs' ε values: numbers, or {', '.join(AUTO_LEVELS)} (auto, and training adds the "
        "measured modality offset or maps the captions by the measured modality map, shapes the noise like the "
        "measured residuals, or both) (default: auto 0; with "
        f"--full: auto {AUTO_OFFSET} {AUTO_SHAPE} {AUTO_MAP_SHAPE} and the sweep "
        + " ".join(f"{eps:g}" for eps in SWEEP)
        + ")",
    )
    parser.add_argument(
        "--unlabelled_images",
        type=int,
        default=UNLABELLED_IMAGES,
        help=f"train_pairs images, their captions unused, that ε = auto measures on (default {UNLABELLED_IMAGES}; "
        "all of them: 8000, what the supervised reference trains on with their captions)",
    )
    parser.add_argument(
        "--supervised", action="store_true", help="also the supervised reference (implied by --full)"
    )
    parser.add_argument(
        "--self_train",
        action="store_true",
        help="after training, each ε = auto run captions unlabelled images (--self_train_images; CLIP rerank "
        f"of {SELF_TRAIN_RERANK} beams, tolerance {SELF_TRAIN_TOLERANCE}) and continues on those pairs in supervised mode "
        "(configuration/shapes_self_train.json): one round of self-training, no human caption of an image used",
    )
    parser.add_argument(
        "--self_train_images",
        type=int,
        default=None,
        help="with --self_train: the first N train_pairs images, their captions unused, that each ε = auto run "
        "captions (default: all of them, 8000; the noise is still measured on --unlabelled_images)",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="give the auto run a text memory and also caption with projection onto it (implied by --full)",
    )
    args = parser.parse_args(argv)
    if args.unlabelled_images < 1:
        parser.error(f"--unlabelled_images must be at least 1, got {args.unlabelled_images}")
    if args.self_train_images is not None and args.self_train_images < 1:
        parser.error(f"--self_train_images must be at least 1, got {args.self_train_images}")
    args.supervised = args.supervised or args.full
    args.memory = args.memory or args.full
    if args.noise_levels is None:
        args.noise_levels = (
            ["auto", AUTO_OFFSET, AUTO_SHAPE, AUTO_MAP_SHAPE, *SWEEP] if args.full else list(DEFAULT_NOISE)
        )
    else:
        args.noise_levels = [noise_level(parser, eps) for eps in args.noise_levels]
    if args.seeds is None:
        args.seeds = [0, 1, 2] if args.full and not args.smoke else [args.seed]
    if args.max_steps is None:
        args.max_steps = 5 if args.smoke else None if args.full else QUICK_STEPS
    return args


def stage(message: str) -> None:
    print(f"\n== {message}", flush=True)


# -- 1. the world -------------------------------------------------------------------------------------------
def build_world(folder: Path, smoke: bool, seed: int):
    from datasets import load_from_disk

    from demo.shapes_world import build_shapes_world

    sizes = dict(num_train_texts=400, num_train_pairs=200, num_test=12) if smoke else {}
    marker = folder / "demo_sizes.json"
    if folder.exists() and marker.exists() and json.loads(marker.read_text()) == {"seed": seed, **sizes}:
        print(f"reusing {folder}")
        return load_from_disk(str(folder))
    world = build_shapes_world(folder, seed=seed, **sizes)
    marker.write_text(json.dumps({"seed": seed, **sizes}))
    return world


def write_unlabelled_images(world, folder: Path, count: int) -> int:
    """The target domain's unlabelled images that `--noise_variance auto` compares with the corpus: the first
    `count` train_pairs images (all of them if fewer) as PNG files, their captions left out (training stays
    text-only). A folder that already holds exactly those files is kept. Returns the number of images."""
    pairs = world["train_pairs"]
    count = min(count, pairs.num_rows)
    names = [f"{index:05d}.png" for index in range(count)]
    if folder.is_dir() and sorted(path.name for path in folder.iterdir()) == names:
        return count
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, image in zip(names, pairs.select(range(count))["image"], strict=True):
        image.save(folder / name)
    return count


# -- 2. the decoder to start from -----------------------------------------------------------------------------
def build_decoder_init(folder: Path, captions: list[str], seed: int) -> Path:
    """A tiny random GPT-2 with a byte-level BPE tokenizer trained on the corpus, saved as a Hub-style folder
    that `train_capdec.py --decoder_model` loads like `gpt2`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from demo.bpe_tokenizers import train_gpt2_tokenizer

    if (folder / "config.json").exists():
        return folder
    tokenizer = train_gpt2_tokenizer(captions)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=128,
        n_layer=2,
        n_head=4,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# -- 3. training ----------------------------------------------------------------------------------------------
def run_command(arguments: list[str], log: Path) -> None:
    """Run `python ARGUMENTS` from the repository root as a user would, its output in `log`; a failure stops the
    demo with the log's end."""
    with log.open("w") as handle:
        result = subprocess.run(
            [sys.executable, *arguments], stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=TRAINING_ENV
        )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments[:2])} failed (log: {log}):\n{log.read_text()[-3000:]}")


def train_runs(runs: dict[str, list[str]], jobs: int, output_dir: Path) -> dict[str, float]:
    """Run `train_capdec.py` once per entry, `jobs` at a time with one thread each, and show one progress bar
    per run (read from each run's log). Returns the wall time of each run."""
    pending = list(runs.items())
    active: dict[str, tuple[subprocess.Popen, Path, RunProgress, float]] = {}
    durations: dict[str, float] = {}
    position = 0
    while pending or active:
        while pending and len(active) < jobs:
            name, arguments = pending.pop(0)
            log = output_dir / f"train_{name}.log"
            handle = log.open("w")
            process = subprocess.Popen(
                [sys.executable, str(REPO / "train_capdec.py"), *arguments],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=TRAINING_ENV,
                cwd=REPO,
            )
            bar = RunProgress(f"train {name}", position)
            position += 1
            active[name] = (process, log, bar, time.time())
        time.sleep(1.0)
        for name, (process, log, bar, start) in list(active.items()):
            bar.show(_progress(log))
            if process.poll() is not None:
                bar.close()
                del active[name]
                durations[name] = time.time() - start
                if process.returncode != 0:
                    tail = log.read_text()[-3000:]
                    raise RuntimeError(f"training run {name!r} failed (log: {log}):\n{tail}")
    return durations


# Trainer's own bar has no label ("  45%|████      | 450/1000 [..."); the labelled ones are datasets maps etc.
_PROGRESS = re.compile(r"(?:^|[\r\n])\s*\d+%\|[^|\r\n]*\|\s*(\d+)/(\d+) \[")


def _progress(log: Path) -> tuple[int, int] | None:
    """The last `(step, total)` Trainer's bar wrote to a run's log, if any."""
    found = _PROGRESS.findall(log.read_text(errors="replace")[-4000:])
    return tuple(map(int, found[-1])) if found else None


class RunProgress:
    """One progress display per training run: a tqdm bar on a terminal; elsewhere (a log, CI) a plain line every
    10% of the steps, since tqdm's cursor moves between several bars print as literal `[A` escapes there."""

    def __init__(self, name: str, position: int):
        self.name, self.last_tenth = name, -1
        self.bar = (
            tqdm(total=None, desc=name, position=position, unit="step") if sys.stderr.isatty() else None
        )

    def show(self, progress: tuple[int, int] | None) -> None:
        if progress is None:  # still loading the model and the data
            return
        done, total = progress
        if self.bar is None:
            tenth = 10 * done // max(total, 1)
            if tenth > self.last_tenth:
                self.last_tenth = tenth
                print(f"  {self.name}: step {done}/{total}", flush=True)
            return
        if self.bar.total != total:
            # Restart the clock at the first step seen: the rate (and ETA) then excludes model and data loading,
            # which would otherwise make the first ETAs read hours.
            self.bar.reset(total=total)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- 4. captioning and scoring --------------------------------------------------------------------------------
def caption_splits(
    model_dir: Path, images_by_split: dict[str, list], batch_size: int = 64, **generate_kwargs
) -> dict[str, list[str]]:
    """One run's captions of every test split, through the Hub remote-code pipeline (loaded once per run);
    `generate_kwargs` such as `project_to_memory=True` go to the pipeline call."""
    from transformers import pipeline

    captioner = pipeline("image-to-text", model=str(model_dir), trust_remote_code=True)
    return {
        split: [
            output[0]["generated_text"]
            for output in captioner(images, batch_size=batch_size, max_new_tokens=24, **generate_kwargs)
        ]
        for split, images in images_by_split.items()
    }


def nearest_caption_baseline(
    clip_dir: Path, corpus: list[str], images_by_split: dict[str, list]
) -> dict[str, list[str]]:
    """No decoder: for each image, the training caption whose CLIP text embedding is nearest to its embedding."""
    from demo.tiny_clip_model import embed_images, embed_texts, load_tiny_clip

    model, processor = load_tiny_clip(clip_dir)
    unique = sorted(set(corpus))
    with torch.inference_mode():
        text_embeds = embed_texts(model, processor, unique)  # once for every split
        return {
            split: [
                unique[i]
                for i in (embed_images(model, processor, images) @ text_embeds.T).argmax(-1).tolist()
            ]
            for split, images in images_by_split.items()
        }


def score_sets(prediction_sets: dict, references: list[list[str]]) -> dict:
    """Toolkit scores and exact match of several sets of captions of the same images, `{key: captions}` in,
    `{key: metrics}` out; the toolkit's Java starts once for all of them."""
    from modeling_capdec.evaluation.metrics import compute_caption_metrics_many

    scores = compute_caption_metrics_many(prediction_sets, references)
    for key, predictions in prediction_sets.items():
        exact = sum(is_exact(p, refs) for p, refs in zip(predictions, references, strict=True))
        scores[key]["exact"] = exact / len(predictions)
    return scores


def score(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    return score_sets({0: predictions}, references)[0]


# -- 5. report ------------------------------------------------------------------------------------------------
def results_table(
    results: dict[str, dict[str, dict[str, float]]],
    spread: dict[str, dict[str, dict[str, float]]] | None = None,
) -> str:
    """A markdown table of every run's scores; with `spread` (std over seeds) each cell reads `mean ± std`."""

    def cell(run: str, split: str, metric: str, digits: int) -> str:
        value = f"{results[run][split][metric]:.{digits}f}"
        if spread is None or run not in spread:
            return value
        return f"{value} ± {spread[run][split][metric]:.{digits}f}"

    header = "| run | split | " + " | ".join(METRICS) + " | exact match |"
    lines = [header, "|" + "---|" * (len(METRICS) + 3)]
    for run, by_split in results.items():
        for split in by_split:
            values = " | ".join(cell(run, split, m, 3) for m in METRICS)
            lines.append(f"| {run} | {split} | {values} | {cell(run, split, 'exact', 2)} |")
    return "\n".join(lines)


def mean_and_std(
    per_seed: dict[str, dict[int, dict[str, dict[str, float]]]],
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict[str, dict[str, float]]]]:
    """Each run's metrics averaged over its seeds, and their sample standard deviation (0 for a single seed)."""
    means: dict[str, dict[str, dict[str, float]]] = {}
    stds: dict[str, dict[str, dict[str, float]]] = {}
    for run, by_seed in per_seed.items():
        seeds = list(by_seed.values())
        means[run], stds[run] = {}, {}
        for split in seeds[0]:
            values = {
                m: torch.tensor([s[split][m] for s in seeds], dtype=torch.float64) for m in seeds[0][split]
            }
            means[run][split] = {m: v.mean().item() for m, v in values.items()}
            stds[run][split] = {m: (v.std().item() if len(v) > 1 else 0.0) for m, v in values.items()}
    return means, stds


def is_exact(prediction: str, references: list[str]) -> bool:
    """Whether a caption equals one of the references, ignoring case and surrounding spaces."""
    return prediction.strip().lower() in {r.strip().lower() for r in references}


GALLERY_FONT_PX = 14  # legible when the PNG is viewed at 100%; Pillow's bundled FreeType font at this size


def write_gallery(
    path: Path,
    images: list,
    captions: dict[str, list[str]],
    references: list[list[str]],
    titles: list[str],
    heading: str,
    cell: int = 144,
) -> None:
    """A grid of test images (upscaled), each with its title, its first reference caption and every run's
    caption, green when it matches a reference exactly and red when not; `heading` names the runs."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=GALLERY_FONT_PX)
    line_height = GALLERY_FONT_PX + 4
    columns, column_width, wrap = 4, cell + 200, 46
    lines_per_image = 1 + 2 * (1 + len(captions))  # the title, then two wrapped lines: reference, each run
    height = cell + line_height * lines_per_image + 12
    rows = (len(images) + columns - 1) // columns
    top = 2 * line_height + 8
    canvas = Image.new("RGB", (columns * column_width, top + rows * height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 4), heading, fill="black", font=font)
    draw.text(
        (8, 4 + line_height),
        "green: the caption equals a reference (exact match); red: it does not",
        fill="dimgray",
        font=font,
    )
    for index, image in enumerate(images):
        x, y = (index % columns) * column_width, top + (index // columns) * height
        canvas.paste(image.resize((cell, cell), Image.NEAREST), (x + (column_width - cell) // 2, y))
        wrapped = (textwrap.wrap(f"reference: {references[index][0]}", width=wrap) + ["", ""])[:2]
        lines = [(titles[index], "black")] + [(text, "dimgray") for text in wrapped]
        for run, texts in captions.items():
            colour = "darkgreen" if is_exact(texts[index], references[index]) else "firebrick"
            lines += [
                (text, colour)
                for text in (textwrap.wrap(f"{run}: {texts[index]}", width=wrap) + ["", ""])[:2]
            ]
        for line_index, (line, colour) in enumerate(lines):
            draw.text((x + 6, y + cell + 4 + line_height * line_index), line, fill=colour, font=font)
    canvas.save(path)


def plot_sweep(path: Path, results: dict[str, dict[str, dict[str, float]]], supervised: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epsilons = [eps for eps in SWEEP if f"eps={eps:g}" in results]
    cider = [results[f"eps={eps:g}"]["test_seen"]["CIDEr"] for eps in epsilons]
    figure, axis = plt.subplots(figsize=(5, 3.5))
    positions = range(len(epsilons))
    axis.plot(positions, cider, marker="o", label="text-only CapDec")
    if supervised is not None:
        axis.axhline(supervised, color="gray", linestyle="--", label="supervised (image embeddings)")
    axis.set_xticks(list(positions), [f"{eps:g}" for eps in epsilons])
    axis.set_xlabel("noise variance ε")
    axis.set_ylabel("CIDEr (test_seen)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


DEFAULT_NOISE: tuple[float | str, ...] = ("auto", 0.0)
# ε = auto, and training adds the modality offset measured on the unlabelled images (`--noise_offset`); with
# +shape the noise also takes the shape of the images' residuals around their captions (`--noise_shape measured`).
# With +map training maps the captions by the affine modality map measured on the same images (`--noise_map`)
# instead of adding the offset.
AUTO_OFFSET = "auto+offset"
AUTO_SHAPE = "auto+offset+shape"
AUTO_MAP_SHAPE = "auto+map+shape"
AUTO_LEVELS = ("auto", AUTO_OFFSET, "auto+shape", AUTO_SHAPE, "auto+map", AUTO_MAP_SHAPE)
MEMORY_RUN = "eps=auto + memory"  # the auto run's model, captioned with projection onto its text memory
# --self_train: an auto run after a round of self-training on its own captions of the unlabelled images
SELF_TRAINED = " + self-trained"


def run_name(eps: float | str) -> str:
    return f"eps={eps}" if isinstance(eps, str) else f"eps={eps:g}"


def run_trainings(
    args: argparse.Namespace, output_dir: Path, decoder_inits: dict[int, Path]
) -> tuple[dict[str, dict[int, Path]], dict]:
    """Stage 3: the text-only runs (ε = auto and 0; with --full the sweep and the supervised reference), once
    per training seed. Returns each run's folder by seed, and the wall time of each training."""
    max_steps = args.max_steps
    noise_levels = args.noise_levels
    auto_arguments = ["--noise_images", str(output_dir / "world" / "unlabelled_images")]
    # every unlabelled image (the estimate samples at most 2000 by default)
    auto_arguments += [
        "--noise_estimator",
        "pseudo_pairs",
        "--noise_estimate_images",
        str(args.unlabelled_images),
    ]
    options = {"offset": ["--noise_offset"], "map": ["--noise_map"], "shape": ["--noise_shape", "measured"]}
    # auto+offset etc.: the image arguments of auto (not its memory) and each option's flags
    auto_variants = {
        level: [*auto_arguments, *(flag for option in level.split("+")[1:] for flag in options[option])]
        for level in AUTO_LEVELS[1:]
    }
    if args.memory:
        auto_arguments += ["--text_memory_size", str(MEMORY_SIZE)]
    several = len(args.seeds) > 1
    run_dirs: dict[str, dict[int, Path]] = {}
    runs: dict[str, list[str]] = {}

    def add_run(name: str, recipe: Path, folder: str, seed: int, *extra: str) -> None:
        run_dir = output_dir / "runs" / (f"{folder}_seed{seed}" if several else folder)
        run_dirs.setdefault(name, {})[seed] = run_dir
        arguments = [str(recipe), "--clip_model", args.clip, "--decoder_model", str(decoder_inits[seed])]
        arguments += ["--dataset_dir", str(output_dir / "world"), "--output_dir", str(run_dir)]
        arguments += ["--seed", str(seed), "--cache_dir", str(output_dir / "cache"), *extra]
        runs[f"{name} seed {seed}" if several else name] = arguments + (
            ["--max_steps", str(max_steps)] if max_steps else []
        )

    for seed in args.seeds:
        for eps in noise_levels:
            extra = {"auto": auto_arguments, **auto_variants}.get(eps, [])
            folder = run_name(eps).replace("=", "_").replace("+", "_")
            noise = "auto" if eps in AUTO_LEVELS else str(eps)
            add_run(run_name(eps), RECIPE, folder, seed, "--noise_variance", noise, *extra)
        if args.supervised:
            add_run("supervised", SUPERVISED_RECIPE, "supervised", seed)
    durations = train_runs(runs, args.jobs, output_dir)
    for name, seconds in durations.items():
        print(f"  {name}: {seconds:.0f} s")
    return run_dirs, durations


def run_self_training(
    args: argparse.Namespace, output_dir: Path, run_dirs: dict[str, dict[int, Path]]
) -> tuple[dict[str, dict[int, Path]], dict]:
    """Stage 3b (--self_train): each ε = auto run captions the images of `world/self_train_images`
    (`processing.pseudo_captions`, CLIP rerank of `SELF_TRAIN_RERANK` beams with `SELF_TRAIN_TOLERANCE`) and
    continues in supervised mode on those (image, own caption) pairs with `configuration/shapes_self_train.json`,
    as run `<name> + self-trained`.
    Returns the new runs' folders by seed and the wall time of each training."""
    self_train_images = output_dir / "world" / SELF_TRAIN_FOLDER
    several = len(args.seeds) > 1
    self_dirs: dict[str, dict[int, Path]] = {}
    runs: dict[str, list[str]] = {}
    for name in map(run_name, AUTO_LEVELS):
        for seed, model_dir in run_dirs.get(name, {}).items():
            corpus_file = output_dir / "pseudo_captions" / f"{model_dir.name}.jsonl"
            caption = ["-m", "processing.pseudo_captions", "--model", str(model_dir)]
            caption += ["--images", str(self_train_images), "--clip_rerank", str(SELF_TRAIN_RERANK)]
            caption += ["--clip_rerank_tolerance", str(SELF_TRAIN_TOLERANCE)]
            caption += ["--max_new_tokens", "24", "--output_jsonl", str(corpus_file)]
            run_command(caption, output_dir / f"pseudo_{model_dir.name}.log")
            run_dir = model_dir.with_name(f"{model_dir.name}_self_trained")
            self_dirs.setdefault(name + SELF_TRAINED, {})[seed] = run_dir
            arguments = [str(SELF_TRAIN_RECIPE), "--init_from", str(model_dir)]
            arguments += ["--train_file", str(corpus_file), "--output_dir", str(run_dir)]
            arguments += ["--seed", str(seed), "--cache_dir", str(output_dir / "cache")]
            runs[f"{name}{SELF_TRAINED} seed {seed}" if several else name + SELF_TRAINED] = arguments + (
                ["--max_steps", str(args.max_steps)] if args.smoke else []
            )
    durations = train_runs(runs, args.jobs, output_dir)
    for name, seconds in durations.items():
        print(f"  {name}: {seconds:.0f} s")
    return self_dirs, durations


def caption_and_score(
    world, run_dirs: dict[str, dict[int, Path]], clip: Path, images: dict[str, list]
) -> tuple[dict, dict]:
    """Stage 4: every run's captions of the test splits (every seed), the nearest-caption baseline's, and their
    scores. Returns predictions[run][seed][split] and scores[run][seed][split][metric]."""
    predictions: dict[str, dict[int, dict[str, list[str]]]] = {}
    for name, by_seed in run_dirs.items():
        predictions[name] = {seed: caption_splits(model_dir, images) for seed, model_dir in by_seed.items()}
    memory_runs = {
        seed: folder
        for seed, folder in run_dirs.get("eps=auto", {}).items()
        if json.loads((folder / "config.json").read_text()).get("text_memory_size", 0)
    }
    if memory_runs:  # --full: the same models, projection onto the text memory on
        predictions[MEMORY_RUN] = {
            seed: caption_splits(folder, images, project_to_memory=True)
            for seed, folder in memory_runs.items()
        }
    corpus = world["train_text"]["caption"][:]
    # No training, so no seed: the baseline is scored once.
    predictions["nearest caption"] = {0: nearest_caption_baseline(clip, corpus, images)}
    references = {split: world[split]["captions"][:] for split in images}
    scores: dict = {name: {seed: {} for seed in by_seed} for name, by_seed in predictions.items()}
    for split in tqdm(images, desc="scoring (every run at once, per split)"):
        sets = {
            (name, seed): by_split[split]
            for name, by_seed in predictions.items()
            for seed, by_split in by_seed.items()
        }
        for (name, seed), metrics in score_sets(sets, references[split]).items():
            scores[name][seed][split] = metrics
    return predictions, scores


def report(
    output_dir: Path,
    results: dict,
    spread: dict | None,
    predictions: dict,
    references: dict[str, list[list[str]]],
    images: dict[str, list],
    args: argparse.Namespace,
) -> str:
    """Stage 5: the table and ratios on stdout, the gallery (and with --full the sweep plot); returns the table."""
    table = results_table(results, spread)
    print(table)
    seen = {name: results[name]["test_seen"]["CIDEr"] for name in results}
    print()
    sweep = {name: value for name, value in seen.items() if name in {run_name(eps) for eps in SWEEP}}
    best_sweep = max(sweep, key=sweep.get) if len(sweep) > 1 else None
    auto_runs = [run_name(eps) + suffix for suffix in ("", SELF_TRAINED) for eps in AUTO_LEVELS]
    for run in (*auto_runs, "eps=0.016", MEMORY_RUN):
        for baseline in ("eps=0", best_sweep, "supervised", "nearest caption"):
            if run in seen and baseline in seen and baseline != run and seen[baseline] > 0:
                print(f"CIDEr test_seen, {run} / {baseline}: {seen[run] / seen[baseline]:.3f}×")
    if best_sweep is not None:
        print(f"sweep peak (test_seen CIDEr): {best_sweep}")
    shown = {"test_seen": 8, "test_heldout": 4}  # the first images of each split

    def pick(by_split: dict[str, list]) -> list:
        return [item for split, count in shown.items() for item in by_split[split][:count]]

    gallery_runs = [name for name in (run_name(eps) for eps in DEFAULT_NOISE) if name in predictions]
    first_seed = args.seeds[0]
    gallery_images = pick(images)
    titles = pick({split: [f"{split} #{i}" for i in range(len(images[split]))] for split in shown})
    gallery_captions = {name: pick(predictions[name][first_seed]) for name in gallery_runs}
    gallery_references = pick(references)
    heading = (
        f"CapDec text-only runs {', '.join(gallery_runs)} (training seed {first_seed}) on the shapes world"
    )
    write_gallery(
        output_dir / "gallery.png", gallery_images, gallery_captions, gallery_references, titles, heading
    )
    if sum(run_name(eps) in results for eps in SWEEP) > 1:
        plot_sweep(output_dir / "cider_vs_noise.png", results, seen.get("supervised"))
    return table


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    torch.set_num_threads(2)
    # One progress line per phase (the stages' own): no per-file bars from datasets' saves or weight loading.
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()

    stage("1/5 shapes world")
    world = build_world(output_dir / "world", args.smoke, args.seed)
    for split, data in world.items():
        print(f"  {split}: {data.num_rows} rows")
    unlabelled = write_unlabelled_images(
        world, output_dir / "world" / "unlabelled_images", args.unlabelled_images
    )
    print(f"  unlabelled images (train_pairs images without their captions): {unlabelled}")
    self_train_images = 0
    if args.self_train:
        self_train_images = write_unlabelled_images(
            world,
            output_dir / "world" / SELF_TRAIN_FOLDER,
            args.self_train_images or world["train_pairs"].num_rows,
        )
        print(f"  unlabelled images for self-training: {self_train_images}")

    stage("2/5 tiny CLIP and the decoder to start from")
    print(f"  CLIP: {args.clip}")
    captions = world["train_text"]["caption"][:]
    decoder_inits = {
        seed: build_decoder_init(
            output_dir / ("decoder_init" if seed == 0 else f"decoder_init_seed{seed}"), captions, seed
        )
        for seed in args.seeds
    }
    print(f"  decoder: tiny GPT-2 in {', '.join(str(folder) for folder in decoder_inits.values())}")

    stage(f"3/5 text-only training (train_capdec.py), seeds {' '.join(map(str, args.seeds))}")
    run_dirs, durations = run_trainings(args, output_dir, decoder_inits)
    if args.self_train:
        stage("3b/5 self-training: each ε = auto run captions unlabelled images and trains on them")
        self_dirs, self_durations = run_self_training(args, output_dir, run_dirs)
        run_dirs, durations = {**run_dirs, **self_dirs}, {**durations, **self_durations}

    auto_noise = {
        run: {
            seed: json.loads((folder / "config.json").read_text())["training_noise"]["noise_variance"]
            for seed, folder in run_dirs[run].items()
        }
        for run in map(run_name, AUTO_LEVELS)
        if run in run_dirs
    }
    for run, by_seed in auto_noise.items():
        for seed, eps in by_seed.items():
            print(f"  {run} (seed {seed}): ε = {eps:.5f} estimated from the unlabelled images and the corpus")

    stage("4/5 captioning the test images and scoring (COCO caption toolkit)")
    images = {split: world[split]["image"][:] for split in SPLITS}  # decoded once, captioned by every run
    predictions, per_seed = caption_and_score(world, run_dirs, Path(args.clip), images)
    results, spread = mean_and_std(per_seed)

    stage("5/5 results")
    references = {split: world[split]["captions"][:] for split in SPLITS}
    table = report(
        output_dir, results, spread if len(args.seeds) > 1 else None, predictions, references, images, args
    )
    summary = {
        "results": results,
        "std_over_seeds": spread,
        "per_seed": per_seed,
        "seeds": args.seeds,
        "auto_noise_variance": auto_noise,
        "train_seconds": durations,
        "total_seconds": time.time() - start,
        "smoke": args.smoke,
        "full": args.full,
        "max_steps": args.max_steps or "recipe (2000)",
        "unlabelled_images": unlabelled,
        "self_train": args.self_train,
        "self_train_images": self_train_images,
        "clip": args.clip,
    }
    (output_dir / "results.json").write_text(json.dumps(summary, indent=2))
    (output_dir / "results.md").write_text(table + "\n")
    (output_dir / "predictions.json").write_text(json.dumps(predictions, indent=1))
    print(
        f"\nwrote {output_dir / 'results.md'}, {output_dir / 'gallery.png'}"
        + (f", {output_dir / 'cider_vs_noise.png'}" if (output_dir / "cider_vs_noise.png").exists() else "")
        + f"  (total {time.time() - start:.0f} s)"
    )
    return summary


if __name__ == "__main__":
    main()
