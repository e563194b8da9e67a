"""A smoke run of the offline demo (`make demo`): a few training steps, a few images, every stage."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_from_disk
from PIL import Image

from demo.app import DEFAULT_MODEL
from modeling_capdec.evaluation.metrics import compute_caption_metrics

REPO = Path(__file__).resolve().parent.parent


def test_demo_smoke_run_completes(tmp_path):
    output = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "demo.run_demo", "--smoke", "--output_dir", str(output)]
        + [
            "--noise_levels",
            "auto",
            "auto+offset+shape",
            "auto+map+shape",
            "0",
            "--unlabelled_images",
            "150",
        ],  # the default two, two of --full's; 150 of the smoke world's 200 train_pairs images
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((output / "results.json").read_text())
    assert set(summary["results"]) == {
        "eps=auto",
        "eps=auto+offset+shape",
        "eps=auto+map+shape",
        "eps=0",
        "nearest caption",
    }
    # ε = auto was estimated from the unlabelled images (the rule (1/c² - 1)/d), recorded in the run's config
    config = json.loads((output / "runs" / "eps_auto" / "config.json").read_text())
    estimate = config["training_noise"]["estimate"]
    assert estimate["estimator"] == "pseudo_pairs" and estimate["num_images"] == 150
    assert summary["unlabelled_images"] == 150 and summary["self_train"] is False
    assert summary["auto_noise_variance"]["eps=auto"]["0"] == config["training_noise"]["noise_variance"] > 0
    # ε = auto with --noise_offset: the offset measured on the same images is added in training, and ε is the
    # noise left around the shifted captions, smaller than the plain estimate; --noise_shape measured shapes it
    shifted = json.loads((output / "runs" / "eps_auto_offset_shape" / "config.json").read_text())[
        "training_noise"
    ]
    assert shifted["estimate"]["shifted"] is True and len(shifted["modality_offset"]) == estimate["dim"]
    assert (
        1 < shifted["noise_shape_effective_rank"] < estimate["dim"]
        and estimate["noise_shape_effective_rank"] is None
    )
    assert shifted["estimate"]["modality_offset_norm"] == pytest.approx(estimate["modality_offset_norm"])
    assert (
        0
        < summary["auto_noise_variance"]["eps=auto+offset+shape"]["0"]
        < config["training_noise"]["noise_variance"]
    )
    # --noise_map: the captions mapped by the measured modality map instead of the offset, ε measured around them
    mapped = json.loads((output / "runs" / "eps_auto_map_shape" / "config.json").read_text())[
        "training_noise"
    ]
    assert mapped["modality_map"] == "measured" and mapped["modality_offset"] is None
    assert mapped["estimate"]["modality_map_ridge"] > 0 and mapped["noise_shape_effective_rank"] > 1
    assert summary["auto_noise_variance"]["eps=auto+map+shape"]["0"] == mapped["noise_variance"] > 0
    for run in summary["results"].values():
        assert set(run) == {"test_seen", "test_heldout"}
        for metrics in run.values():
            assert {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "exact"} <= set(metrics)
    # predictions[run][seed][split]: one seed here (the default), the baseline under seed 0 as it has none
    predictions = {
        run: by_seed[str(summary["seeds"][0])] if run != "nearest caption" else by_seed["0"]
        for run, by_seed in json.loads((output / "predictions.json").read_text()).items()
    }
    assert all(len(texts) == 12 for by_split in predictions.values() for texts in by_split.values())
    # The numbers are the predictions' scores: exact match recomputed from the written world and predictions,
    # and the nearest-caption baseline only ever answers with a training caption.
    world = load_from_disk(str(output / "world"))
    corpus = set(world["train_text"]["caption"][:])
    for run, by_split in predictions.items():
        for split, texts in by_split.items():
            references = world[split]["captions"][:]
            exact = (
                sum(
                    t.strip().lower() in {r.lower() for r in refs}
                    for t, refs in zip(texts, references, strict=True)
                )
                / 12
            )
            assert summary["results"][run][split]["exact"] == pytest.approx(exact), (run, split)
            # Every run's sets were scored together: each keeps its own score (CIDEr, recomputed alone).
            alone = compute_caption_metrics(texts, references, metrics=["CIDEr"])["CIDEr"]
            assert summary["results"][run][split]["CIDEr"] == pytest.approx(alone, abs=1e-12), (run, split)
            assert all(0 <= summary["results"][run][split][m] <= 10 for m in ("BLEU-4", "CIDEr"))
    assert set(predictions["nearest caption"]["test_seen"]) <= corpus
    table = (output / "results.md").read_text()
    cider = summary["results"]["nearest caption"]["test_seen"]["CIDEr"]
    assert "| nearest caption | test_seen |" in table and f"{cider:.3f}" in table
    # The web demo's default model is the one `make demo` trains (relative to the checkout: here, the output).
    assert DEFAULT_MODEL.parent == Path("demo_outputs/runs")
    assert (output / "runs" / DEFAULT_MODEL.name / "config.json").is_file()
    # both trained folders are Hub-ready and hold a filled model card
    for run in ("eps_auto", "eps_0"):
        folder = output / "runs" / run
        assert (folder / "model.safetensors").exists() and (folder / "modeling_capdec.py").exists()
        assert "${" not in (folder / "README.md").read_text()
    gallery = Image.open(output / "gallery.png")
    assert gallery.width > 500 and gallery.height > 300
    assert "| nearest caption | test_seen |" in (output / "results.md").read_text()
    # The reranking study on two trained folders: its greedy rows are the demo's own scores of them.
    study = subprocess.run(
        [sys.executable, "-m", "demo.rerank_study", "--world", str(output / "world"), "--candidates", "2"]
        + ["--runs", str(output / "runs" / "eps_auto"), str(output / "runs" / "eps_0")]
        + ["--output", str(tmp_path / "rerank.json")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert study.returncode == 0, study.stdout[-3000:] + study.stderr[-3000:]
    reranked = json.loads((tmp_path / "rerank.json").read_text())["mean"]
    assert set(reranked) == {
        f"{run}, {decoding}"
        for run in ("eps_auto", "eps_0")
        for decoding in ("greedy", "beam 2", "clip_rerank 2")
    }
    for folder, run in (("eps_auto", "eps=auto"), ("eps_0", "eps=0")):
        for split, metrics in summary["results"][run].items():
            assert reranked[f"{folder}, greedy"][split] == pytest.approx(metrics, abs=1e-12), (run, split)


def test_results_over_seeds_are_mean_and_sample_std():
    from demo.run_demo import mean_and_std, results_table

    per_seed = {
        "eps=0": {
            0: {"test_seen": {"CIDEr": 4.0, "exact": 0.25}},
            1: {"test_seen": {"CIDEr": 5.0, "exact": 0.5}},
        },
        "nearest caption": {0: {"test_seen": {"CIDEr": 6.0, "exact": 0.5}}},
    }
    means, stds = mean_and_std(per_seed)
    assert means["eps=0"]["test_seen"]["CIDEr"] == pytest.approx(4.5)
    assert stds["eps=0"]["test_seen"]["CIDEr"] == pytest.approx(0.7071068)  # sample std of (4, 5)
    assert stds["nearest caption"]["test_seen"]["CIDEr"] == 0.0
    import demo.run_demo as run_demo

    metrics, run_demo.METRICS = run_demo.METRICS, ("CIDEr",)
    try:
        table = results_table(means, stds)
    finally:
        run_demo.METRICS = metrics
    assert "| eps=0 | test_seen | 4.500 ± 0.707 | 0.38 ± 0.18 |" in table


def test_gallery_shows_reference_and_marks_exact_matches(tmp_path):
    from demo.run_demo import GALLERY_FONT_PX, write_gallery

    images = [Image.new("RGB", (48, 48), "gray")] * 2
    references = [["a red circle."], ["a blue square."]]
    captions = {"eps=0": ["a red circle.", "a green square."]}
    write_gallery(tmp_path / "g.png", images, captions, references, ["seen #0", "seen #1"], "runs: eps=0")
    gallery = Image.open(tmp_path / "g.png").convert("RGB")
    colours = {colour for _, colour in gallery.getcolors(maxcolors=1 << 20)}
    assert (0, 100, 0) in colours  # darkgreen: the exact match in cell 0
    assert (178, 34, 34) in colours  # firebrick: the wrong caption in cell 1
    assert GALLERY_FONT_PX >= 12


def test_run_selection_options(capsys):
    from demo.run_demo import SWEEP, parse_args

    default = parse_args([])
    assert default.noise_levels == ["auto", 0.0] and not default.supervised and not default.memory
    assert default.seeds == [0] and default.max_steps == 1000  # the quick default; --full trains the recipe's
    assert parse_args(["--max_steps", "300"]).max_steps == 300 and parse_args(["--smoke"]).max_steps == 5
    full = parse_args(["--full"])
    assert full.max_steps is None and parse_args(["--full", "--max_steps", "50"]).max_steps == 50
    assert (
        full.noise_levels == ["auto", "auto+offset", "auto+offset+shape", "auto+map+shape", *SWEEP]
        and full.supervised
        and full.memory
        and full.seeds == [0, 1, 2]
    )
    chosen = parse_args(["--noise_levels", "auto", "auto+offset", "0.016", "--memory", "--seeds", "3", "4"])
    assert chosen.noise_levels == ["auto", "auto+offset", 0.016] and chosen.memory and not chosen.supervised
    assert chosen.seeds == [3, 4]
    assert (
        default.unlabelled_images == 1000
        and parse_args(["--unlabelled_images", "8000"]).unlabelled_images == 8000
    )
    with pytest.raises(SystemExit):
        parse_args(["--unlabelled_images", "0"])
    assert "--unlabelled_images must be at least 1, got 0" in capsys.readouterr().err
    # --self_train captions all train_pairs images unless told fewer; the noise keeps --unlabelled_images
    assert default.self_train_images is None
    assert parse_args(["--self_train", "--self_train_images", "500"]).self_train_images == 500
    with pytest.raises(SystemExit):
        parse_args(["--self_train", "--self_train_images", "0"])
    assert "--self_train_images must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--noise_levels", "auto", "lots"])
    message = (
        "--noise_levels: 'lots' is not a number nor one of auto, auto+offset, auto+shape, auto+offset+shape, "
        "auto+map, auto+map+shape"
    )
    assert message in capsys.readouterr().err


def test_unlabelled_images_are_the_first_train_pairs_images_and_follow_the_count(tmp_path):
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    from demo.run_demo import write_unlabelled_images

    images = [Image.new("RGB", (4, 4), (index * 40, 0, 0)) for index in range(5)]
    world = {
        "train_pairs": Dataset.from_dict({"image": images}, features=Features({"image": ImageFeature()}))
    }
    folder = tmp_path / "unlabelled_images"
    assert write_unlabelled_images(world, folder, 3) == 3
    assert sorted(path.name for path in folder.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert Image.open(folder / "00002.png").getpixel((0, 0)) == (80, 0, 0)  # the third pair's image
    (folder / "00000.png").write_bytes(b"")  # kept as it is when the count is the same: not rewritten
    assert write_unlabelled_images(world, folder, 3) == 3 and (folder / "00000.png").stat().st_size == 0
    # another count rewrites the folder; more than the pairs hold gives all of them
    assert write_unlabelled_images(world, folder, 10) == 5
    assert len(list(folder.iterdir())) == 5 and (folder / "00000.png").stat().st_size > 0
    assert write_unlabelled_images(world, folder, 2) == 2 and len(list(folder.iterdir())) == 2


def test_self_training_captions_the_unlabelled_images_and_trains_a_copy_of_each_auto_run(
    tmp_path, saved_dir, image_files
):
    # Stage 3b of `--self_train`, on a tiny saved model standing in for a trained ε = auto run.
    import argparse
    import shutil

    from demo.run_demo import run_self_training

    # It captions world/self_train_images, not the (fewer) images the noise was measured on.
    unlabelled = tmp_path / "world" / "self_train_images"
    unlabelled.mkdir(parents=True)
    for path in image_files:
        shutil.copy(path, unlabelled)
    noise_images = tmp_path / "world" / "unlabelled_images"
    noise_images.mkdir()
    shutil.copy(image_files[0], noise_images / "noise_only.png")
    run_dir = tmp_path / "runs" / "eps_auto"
    shutil.copytree(saved_dir, run_dir)
    args = argparse.Namespace(seeds=[0], smoke=True, max_steps=2, jobs=1)
    self_dirs, durations = run_self_training(
        args, tmp_path, {"eps=auto": {0: run_dir}, "eps=0": {0: saved_dir}}
    )
    self_trained = tmp_path / "runs" / "eps_auto_self_trained"
    assert self_dirs == {"eps=auto + self-trained": {0: self_trained}} and set(durations) == {
        "eps=auto + self-trained"
    }
    rows = [
        json.loads(line)
        for line in (tmp_path / "pseudo_captions" / "eps_auto.jsonl").read_text().splitlines()
    ]
    assert [row["image"] for row in rows] == sorted(str(p.resolve()) for p in unlabelled.iterdir())
    assert all(isinstance(row["caption"], str) for row in rows)
    # the demo's decoding of them: 20 beams, the most probable within 0.01 of CLIP's best
    log = (tmp_path / "pseudo_eps_auto.log").read_text()
    assert "(CLIP rerank of 20 beams, tolerance 0.01)" in log
    assert json.loads((self_trained / "trainer_state.json").read_text())["global_step"] == 2
    assert f"continuing from the trained CapDec model `{run_dir}`" in (self_trained / "README.md").read_text()
