"""`train_capdec.py --noise_variance auto` and `--text_memory_size` end to end with tiny models, and the reporting
command `capdec-estimate-noise`."""

import json
import re
import shutil

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from modeling_capdec import CapDecForConditionalGeneration, CapDecProcessor
from modeling_capdec.commands.estimate_noise import main as estimate_noise_main
from modeling_capdec.training.data import load_dataset_source
from modeling_capdec.training.noise import TRAINING_NOISE_FILE, load_modality_map
from modeling_capdec.training.noise_estimate import estimate_noise_from_data
from tests.test_train_capdec import cli, one_thread, parts  # noqa: F401 (fixtures)
from train_capdec import main


@pytest.fixture(scope="module")
def image_folder(parts, tmp_path_factory):  # noqa: F811
    """Unlabelled images of the target domain: the eval images, without their captions."""
    folder = tmp_path_factory.mktemp("unlabelled")
    for path in parts.root.glob("image*.png"):
        shutil.copy(path, folder / path.name)
    return folder


def train_with_measured_noise(parts, image_folder, output_dir, *flags):  # noqa: F811
    """Two steps with --noise_variance auto on the unlabelled images and `flags`: the trainer, the saved model and
    its processor."""
    trainer = main(
        cli(parts, output_dir, "--max_steps", "2", "--save_strategy", "no", "--noise_variance", "auto")
        + ["--noise_images", str(image_folder), *flags]
    )
    return (
        trainer,
        CapDecForConditionalGeneration.from_pretrained(output_dir),
        CapDecProcessor.from_pretrained(output_dir),
    )


def test_noise_variance_auto_trains_with_the_estimate_and_records_it(parts, image_folder, tmp_path, capsys):  # noqa: F811
    output_dir = tmp_path / "out"
    trainer, model, processor = train_with_measured_noise(
        parts, image_folder, output_dir, "--text_memory_size", "6"
    )
    printed = capsys.readouterr().out
    assert "Noise from data: ε = " in printed and "pseudo_pairs" in printed and "4 images" in printed

    # The same estimate computed directly from the corpus and the folder, with the run's CLIP.
    expected = estimate_noise_from_data(
        model, processor, load_dataset_source(parts.corpus), image_folder=image_folder
    )
    noise = json.loads((output_dir / "config.json").read_text())["training_noise"]
    assert noise["noise_variance"] == pytest.approx(expected.noise_variance, rel=1e-5)
    assert noise["estimate"]["estimator"] == "pseudo_pairs"
    assert noise["estimate"]["num_images"] == 4 and noise["estimate"]["dim"] == 16
    assert trainer.data_collator.noise_variance == noise["noise_variance"]
    assert not (
        output_dir / TRAINING_NOISE_FILE
    ).exists()  # nothing measured beyond ε: nothing beside the weights
    card = ModelCard.load(output_dir / "README.md").text
    assert f"ε = {noise['noise_variance']:g}" in card and "estimated from the data before training" in card

    # The memory: 6 of the 10 distinct captions' CLIP embeddings, saved with the weights.
    assert model.config.text_memory_size == 6
    corpus_embeds = torch.tensor(trainer.train_dataset["clip_embeds"][:])
    nearest = (model.text_memory @ corpus_embeds.T).max(dim=-1)
    assert nearest.values.min() > 1 - 1e-5  # every row is a training caption's embedding
    token_ids = trainer.train_dataset["input_ids"][:]
    assert len({tuple(token_ids[i]) for i in nearest.indices.tolist()}) == 6  # of six different captions
    captions = model.generate(
        **processor(images=sorted(map(str, image_folder.iterdir())), return_tensors="pt"),
        project_to_memory=True,
        max_new_tokens=4,
    )
    assert captions.shape[0] == 4


def test_noise_offset_trains_with_the_offset_and_the_noise_left_around_it(
    parts,  # noqa: F811
    image_folder,
    tmp_path,
    capsys,
):
    output_dir = tmp_path / "out"
    trainer, model, processor = train_with_measured_noise(
        parts, image_folder, output_dir, "--noise_offset", "--text_memory_size", "6"
    )
    assert "captions shifted by the modality offset, norm " in capsys.readouterr().out
    corpus = load_dataset_source(parts.corpus)
    expected = estimate_noise_from_data(
        model, processor, corpus, image_folder=image_folder, shift_by_offset=True
    )
    plain = estimate_noise_from_data(model, processor, corpus, image_folder=image_folder)
    assert expected.noise_variance != pytest.approx(plain.noise_variance, rel=1e-3)

    noise = json.loads((output_dir / "config.json").read_text())["training_noise"]
    assert noise["noise_variance"] == pytest.approx(expected.noise_variance, rel=1e-5)
    assert noise["estimate"]["shifted"] is True
    assert noise["modality_offset"] == pytest.approx(expected.modality_offset, abs=1e-6)
    assert trainer.data_collator.modality_offset == pytest.approx(expected.modality_offset, abs=1e-6)
    card = ModelCard.load(output_dir / "README.md").text
    norm = float(torch.tensor(expected.modality_offset).norm())
    assert f"| modality offset | yes, measured on the unlabelled images (norm {norm:.4f})" in card
    assert "around the captions shifted by the measured modality offset" in card

    # The text memory holds the captions where the decoder was trained: shifted by the offset, normalised again.
    offset = torch.tensor(expected.modality_offset, dtype=torch.float32)
    shifted_corpus = torch.nn.functional.normalize(
        torch.tensor(trainer.train_dataset["clip_embeds"][:]) + offset, dim=-1
    )
    assert model.text_memory.shape == (6, 16)
    assert (model.text_memory @ shifted_corpus.T).max(dim=-1).values.min() > 1 - 1e-5


def test_noise_shape_measured_trains_with_the_residuals_shape(parts, image_folder, tmp_path):  # noqa: F811
    output_dir = tmp_path / "out"
    trainer, model, processor = train_with_measured_noise(
        parts,
        image_folder,
        output_dir,
        "--noise_offset",
        "--noise_shape",
        "measured",
        "--save_strategy",
        "steps",
    )  # and a checkpoint at step 2 (--save_steps defaults to 500: the last step saves too)
    expected = estimate_noise_from_data(
        model,
        processor,
        load_dataset_source(parts.corpus),
        image_folder=image_folder,
        shift_by_offset=True,
        measure_shape=True,
    )
    assert torch.equal(trainer.data_collator.noise_shape, expected.noise_shape)
    # the shape itself beside the weights (config.json holds its effective rank); no map in this run
    assert torch.equal(load_file(output_dir / TRAINING_NOISE_FILE)["noise_shape"], expected.noise_shape)
    assert set(load_file(output_dir / TRAINING_NOISE_FILE)) == {"noise_shape"}
    checkpoint_shape = load_file(output_dir / "checkpoint-2" / TRAINING_NOISE_FILE)["noise_shape"]
    assert torch.equal(checkpoint_shape, expected.noise_shape)  # each checkpoint keeps it too
    assert load_modality_map(output_dir) is None
    noise = json.loads((output_dir / "config.json").read_text())["training_noise"]
    rank = expected.as_record()["noise_shape_effective_rank"]
    assert noise["estimate"]["noise_shape_effective_rank"] == pytest.approx(rank)
    assert noise["noise_shape_effective_rank"] == pytest.approx(rank, abs=0.01)
    assert 1 <= rank < 16  # four images: at most four directions
    card = ModelCard.load(output_dir / "README.md").text
    assert (
        "shaped like the unlabelled images' residuals around their best-matching captions (effective rank "
        f"{noise['noise_shape_effective_rank']:g})" in card
    )


def test_noise_map_trains_on_mapped_captions_and_their_memory_is_mapped(
    parts,  # noqa: F811
    image_folder,
    tmp_path,
    capsys,
):
    from modeling_capdec.training.text_memory import attach_text_memory

    output_dir = tmp_path / "out"
    trainer, model, processor = train_with_measured_noise(
        parts, image_folder, output_dir, "--noise_map", "--noise_shape", "measured", "--text_memory_size", "6"
    )
    assert "captions mapped by the measured modality map (ridge " in capsys.readouterr().out
    corpus = load_dataset_source(parts.corpus)
    expected = estimate_noise_from_data(
        model, processor, corpus, image_folder=image_folder, map_captions=True, measure_shape=True
    )
    weight, bias = trainer.data_collator.modality_map
    assert torch.equal(weight, expected.modality_map.as_tensors()[0])
    assert torch.equal(bias, expected.modality_map.as_tensors()[1])
    assert torch.equal(trainer.data_collator.noise_shape, expected.noise_shape)
    assert trainer.data_collator.modality_offset is None  # the map includes the offset
    noise = json.loads((output_dir / "config.json").read_text())["training_noise"]
    assert noise["noise_variance"] == pytest.approx(expected.noise_variance, rel=1e-5)
    assert noise["modality_map"] == "measured"
    assert noise["estimate"]["modality_map_ridge"] == pytest.approx(expected.modality_map.ridge)
    card = ModelCard.load(output_dir / "README.md").text
    assert (
        "| modality offset | replaced by an affine modality map (t → tW + b) fitted on the unlabelled" in card
    )
    assert "around the captions mapped by the measured modality map" in card
    assert "applied to every caption embedding in training (W and b in `training_noise.safetensors`)" in card

    # The map and the shape are saved beside the weights, bit-equal to what the collator drew with.
    saved = load_file(output_dir / TRAINING_NOISE_FILE)
    assert set(saved) == {"modality_map.weight", "modality_map.bias", "noise_shape"}
    assert torch.equal(saved["modality_map.weight"], weight) and torch.equal(saved["modality_map.bias"], bias)
    assert torch.equal(saved["noise_shape"], trainer.data_collator.noise_shape)

    # The memory holds the mapped captions (where the decoder was trained), built in training or attached later.
    mapped_corpus = torch.nn.functional.normalize(
        torch.nn.functional.normalize(torch.tensor(trainer.train_dataset["clip_embeds"][:]), dim=-1) @ weight
        + bias,
        dim=-1,
    )
    assert (model.text_memory @ mapped_corpus.T).max(dim=-1).values.min() > 1 - 1e-5
    attached = attach_text_memory(output_dir, corpus["caption"][:], size=4, output_dir=tmp_path / "other")
    assert attached.text_memory.shape == (4, 16)
    assert (attached.text_memory @ mapped_corpus.T).max(dim=-1).values.min() > 1 - 1e-5
    unmapped = torch.nn.functional.normalize(torch.tensor(trainer.train_dataset["clip_embeds"][:]), dim=-1)
    assert (attached.text_memory @ unmapped.T).max(
        dim=-1
    ).values.max() < 0.999  # it was mapped: not the raw rows
    assert torch.equal(load_modality_map(tmp_path / "other")[0], weight)  # the copy keeps its map
    # A folder without the file (saved before the map was kept) refuses, rather than build an unmapped memory.
    shutil.copytree(output_dir, tmp_path / "old")
    (tmp_path / "old" / TRAINING_NOISE_FILE).unlink()
    with pytest.raises(
        ValueError,
        match=r"mapped by a measured modality map \(--noise_map\), which was not given \(a saved folder",
    ):
        attach_text_memory(tmp_path / "old", ["a red circle"], size=4, output_dir=tmp_path / "third")
    assert not (tmp_path / "third").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--noise_offset"], "--noise_offset measures the modality offset on unlabelled images: it needs"),
        (["--noise_variance", "auto", "--noise_offset"], "it needs --noise_variance auto and --noise_images"),
        (
            [
                "--noise_variance",
                "auto",
                "--noise_offset",
                "--noise_estimator",
                "centroids",
                "--noise_images",
                "IMG",
            ],
            "--noise_offset estimates ε with pseudo_pairs around the shifted captions, got --noise_estimator centroids",
        ),
        (
            [
                "--noise_variance",
                "auto",
                "--noise_offset",
                "--noise_images",
                "IMG",
                "--modality_offset_file",
                "o.json",
            ],
            "--noise_offset measures the modality offset, --modality_offset_file gives one: choose one",
        ),
        (
            ["--noise_variance", "auto", "--noise_images", "IMG", "--modality_offset_file", "o.json"],
            "--noise_variance auto with --modality_offset_file: ε would be measured around the captions without "
            "the offset that training adds",
        ),
        (
            ["--noise_map"],
            "--noise_map fits the modality map on unlabelled images: it needs --noise_variance auto",
        ),
        (
            [
                "--noise_variance",
                "auto",
                "--noise_map",
                "--noise_images",
                "IMG",
                "--noise_estimator",
                "centroids",
            ],
            "--noise_map fits the map on pseudo-pairs and estimates ε around the mapped captions, got "
            "--noise_estimator centroids",
        ),
        (
            ["--noise_variance", "auto", "--noise_map", "--noise_offset", "--noise_images", "IMG"],
            "--noise_map replaces the modality offset (the map includes one): drop --noise_offset",
        ),
        (
            ["--noise_variance", "0.01", "--noise_shape", "measured"],
            "--noise_shape measured measures the shape on unlabelled images: it needs --noise_variance auto",
        ),
        (
            ["--noise_variance", "auto", "--noise_shape", "measured", "--noise_images", "IMG"]
            + ["--noise_type", "uniform"],
            "it needs --noise_type gaussian and the pseudo_pairs estimator (got uniform, None)",
        ),
    ],
)
def test_noise_offset_settings_are_checked_before_training(parts, image_folder, tmp_path, flags, message):  # noqa: F811
    flags = [str(image_folder) if flag == "IMG" else flag for flag in flags]
    with pytest.raises(ValueError, match=re.escape(message)):
        main(cli(parts, tmp_path / "out", "--max_steps", "1", *flags))
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_auto_noise_settings_are_checked_before_training(parts, image_folder, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="--noise_images only matter"):
        main(cli(parts, tmp_path / "out", "--max_steps", "1", "--noise_images", str(image_folder)))
    with pytest.raises(FileNotFoundError, match="--noise_images: image folder not found: /nowhere"):
        main(
            cli(
                parts,
                tmp_path / "out",
                "--max_steps",
                "1",
                "--noise_variance",
                "auto",
                "--noise_images",
                "/nowhere",
            )
        )
    # A corpus of one caption per row has no groups: the corpus-only estimator says what it needs.
    with pytest.raises(ValueError, match="No group holds two captions"):
        main(cli(parts, tmp_path / "out", "--max_steps", "1", "--noise_variance", "auto"))
    with pytest.raises(ValueError, match="--text_memory_size with --lora_r"):
        main(cli(parts, tmp_path / "out", "--text_memory_size", "4", "--lora_r", "2"))
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_estimate_noise_command_reports_every_applicable_estimator(parts, image_folder, tmp_path, capsys):  # noqa: F811
    grouped = tmp_path / "grouped.jsonl"
    grouped.write_text(
        json.dumps({"captions": ["a dog running on the beach", "a dog on the sand"]})
        + "\n"
        + json.dumps({"captions": ["a cat sleeping on a red sofa", "a cat on a couch"]})
        + "\n"
    )
    base = f"--clip_model {parts.clip} --decoder_model {parts.gpt2} --caption_column captions".split()
    estimates = estimate_noise_main(base + ["--train_file", str(grouped)])
    printed = capsys.readouterr().out
    assert [e.estimator for e in estimates] == ["caption_groups"]
    assert (
        f"--noise_variance auto would use: ε = {estimates[0].noise_variance:.4g} (caption_groups" in printed
    )
    assert "4 captions" in printed and "2 caption groups" in printed

    offset_file = tmp_path / "offset.json"
    estimates = estimate_noise_main(
        base
        + ["--train_file", str(grouped), "--noise_images", str(image_folder)]
        + ["--modality_offset_output", str(offset_file)]
    )
    assert [e.estimator for e in estimates] == ["pseudo_pairs", "centroids", "caption_groups"]
    offset = json.loads(offset_file.read_text())["modality_offset"]
    assert torch.allclose(torch.tensor(offset), torch.tensor(estimates[0].modality_offset))

    # --noise_offset: first the estimate it trains with (around the shifted captions), then the plain one.
    capsys.readouterr()
    estimates = estimate_noise_main(
        base + ["--train_file", str(grouped), "--noise_images", str(image_folder), "--noise_offset"]
    )
    printed = capsys.readouterr().out
    assert [(e.estimator, e.shifted) for e in estimates] == [
        ("pseudo_pairs", True),
        ("pseudo_pairs", False),
        ("centroids", False),
        ("caption_groups", False),
    ]
    first = printed.splitlines()[0]
    assert first.startswith(
        f"--noise_variance auto --noise_offset would use: ε = {estimates[0].noise_variance:.4g}"
    )
    assert "4 images, captions shifted by the modality offset, norm " in first

    estimates = estimate_noise_main(
        base
        + ["--train_file", str(grouped), "--noise_images", str(image_folder), "--noise_shape", "measured"]
    )
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("--noise_variance auto --noise_shape measured would use: ε = ")
    rank = estimates[0].as_record()["noise_shape_effective_rank"]
    assert first.endswith(f"4 images, noise shaped like the residuals, effective rank {rank:.1f})")
    assert estimates[1].noise_shape is None and estimates[1].estimator == "pseudo_pairs"

    # --noise_map: first the estimate around the mapped captions, then the plain one.
    estimates = estimate_noise_main(
        f"--clip_model {parts.clip} --decoder_model {parts.gpt2} --train_file {parts.corpus}".split()
        + ["--noise_images", str(image_folder), "--noise_map"]
    )
    first = next(line for line in capsys.readouterr().out.splitlines() if "would use" in line)
    ridge = estimates[0].modality_map.ridge
    assert first.startswith(
        f"--noise_variance auto --noise_map would use: ε = {estimates[0].noise_variance:.4g}"
    )
    assert first.endswith(f"4 images, captions mapped by the measured modality map (ridge {ridge:.3g}))")
    assert estimates[1].modality_map is None and estimates[1].estimator == "pseudo_pairs"


def test_resuming_measures_the_noise_again_and_refuses_other_noise(parts, image_folder, tmp_path):  # noqa: F811
    flags = ["--noise_map", "--noise_shape", "measured", "--save_strategy", "steps"]
    train_with_measured_noise(parts, image_folder, tmp_path / "out", *flags)
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / TRAINING_NOISE_FILE).is_file()

    def resume(output_dir, images, *extra):
        return main(
            cli(parts, output_dir, "--max_steps", "3", "--save_strategy", "no", "--noise_variance", "auto")
            + ["--noise_images", str(images), *extra, "--resume_from_checkpoint", str(checkpoint)]
        )

    # The same corpus and images: the same noise, measured again, and the run goes on.
    assert resume(tmp_path / "same", image_folder, *flags[:3]).state.global_step == 3
    # Fewer images since: another map, shape and ε; the run stops before training, naming them.
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    for path in sorted(image_folder.iterdir())[:3]:
        shutil.copy(path, fewer / path.name)
    with pytest.raises(
        ValueError, match=r"Cannot resume from .*checkpoint-2: the noise measured now"
    ) as error:
        resume(tmp_path / "other", fewer, *flags[:3])
    message = str(error.value)
    assert "modality_map.weight (training_noise.safetensors)" in message and "noise_shape" in message
    assert re.search(r"ε \S+ now, \S+ in the checkpoint", message)
    assert "--noise_images or a --noise_* flag changed" in message
    assert not (tmp_path / "other" / "model.safetensors").exists()
    # A checkpoint written before the tensors were kept: its config still tells a dropped --noise_shape.
    (checkpoint / TRAINING_NOISE_FILE).unlink()
    assert resume(tmp_path / "old", image_folder, *flags[:3]).state.global_step == 3
    with pytest.raises(ValueError, match=r"noise_shape_effective_rank None now, [\d.]+ in the checkpoint"):
        resume(tmp_path / "old2", image_folder, "--noise_map")
