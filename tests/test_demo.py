"""A smoke run of the offline demo (`make demo`): a few training steps, a few images, every stage."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_from_disk
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def test_demo_smoke_run_completes(tmp_path):
    output = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "demo.run_demo", "--smoke", "--output_dir", str(output)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((output / "results.json").read_text())
    assert set(summary["results"]) == {"eps=0.016", "eps=0", "nearest caption"}
    for run in summary["results"].values():
        assert set(run) == {"test_seen", "test_heldout"}
        for metrics in run.values():
            assert {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "exact"} <= set(metrics)
    predictions = json.loads((output / "predictions.json").read_text())
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
            assert all(0 <= summary["results"][run][split][m] <= 10 for m in ("BLEU-4", "CIDEr"))
    assert set(predictions["nearest caption"]["test_seen"]) <= corpus
    table = (output / "results.md").read_text()
    cider = summary["results"]["nearest caption"]["test_seen"]["CIDEr"]
    assert "| nearest caption | test_seen |" in table and f"{cider:.3f}" in table
    # both trained folders are Hub-ready and hold a filled model card
    for run in ("eps_0.016", "eps_0"):
        folder = output / "runs" / run
        assert (folder / "model.safetensors").exists() and (folder / "modeling_capdec.py").exists()
        assert "${" not in (folder / "README.md").read_text()
    gallery = Image.open(output / "gallery.png")
    assert gallery.width > 500 and gallery.height > 300
    assert "| nearest caption | test_seen |" in (output / "results.md").read_text()
