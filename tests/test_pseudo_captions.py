"""`processing.pseudo_captions`: a trained model's own captions of unlabelled images, and the self-training run
they feed (`train_capdec.py --mode supervised --init_from MODEL --train_file pseudo.jsonl`)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from modeling_capdec.evaluation.captioning import caption_images
from processing.pseudo_captions import main as pseudo_captions_main
from train_capdec import main as train_main


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory, image_files):
    folder = tmp_path_factory.mktemp("unlabelled")
    (folder / "more").mkdir()
    for index, path in enumerate(image_files):  # one in a subfolder: the folder is searched recursively
        shutil.copy(path, folder / ("more" if index == 3 else ".") / f"{index}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("rerank", [1, 3])
def test_each_image_gets_the_caption_the_model_gives_it(
    saved_dir, model, processor, unlabelled, tmp_path, rerank
):
    output = tmp_path / "pseudo.jsonl"
    pseudo_captions_main(
        f"--model {saved_dir} --images {unlabelled} --clip_rerank {rerank} --max_new_tokens 6 "
        f"--batch_size 3 --output_jsonl {output}".split()
    )
    rows = read_jsonl(output)
    files = sorted(str(path.resolve()) for path in unlabelled.rglob("*.png"))
    assert [row["image"] for row in rows] == files  # absolute paths, every image once, the text file skipped
    decoding = {"clip_rerank": rerank} if rerank > 1 else {}
    expected = caption_images(model, processor, files, batch_size=4, max_new_tokens=6, **decoding)
    assert [row["caption"] for row in rows] == expected
    if rerank == 1:  # greedy: what generate gives image by image
        with torch.inference_mode():
            pixel_values = processor(images=files[0], return_tensors="pt")["pixel_values"]
            assert (
                rows[0]["caption"]
                == processor.batch_decode(model.generate(pixel_values=pixel_values, max_new_tokens=6))[0]
            )


def test_the_captions_train_the_model_on_image_embeddings(saved_dir, unlabelled, tmp_path):
    corpus = tmp_path / "pseudo.jsonl"
    pseudo_captions_main(
        f"--model {saved_dir} --images {unlabelled} --max_new_tokens 6 --output_jsonl {corpus}".split()
    )
    output_dir = tmp_path / "self_trained"
    trainer = train_main(
        f"--mode supervised --init_from {saved_dir} --train_file {corpus} --image_column image "
        f"--output_dir {output_dir} --cache_dir {tmp_path / 'cache'} --max_steps 2 --per_device_train_batch_size 2 "
        "--learning_rate 1e-2 --save_strategy no --disable_tqdm true --report_to none --use_cpu "
        "--dataloader_pin_memory false".split()
    )
    assert trainer.state.global_step == 2
    before, after = load_file(saved_dir / "model.safetensors"), load_file(output_dir / "model.safetensors")
    assert before.keys() == after.keys()
    changed = [key for key in before if not torch.equal(before[key], after[key])]
    assert changed and all(not key.startswith("clip.") for key in changed)  # CLIP stays frozen
    assert "supervised on CLIP image embeddings" in (output_dir / "README.md").read_text()


def test_bad_arguments_are_refused_by_name(saved_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--clip_rerank must be at least 1 \(1: greedy\), got 0"):
        pseudo_captions_main(
            f"--model {saved_dir} --images {tmp_path} --clip_rerank 0 --output_jsonl x".split()
        )
    with pytest.raises(ValueError, match=r"holds no image files"):
        pseudo_captions_main(
            f"--model {saved_dir} --images {tmp_path} --output_jsonl {tmp_path / 'x.jsonl'}".split()
        )
    with pytest.raises(ValueError, match=r"--output_dir and/or --output_jsonl"):
        pseudo_captions_main(f"--model {saved_dir} --images {tmp_path}".split())
