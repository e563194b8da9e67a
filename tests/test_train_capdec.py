"""train_capdec.py end to end with tiny CLIP / GPT-2 folders: training, saving, resuming, accelerate, errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from modeling_capdec import CapDecForConditionalGeneration, CapDecProcessor
from modeling_capdec.commands.recipes import parse_recipe_and_args
from modeling_capdec.evaluation.captioning import caption_images
from tests.tiny_models import CAPTIONS, tiny_model, tiny_processor
from train_capdec import ARGUMENT_CLASSES, main

REPO = Path(__file__).resolve().parents[1]


def parse_arguments(argv: list[str]) -> tuple:
    return parse_recipe_and_args(ARGUMENT_CLASSES, argv)


# One intra-op thread: on a shared 2-core machine two threads contend with the other jobs, and the tiny models'
# steps get tens of times slower (measured: 24 steps in 0.6 s with one thread, 25 s with two under load).
SUBPROCESS_ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONPATH": str(REPO),
    "OMP_NUM_THREADS": "1",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> SimpleNamespace:
    """Tiny CLIP and GPT-2 folders (what --clip_model / --decoder_model point at), a corpus and an eval set."""
    root = tmp_path_factory.mktemp("train_parts")
    processor = tiny_processor()
    model = tiny_model(processor)
    model.clip.save_pretrained(root / "clip")
    processor.image_processor.save_pretrained(root / "clip")
    processor.clip_tokenizer.save_pretrained(root / "clip")
    model.decoder.save_pretrained(root / "gpt2")
    processor.tokenizer.save_pretrained(root / "gpt2")
    (root / "corpus.jsonl").write_text("".join(json.dumps({"caption": c}) + "\n" for c in CAPTIONS))
    rng = np.random.default_rng(0)
    eval_rows = []
    for index in range(4):
        path = root / f"image{index}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        eval_rows.append(
            {"image_id": index, "image_path": str(path), "captions": CAPTIONS[index : index + 2]}
        )
    (root / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in eval_rows))
    return SimpleNamespace(
        root=root,
        clip=str(root / "clip"),
        gpt2=str(root / "gpt2"),
        corpus=str(root / "corpus.jsonl"),
        eval=str(root / "eval.jsonl"),
    )


def cli(parts: SimpleNamespace, output_dir: Path, *extra: str) -> list[str]:
    """Arguments of a tiny run; the paths of the tmp folders hold no spaces, so a split string reads best."""
    return [
        *f"--clip_model {parts.clip} --decoder_model {parts.gpt2} --train_file {parts.corpus}".split(),
        *f"--output_dir {output_dir} --cache_dir {parts.root / 'cache'}".split(),
        *"--prefix_length 4 --clip_length 4 --num_mapping_layers 2 --per_device_train_batch_size 4".split(),
        *"--learning_rate 1e-2 --optim adamw_torch --seed 0 --disable_tqdm true --dataloader_pin_memory false".split(),
        *extra,
    ]


@pytest.fixture(scope="module")
def run(parts, tmp_path_factory) -> SimpleNamespace:
    output_dir = tmp_path_factory.mktemp("run") / "out"
    trainer = main(
        cli(parts, output_dir, *"--max_steps 24 --logging_steps 1 --save_strategy no".split())
        + f"--eval_file {parts.eval} --eval_metrics BLEU CIDEr --eval_strategy steps --eval_steps 12".split()
        + "--metric_for_best_model CIDEr --generation_max_length 8".split()
    )
    return SimpleNamespace(trainer=trainer, output_dir=output_dir)


def test_loss_goes_down(run):
    losses = [entry["loss"] for entry in run.trainer.state.log_history if "loss" in entry]
    assert len(losses) == 24
    start, end = np.mean(losses[:3]), np.mean(losses[-3:])
    print(f"loss: first 3 steps {start:.3f}, last 3 steps {end:.3f}")
    assert end < 0.7 * start


def test_eval_metrics_are_logged(run):
    evals = [entry for entry in run.trainer.state.log_history if "eval_CIDEr" in entry]
    assert [entry["step"] for entry in evals] == [12, 24] and "eval_BLEU-4" in evals[0]
    eval_results = json.loads((run.output_dir / "eval_results.json").read_text())
    assert {"eval_CIDEr", "eval_BLEU-1"} <= set(eval_results)
    predictions = json.loads((run.output_dir / "eval_predictions.json").read_text())
    assert [entry["image_id"] for entry in predictions] == [0, 1, 2, 3]


def test_saved_folder_has_a_filled_model_card_and_captions(run, image_files):
    card = (run.output_dir / "README.md").read_text()
    assert card.startswith("---\n") and "$" not in card and "{{" not in card
    metadata = ModelCard(card).data  # the front matter, read as the Hub reads it
    assert (metadata.library_name, metadata.pipeline_tag, metadata.license) == (
        "transformers",
        "image-to-text",
        "mit",
    )
    assert metadata.model_name == "out" and {r.metric_type for r in metadata.eval_results} >= {
        "bleu-1",
        "cider",
    }
    cider = next(r.metric_value for r in metadata.eval_results if r.metric_type == "cider")
    assert f"{cider:.1f}" in card.split("## Evaluation")[1]  # the table and the model-index agree
    for expected in ("corpus.jsonl", "ε = 0.016 (std 0.126)", "transformer, 2 layers", "| BLEU-1 |", "Bias"):
        assert expected in card
    model = CapDecForConditionalGeneration.from_pretrained(run.output_dir)
    processor = CapDecProcessor.from_pretrained(run.output_dir)
    assert model.config.training_noise["noise_variance"] == 0.016 and model.config.prefix_length == 4
    trained = run.trainer.model.clip_project.state_dict()
    for name, tensor in model.clip_project.state_dict().items():
        torch.testing.assert_close(tensor, trained[name].cpu())
    captions = caption_images(model, processor, image_files[:2], max_new_tokens=8)
    assert len(captions) == 2 and all(isinstance(caption, str) for caption in captions)
    assert (run.output_dir / "modeling_capdec.py").is_file()  # Hub-ready: the code travels with the weights


# The speed options that change how a step runs on any device (on CUDA, bf16 is added by the speed defaults).
SPEED_OPTIONS = (
    "--optim",
    "adamw_torch_fused",
    "--pad_to_buckets",
    "8",
    "16",
    "--dataloader_num_workers",
    "2",
)


@pytest.mark.parametrize("options", [(), SPEED_OPTIONS], ids=["default", "speed_options"])
def test_resume_after_sigkill_matches_an_uninterrupted_run(parts, tmp_path, options):
    def arguments(output_dir: Path) -> list[str]:
        # 30 captions in batches of 4: 8 steps per epoch, so checkpoint-10 lies in the second epoch (whose noise
        # differs from the first's) and the resumed run crosses no epoch boundary it has not seen.
        return cli(
            parts, output_dir, "--max_steps", "14", "--save_steps", "10", "--logging_steps", "2", *options
        )

    # The killed run sleeps in every step so the kill lands mid-training, after checkpoint-10 and before the end.
    slow_main = (
        "import sys, time\n"
        "import train_capdec\n"
        "step = train_capdec.CapDecTrainer.training_step\n"
        "train_capdec.CapDecTrainer.training_step = lambda self, *a, **k: (time.sleep(0.5), step(self, *a, **k))[1]\n"
        "train_capdec.main(sys.argv[1:])\n"
    )
    killed_dir = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", slow_main, *arguments(killed_dir)],
            cwd=REPO,
            env=SUBPROCESS_ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 240
        while not (killed_dir / "checkpoint-10" / "trainer_state.json").exists():  # written last
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint-10 after 240 s"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed_dir / "model.safetensors").exists()  # it never reached the end

    main(arguments(killed_dir) + ["--resume_from_checkpoint", str(killed_dir / "checkpoint-10")])
    reference_dir = tmp_path / "reference"
    main(arguments(reference_dir))

    resumed, reference = (
        load_file(killed_dir / "model.safetensors"),
        load_file(reference_dir / "model.safetensors"),
    )
    assert resumed.keys() == reference.keys()
    difference = max((resumed[name] - reference[name]).abs().max().item() for name in reference)
    print(f"resumed vs uninterrupted: max |weight difference| = {difference:.3g}")
    # Data order (seeded sampler), dropout (Trainer's saved RNG state) and the noise (a function of seed, epoch
    # and example id) all replay exactly, so the weights match to the bit.
    assert difference == 0.0


def test_speed_options_keep_the_float32_loss_trajectory(parts, tmp_path):
    # The old path (foreach AdamW, each batch padded to its longest caption, no workers) against the speed options:
    # the same batches and noise, padding masked, so the losses agree to float32 rounding.
    def losses(name: str, *extra: str) -> list[float]:
        trainer = main(
            cli(parts, tmp_path / name, *"--max_steps 8 --logging_steps 1 --save_strategy no".split(), *extra)
        )
        return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    reference, fast = losses("reference"), losses("fast", *SPEED_OPTIONS)
    assert len(reference) == len(fast) == 8
    print(
        f"largest loss difference over 8 steps: {max(abs(a - b) for a, b in zip(reference, fast, strict=True)):.2g}"
    )
    np.testing.assert_allclose(fast, reference, rtol=1e-4, atol=1e-5)


def test_cuda_speed_defaults_change_only_settings_left_at_their_defaults(monkeypatch):
    _, _, args = parse_arguments(["--output_dir", "out"])
    assert args.speed_defaults_applied == {} and not args.bf16  # this machine has no CUDA device
    assert args.logging_nan_inf_filter is False  # no per-step host sync anywhere
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert args._apply_speed_defaults() == {"bf16": True, "dataloader_num_workers": 2}
    assert args.bf16 and args.dataloader_num_workers == 2
    for given, expected in (
        (["--dataloader_num_workers", "6"], {"bf16": True}),  # a value given is kept
        (["--fp16"], {"dataloader_num_workers": 2}),  # fp16 asked: no bf16
        (["--speed_defaults", "false"], {}),
        (["--use_cpu"], {}),
    ):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        _, _, args = parse_arguments(["--output_dir", "out", *given])
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert args._apply_speed_defaults() == expected, given


def test_torch_compile_trains_with_length_buckets(parts, tmp_path):
    # --torch_compile without a padding option pads to length buckets, so the compiled graphs are reused. The
    # aot_eager backend traces the model as inductor does (dynamo, forward and backward graphs) without generating
    # C++: with inductor, the tiny model's 3 steps did not finish within a 15-minute pytest time limit (together
    # with the two resume tests) on the shared 2-core CPU at load average 9-10.
    _, data_args, args = parse_arguments(cli(parts, tmp_path, "--torch_compile", "true"))
    assert data_args.padding_kwargs(args.torch_compile)["pad_to_buckets"] == [16, 24, 32, 48, 65]
    trainer = main(
        cli(
            parts,
            tmp_path / "compiled",
            *"--max_steps 3 --logging_steps 1 --save_strategy no".split(),
            "--torch_compile",
            "true",
            "--torch_compile_backend",
            "aot_eager",
        )
    )
    assert trainer.data_collator.pad_to_buckets == (16, 24, 32, 48, 65)
    assert len([entry for entry in trainer.state.log_history if "loss" in entry]) == 3


def test_accelerate_launch_two_processes(parts, tmp_path):
    # accelerate 1.15's `launch --cpu --num_processes 2` starts ONE process (several CPU processes need mpirun);
    # `--multi_gpu` starts two with torchrun, and `--use_cpu` makes them a gloo process group on a CPU machine.
    output_dir, cache_dir = tmp_path / "ddp", tmp_path / "cache"
    accelerate = str(Path(sys.executable).parent / "accelerate")
    command = [accelerate, *"launch --multi_gpu --num_processes 2 train_capdec.py".split()]
    command += cli(parts, output_dir, *"--max_steps 2 --save_strategy no --use_cpu".split())
    command += f"--cache_dir {cache_dir} --eval_file {parts.eval} --eval_metrics BLEU".split()
    result = subprocess.run(
        command, cwd=REPO, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    card = (output_dir / "README.md").read_text()
    assert "4 per device × 2 processes" in card  # the card records the world size
    # Process 0 embedded the corpus; process 1 waited and found the same fingerprint, so one cache file exists.
    assert len(list(cache_dir.glob("embeds-*.arrow"))) == 1
    # Each process captioned half of the eval images; the gathered predictions keep the eval set's order.
    predictions = json.loads((output_dir / "eval_predictions.json").read_text())
    assert [entry["image_id"] for entry in predictions] == [0, 1, 2, 3]
    # The logged score is the toolkit's score of the gathered predictions (not a partial or duplicated set).
    from modeling_capdec.evaluation.metrics import compute_caption_metrics

    references = {
        row["image_id"]: row["captions"] for row in map(json.loads, Path(parts.eval).read_text().splitlines())
    }
    rescored = compute_caption_metrics(
        {p["image_id"]: p["caption"] for p in predictions}, references, metrics=["BLEU"]
    )
    logged = json.loads((output_dir / "all_results.json").read_text())["eval_BLEU-1"]
    assert logged == pytest.approx(rescored["BLEU-1"], abs=1e-9)
    assert (output_dir / "model.safetensors").is_file()


def test_recipes_parse():
    recipes = sorted((REPO / "configuration").glob("*.json"))
    paper_runs = {
        "coco_text_only",
        "coco_supervised",
        "flickr30k_text_only",
        "flickrstyle_romantic",
        "flickrstyle_humorous",
    }
    assert paper_runs | {f"{run}_vit_b32" for run in paper_runs} <= {recipe.stem for recipe in recipes}
    for recipe in recipes:  # every recipe in the folder, also those of other tools (demo)
        parse_arguments([str(recipe)])
    model_args, data_args, args = parse_arguments(
        [str(REPO / "configuration" / "coco_text_only.json"), "--max_steps", "3"]
    )
    assert (model_args.clip_model, model_args.decoder_model, model_args.mapping_type) == (
        "timm/resnet50x4_clip.openai",  # the paper's CLIP, RN50x4
        "gpt2",
        "transformer",
    )
    for run in paper_runs:  # each paper run and its ViT-B/32 variant differ only in CLIP, output and comment
        paper = json.loads((REPO / "configuration" / f"{run}.json").read_text())
        vit = json.loads((REPO / "configuration" / f"{run}_vit_b32.json").read_text())
        assert (paper["clip_model"], vit["clip_model"]) == (
            "timm/resnet50x4_clip.openai",
            "openai/clip-vit-base-patch32",
        )
        assert vit["output_dir"] == paper["output_dir"] + "-vit-b32"
        different = {key for key in paper.keys() | vit.keys() if paper.get(key) != vit.get(key)}
        assert different == {"_comment", "clip_model", "output_dir"}
    assert (model_args.prefix_length, model_args.clip_length, model_args.num_mapping_layers) == (40, 40, 8)
    assert (args.learning_rate, args.warmup_steps, args.num_train_epochs) == (2e-5, 5000, 10)
    assert (args.per_device_train_batch_size, args.noise_variance, args.max_steps) == (40, 0.016, 3)
    assert args.remove_unused_columns is False


def test_recipe_errors(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("_comment: fine\nclip_model: a\nlerning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown keys \['lerning_rate'\]"):
        parse_arguments([str(recipe)])
    with pytest.raises(FileNotFoundError, match="Recipe not found"):
        parse_arguments([str(tmp_path / "missing.json")])


def test_input_errors(parts, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="nothing_here.jsonl"):
        main(cli(parts, out) + ["--train_file", str(tmp_path / "nothing_here.jsonl")])
    with pytest.raises(
        ValueError, match=r"caption column 'text' is not in the corpus; its columns are \['caption'\]"
    ):
        main(cli(parts, out, "--caption_column", "text", "--max_steps", "1"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"caption": ""}\n{"caption": "   "}\n')
    with pytest.raises(
        ValueError, match=r"empty after cleaning: all 2 captions of 2 rows were dropped \(2 empty"
    ):
        main(cli(parts, out, "--max_steps", "1") + ["--train_file", str(empty)])
    no_images = tmp_path / "no_images.jsonl"
    no_images.write_text('{"image_id": 1, "captions": ["a dog"]}\n')
    with pytest.raises(ValueError, match="no image column"):
        main(cli(parts, out, "--eval_file", str(no_images)))
    with pytest.raises(ValueError, match="eval_strategy='steps' needs an eval set"):
        main(cli(parts, out, "--eval_strategy", "steps"))
    with pytest.raises(FileNotFoundError, match="Checkpoint folder not found"):
        main(cli(parts, out, "--max_steps", "1", "--resume_from_checkpoint", str(tmp_path / "checkpoint-9")))


def test_supervised_mode_trains_on_image_embeddings_without_noise(parts, tmp_path):
    output_dir = tmp_path / "supervised"
    trainer = main(
        cli(parts, output_dir, "--max_steps", "2", "--save_strategy", "no", "--mode", "supervised")
        + ["--train_file", parts.eval, "--caption_column", "captions", "--image_column", "image_path"]
    )
    assert trainer.state.global_step == 2 and trainer.data_collator.adds_noise is False
    config = json.loads((output_dir / "config.json").read_text())
    assert (
        config["training_noise"]["noise_variance"] == 0.0
    )  # the ClipCap reference: no noise on image embeddings
    assert "supervised on CLIP image embeddings" in (output_dir / "README.md").read_text()


def test_continue_from_a_capdec_folder_embedding_on_the_fly(run, parts, tmp_path):
    output_dir = tmp_path / "continued"
    trainer = main(
        f"--init_from {run.output_dir} --train_file {parts.corpus} --output_dir {output_dir}".split()
        + f"--cache_dir {parts.root / 'cache'} --embed_on_the_fly --no_train_decoder --max_steps 2".split()
        + "--per_device_train_batch_size 4 --save_strategy no --disable_tqdm true --dataloader_pin_memory false".split()
    )
    model = trainer.model
    assert trainer.state.global_step == 2 and model.config.prefix_length == 4
    assert not any(param.requires_grad for param in model.decoder.parameters())  # only_prefix
    before = CapDecForConditionalGeneration.from_pretrained(run.output_dir)
    torch.testing.assert_close(model.decoder.state_dict(), before.decoder.state_dict())
    mapper_change = max(
        (model.clip_project.state_dict()[name] - value).abs().max().item()
        for name, value in before.clip_project.state_dict().items()
    )
    assert mapper_change > 0
    with pytest.raises(ValueError, match=r"fixes the architecture; do not also set \['prefix_length'\]"):
        main(f"--init_from {run.output_dir} --train_file {parts.corpus} --prefix_length 8".split())


def test_modality_offset_files(parts, tmp_path):
    from safetensors.numpy import save_file

    from modeling_capdec.training.trainer import load_modality_offset

    vector = np.linspace(-1, 1, 16)
    np.save(tmp_path / "offset.npy", vector)
    (tmp_path / "offset.json").write_text(json.dumps({"modality_offset": vector.tolist()}))
    save_file({"modality_offset": vector.astype(np.float32)}, str(tmp_path / "offset.safetensors"))
    for name in ("offset.npy", "offset.json", "offset.safetensors"):
        np.testing.assert_allclose(load_modality_offset(tmp_path / name), vector, rtol=1e-6)
    np.save(tmp_path / "short.npy", vector[:3])
    with pytest.raises(ValueError, match="short.npy has 3 values, expected 16"):
        main(cli(parts, tmp_path / "out", "--modality_offset_file", str(tmp_path / "short.npy")))


def test_non_finite_noise_settings_are_refused_before_training(parts, tmp_path):
    for value in ("inf", "nan", "-1"):
        with pytest.raises(ValueError, match=rf"noise_variance must be a finite number >= 0, got {value}"):
            main(cli(parts, tmp_path / "out", "--max_steps", "1", "--noise_variance", value))
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_nan_step_stops_the_run_and_keeps_the_last_good_checkpoint(parts, tmp_path, monkeypatch, caplog):
    from modeling_capdec.training.collator import CapDecDataCollator
    from modeling_capdec.training.trainer import NonFiniteTrainingError

    collate, calls = CapDecDataCollator.__call__, []

    def poisoned(self, features):
        batch = collate(self, features)
        calls.append(1)
        if len(calls) == 5:  # the batch of step 5: its embeddings, hence loss and gradients, are NaN
            batch["clip_embeds"] = torch.full_like(batch["clip_embeds"], float("nan"))
        return batch

    monkeypatch.setattr(CapDecDataCollator, "__call__", poisoned)
    output_dir = tmp_path / "out"
    arguments = cli(parts, output_dir, *"--max_steps 8 --save_steps 2 --logging_steps 1".split())
    with pytest.raises(
        NonFiniteTrainingError, match=r"stopped at step 5: the loss or gradients are not finite"
    ):
        main(arguments)
    checkpoints = sorted(path.name for path in output_dir.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]
    weights = load_file(output_dir / "checkpoint-4" / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())
    assert not (output_dir / "model.safetensors").exists()  # no final save of a broken run

    # The error names the checkpoint to resume from; resuming (without the poisoned batch) finishes the run.
    monkeypatch.setattr(CapDecDataCollator, "__call__", collate)
    trainer = main(arguments + ["--resume_from_checkpoint", "last"])
    assert trainer.state.global_step == 8


def test_resume_last_skips_half_written_checkpoints(parts, tmp_path, caplog):
    import shutil

    from modeling_capdec.training.noise import save_training_noise
    from modeling_capdec.training.trainer import checkpoint_to_resume

    output_dir = tmp_path / "out"
    main(cli(parts, output_dir, *"--max_steps 2 --save_steps 2".split()))
    good = output_dir / "checkpoint-2"
    # What kill -9 during a save leaves: a folder without trainer_state.json (written last), or with cut files.
    for step, damage in ((4, "no state"), (6, "cut weights"), (8, "cut optimizer"), (10, "no weights")):
        broken = output_dir / f"checkpoint-{step}"
        shutil.copytree(good, broken)
        if damage == "no state":
            (broken / "trainer_state.json").unlink()
        elif damage == "no weights":  # the measured-noise file beside them is not weights
            (broken / "model.safetensors").unlink()
            save_training_noise(broken, noise_shape=torch.eye(4))
        else:
            name = "model.safetensors" if damage == "cut weights" else "optimizer.pt"
            data = (broken / name).read_bytes()
            (broken / name).write_bytes(data[: len(data) // 2])
    args = SimpleNamespace(resume_from_checkpoint="last", output_dir=str(output_dir))
    with caplog.at_level("WARNING"):
        assert checkpoint_to_resume(args) == str(good)
    messages = caplog.text
    assert "checkpoint-10: no model weights" in messages
    assert "checkpoint-8: optimizer.pt is truncated" in messages
    assert "checkpoint-6: model.safetensors cannot be read" in messages
    assert "checkpoint-4: no trainer_state.json" in messages
    args.resume_from_checkpoint = str(output_dir / "checkpoint-4")
    with pytest.raises(ValueError, match=r"Cannot resume from .*checkpoint-4: no trainer_state.json"):
        checkpoint_to_resume(args)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        checkpoint_to_resume(SimpleNamespace(resume_from_checkpoint="last", output_dir=str(empty)))


def test_a_clip_tokenizer_of_another_vocabulary_is_refused_before_training(parts, tmp_path):
    import shutil

    from demo.bpe_tokenizers import train_clip_tokenizer

    clip = tmp_path / "clip"
    shutil.copytree(parts.clip, clip)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (clip / name).unlink(missing_ok=True)
    train_clip_tokenizer(["zebra giraffe elephant"] * 5, vocab_size=280).save_pretrained(clip)
    with pytest.raises(
        ValueError, match=r"tokenizers do not match the model: the CLIP tokenizer has \d+ tokens"
    ):
        main(cli(parts, tmp_path / "out", "--max_steps", "1", "--clip_model", str(clip)))


def test_cleaning_report_is_printed_and_bad_lines_can_be_skipped(parts, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(Path(parts.corpus).read_bytes() + b'{"caption": "caf\xe9"}\n{"caption": broken\n')
    with pytest.raises(
        ValueError, match=r"corpus\.jsonl as json: line 31: byte 0xe9 .*--train_file_encoding"
    ):
        main(cli(parts, tmp_path / "out", "--max_steps", "1") + ["--train_file", str(corpus)])
    main(
        cli(parts, tmp_path / "out", "--max_steps", "1", "--save_strategy", "no")
        + ["--train_file", str(corpus), "--skip_bad_lines"]
    )
    printed = capsys.readouterr().out
    # CAPTIONS is ten captions three times: 30 kept, 20 of them repeats; printed at the default log level.
    assert "Corpus cleaning: 30 rows, 30 captions: kept 30, dropped 0 empty and 0 not text" in printed
    assert "20 of the kept are duplicates" in printed


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--learning_rate", "inf", "--learning_rate must be a finite number, got inf"),
        ("--weight_decay", "nan", "--weight_decay must be a finite number, got nan"),
        ("--max_grad_norm", "inf", "--max_grad_norm must be a finite number, got inf"),
        ("--embedding_batch_size", "0", "--embedding_batch_size must be at least 1, got 0"),
        ("--generation_num_beams", "0", "--generation_num_beams must be at least 1, got 0"),
        ("--max_caption_tokens", "-2", "--max_caption_tokens must be at least 1, got -2"),
        ("--per_device_train_batch_size", "0", "--per_device_train_batch_size must be at least 1, got 0"),
    ],
)
def test_bad_settings_are_refused_by_name(parts, tmp_path, option, value, message):
    with pytest.raises(ValueError, match=message):
        main(cli(parts, tmp_path / "out", "--max_steps", "1", option, value))


def test_several_compressed_and_globbed_corpus_files(parts, tmp_path, capsys):
    import gzip

    lines = Path(parts.corpus).read_text().splitlines(keepends=True)
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "b.jsonl").write_text("".join(lines[10:20]))
    (tmp_path / "shards" / "a.jsonl").write_text("".join(lines[:10]))
    (tmp_path / "rest.jsonl.gz").write_bytes(gzip.compress("".join(lines[20:]).encode()))
    args = cli(parts, tmp_path / "out", "--max_steps", "1", "--save_strategy", "no")
    args[args.index("--train_file") + 1 : args.index("--train_file") + 2] = [
        str(tmp_path / "shards" / "*.jsonl"),
        str(tmp_path / "rest.jsonl.gz"),
    ]
    trainer = main(args)
    assert len(trainer.train_dataset) == 30
    assert "Corpus cleaning: 30 rows, 30 captions: kept 30" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match=r"No data file matches the pattern '.*/shards/\*\.csv'"):
        main(cli(parts, tmp_path / "out") + ["--train_file", str(tmp_path / "shards" / "*.csv")])


def test_recipe_gives_train_file_as_one_string_or_a_list(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train_file: data/captions.jsonl.gz\noutput_dir: out\n")
    _, data_args, _ = parse_arguments([str(recipe), "--use_cpu"])
    assert (data_args.train_file, data_args.train_source) == (
        ["data/captions.jsonl.gz"],
        "data/captions.jsonl.gz",
    )
    recipe.write_text("train_file: [a.jsonl, 'shards/*.jsonl']\noutput_dir: out\n")
    _, data_args, _ = parse_arguments([str(recipe), "--use_cpu"])
    assert data_args.train_source == ["a.jsonl", "shards/*.jsonl"]
    # The command line overrides the recipe's files with its own list.
    _, data_args, _ = parse_arguments([str(recipe), "--use_cpu", "--train_file", "b.jsonl", "c.jsonl"])
    assert data_args.train_source == ["b.jsonl", "c.jsonl"]


def test_training_a_decoder_without_a_pad_token_warns_of_no_special_token_change(parts, tmp_path):  # noqa: F811
    # GPT-2's config has no pad token and the processor pads with EOS; the model's decoder config says so too, so
    # Trainer finds nothing to realign (its warning would suggest that the tokenizer and the model disagree).
    import logging
    import shutil

    decoder = tmp_path / "gpt2"
    shutil.copytree(parts.gpt2, decoder)
    config = json.loads((decoder / "config.json").read_text())
    (decoder / "config.json").write_text(json.dumps({**config, "pad_token_id": None}))  # as gpt2's
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # transformers' loggers do not propagate to the root logger (caplog)
    logging.getLogger("transformers").addHandler(handler)
    try:
        logging.getLogger("transformers.trainer_utils").warning(
            "probe"
        )  # the warning's logger reaches the handler
        assert [record.getMessage() for record in records] == ["probe"]
        trainer = main(
            cli(
                parts,
                tmp_path / "out",
                *"--max_steps 1 --save_strategy no --decoder_model".split(),
                str(decoder),
            )
        )
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not [record for record in records if "has new PAD/BOS/EOS tokens" in record.getMessage()]
    decoder_config = trainer.model.config.get_text_config()
    assert (
        decoder_config.pad_token_id
        == trainer.processing_class.tokenizer.pad_token_id
        == decoder_config.eos_token_id
    )
