"""evaluate_capdec.py and its helpers: eval-set loading, batched captioning (with a fake model), COCO results.

Only `test_predictions_mode_end_to_end` starts METEOR's JVM (~10-20 s); the rest pass `metrics=` without it.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image

import evaluate_capdec
import modeling_capdec
from modeling_capdec.evaluation.captioning import caption_images, read_coco_results, write_coco_results
from modeling_capdec.evaluation.eval_sets import CaptionEvalSet, load_eval_set

REPO_ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = [
    "a man riding a red motorcycle down a dirt road",
    "a woman cutting a large white sheet cake",
    "a young boy holding an umbrella next to a cow",
]


class FakeProcessor:
    """pixel_values = each image's top-left red value, which the fake model turns into a caption index."""

    def __call__(self, images, return_tensors="pt"):
        return {"pixel_values": torch.tensor([[float(image.getpixel((0, 0))[0])] for image in images])}

    def batch_decode(self, generated):
        return [CAPTIONS[int(row[0])] for row in generated]


class FakeModel:
    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, captions_per_image: int = 1):
        self.calls = []
        self.captions_per_image = captions_per_image

    def generate(self, pixel_values, **kwargs):
        self.calls.append((len(pixel_values), kwargs))
        return pixel_values.long().repeat_interleave(self.captions_per_image, dim=0)


def _image(index: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (index, 0, 0))


@pytest.fixture
def karpathy(tmp_path) -> tuple[Path, Path]:
    """A Karpathy-split JSON: 3 test images (tiny PNGs under image_root/val2014) and 1 train image."""
    image_root = tmp_path / "coco"
    (image_root / "val2014").mkdir(parents=True)
    images = []
    for index, caption in enumerate(CAPTIONS):
        filename = f"COCO_val2014_{index:012d}.png"
        _image(index).save(image_root / "val2014" / filename)
        sentences = [{"raw": caption.capitalize() + "."}, {"raw": caption}]
        images.append(
            {
                "filepath": "val2014",
                "filename": filename,
                "imgid": index,
                "cocoid": 100 + index,
                "split": "test",
            }
            | {"sentences": sentences}
        )
    images.append({"filename": "train.png", "imgid": 9, "split": "train", "sentences": [{"raw": "a dog"}]})
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images}))
    return path, image_root


def test_load_karpathy_split(karpathy):
    path, image_root = karpathy
    eval_set = load_eval_set(path, split="test", image_root=image_root)
    assert eval_set.image_ids == [100, 101, 102]
    assert eval_set.references[0] == ["A man riding a red motorcycle down a dirt road.", CAPTIONS[0]]
    assert eval_set.images[2] == str(image_root / "val2014" / "COCO_val2014_000000000002.png")
    assert load_eval_set(path, split="test", max_samples=2, references_only=True).images is None
    assert len(load_eval_set(path, split="test", max_samples=2, references_only=True)) == 2
    with pytest.raises(ValueError, match=r"No images of split 'val'.*splits present: \['test', 'train'\]"):
        load_eval_set(path, split="val", references_only=True)
    with pytest.raises(ValueError, match=r"dataset_coco.json lists image files: give image_root"):
        load_eval_set(path, split="test")


def test_missing_image_file_names_index_and_path(karpathy):
    path, image_root = karpathy
    missing = image_root / "val2014" / "COCO_val2014_000000000001.png"
    missing.unlink()
    with pytest.raises(
        FileNotFoundError, match=rf"Eval image 1 \(image id 101\) of .* does not exist: '{missing}'"
    ):
        load_eval_set(path, split="test", image_root=image_root)


def test_load_coco_captions_file(tmp_path):
    data = {
        "images": [{"id": 7, "file_name": "a.jpg"}, {"id": 3, "file_name": "b.jpg"}],
        "annotations": [
            {"image_id": 3, "id": 1, "caption": "a cat"},
            {"image_id": 7, "id": 2, "caption": "a dog"},
            {"image_id": 3, "id": 3, "caption": "a kitten"},
        ],
    }
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps(data))
    assert load_eval_set(path, references_only=True).references_by_id() == {
        7: ["a dog"],
        3: ["a cat", "a kitten"],
    }
    data["images"].append({"id": 5, "file_name": "c.jpg"})
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="image id 5 has no caption"):
        load_eval_set(path, references_only=True)


def test_dataset_eval_set_and_missing_columns(tmp_path):
    features = datasets.Features(
        {"image": datasets.Image(), "captions": datasets.Sequence(datasets.Value("string"))}
    )
    rows = {"image": [_image(i) for i in range(3)], "captions": [[c] for c in CAPTIONS]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "eval")

    eval_set = load_eval_set(str(tmp_path / "eval"), max_samples=2)
    assert eval_set.image_ids == [0, 1]  # no image_id column: row numbers
    assert caption_images(FakeModel(), FakeProcessor(), eval_set.images) == CAPTIONS[:2]
    with pytest.raises(ValueError, match=r"image column 'img' is not in .*\['image', 'captions'\]"):
        load_eval_set(str(tmp_path / "eval"), image_column="img")
    with pytest.raises(ValueError, match=r"captions column 'caption' is not in"):
        load_eval_set(str(tmp_path / "eval"), captions_column="caption")
    datasets.DatasetDict({"test": datasets.load_from_disk(tmp_path / "eval")}).save_to_disk(tmp_path / "dict")
    assert len(load_eval_set(str(tmp_path / "dict"), split="test")) == 3
    with pytest.raises(ValueError, match=r"No split 'val' in .*; splits: \['test'\]"):
        load_eval_set(str(tmp_path / "dict"), split="val")


def test_caption_images_batches_in_order(karpathy):
    path, image_root = karpathy
    images = load_eval_set(path, image_root=image_root).images * 2  # 6 images
    model = FakeModel()
    captions = caption_images(model, FakeProcessor(), images, batch_size=4, max_new_tokens=12, num_beams=3)
    assert captions == CAPTIONS * 2
    assert model.calls == [
        (4, {"max_new_tokens": 12, "num_beams": 3}),
        (2, {"max_new_tokens": 12, "num_beams": 3}),
    ]
    with pytest.raises(ValueError, match="returned 4 captions for a batch of 2 images"):
        caption_images(FakeModel(captions_per_image=2), FakeProcessor(), images[:2])


def test_coco_results_round_trip_and_duplicates(tmp_path):
    write_coco_results({100: "a dog", "x": "a cat"}, tmp_path / "out" / "predictions.json")
    assert json.loads((tmp_path / "out" / "predictions.json").read_text()) == [
        {"image_id": 100, "caption": "a dog"},
        {"image_id": "x", "caption": "a cat"},
    ]
    (tmp_path / "twice.json").write_text(
        json.dumps([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}])
    )
    with pytest.raises(ValueError, match=r"image id 1 has two captions \(again at entry 1\)"):
        read_coco_results(tmp_path / "twice.json")


def test_eval_set_rejects_repeated_image_ids():
    with pytest.raises(ValueError, match="Image id 4 appears twice"):
        CaptionEvalSet(image_ids=[4, 4], references=[["a"], ["b"]])


def test_main_captions_and_scores_with_a_fake_model(karpathy, tmp_path, monkeypatch):
    path, image_root = karpathy

    created = []

    class FakeModelClass:
        @staticmethod
        def from_pretrained(name):
            assert name == "fake-capdec"
            model = FakeModel()
            model.to = lambda device: model
            model.eval = lambda: model
            created.append(model)
            return model

    class FakeProcessorClass:
        @staticmethod
        def from_pretrained(name):
            return FakeProcessor()

    monkeypatch.setattr(modeling_capdec, "CapDecForConditionalGeneration", FakeModelClass, raising=False)
    monkeypatch.setattr(modeling_capdec, "CapDecProcessor", FakeProcessorClass, raising=False)
    args = evaluate_capdec.EvaluateArguments(
        model="fake-capdec",
        eval_file=str(path),
        image_root=str(image_root),
        output_dir=str(tmp_path / "eval"),
        batch_size=2,
        num_beams=3,
        max_new_tokens=7,
        metrics=["BLEU", "CIDEr"],
    )
    metrics = evaluate_capdec.evaluate(args)
    # the generation settings reach the model, batch by batch
    assert created[0].calls == [
        (2, {"num_beams": 3, "max_new_tokens": 7}),
        (1, {"num_beams": 3, "max_new_tokens": 7}),
    ]

    results = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    assert results == [{"image_id": 100 + i, "caption": c} for i, c in enumerate(CAPTIONS)]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == metrics
    assert metrics["BLEU-4"] == pytest.approx(1.0, abs=1e-6)  # each caption equals a reference


def test_main_predictions_mode_errors_name_the_image(karpathy, tmp_path):
    path, _ = karpathy
    predictions = tmp_path / "predictions.json"
    write_coco_results({100: CAPTIONS[0], 101: CAPTIONS[1]}, predictions)
    args = evaluate_capdec.EvaluateArguments(
        predictions=str(predictions), eval_file=str(path), output_dir=str(tmp_path / "eval")
    )
    with pytest.raises(KeyError, match=r"no prediction for image id\(s\): 102"):
        evaluate_capdec.evaluate(args)
    with pytest.raises(ValueError, match="either --model .* or --predictions"):
        evaluate_capdec.EvaluateArguments(eval_file=str(path))
    with pytest.raises(ValueError, match="Give the eval set with --eval_file"):
        evaluate_capdec.EvaluateArguments(model="m")
    with pytest.raises(ValueError, match="lists image files: give image_root"):
        evaluate_capdec.evaluate(evaluate_capdec.EvaluateArguments(model="m", eval_file=str(path)))


def test_predictions_mode_end_to_end(karpathy, tmp_path):
    path, image_root = karpathy
    predictions = tmp_path / "predictions.json"
    # The ids come in another order than the annotation file's, and a caption each reference matches.
    write_coco_results({102: CAPTIONS[2], 100: CAPTIONS[0], 101: CAPTIONS[1]}, predictions)
    output_dir = tmp_path / "eval"
    command = [sys.executable, "evaluate_capdec.py", "--predictions", str(predictions)]
    command += ["--annotations", str(path), "--split", "test", "--output_dir", str(output_dir)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr

    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert set(metrics) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
    # After PTB tokenisation (lower case, no punctuation) both references of each image equal its prediction.
    assert metrics["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["METEOR"] == pytest.approx(1.0)
    assert metrics["ROUGE-L"] == pytest.approx(1.0)
    assert metrics["CIDEr"] == pytest.approx(10.0)
    assert not (output_dir / "predictions.json").exists()  # the input file is not rewritten


def test_caption_length_defaults_to_the_models_own():
    """Without --max_new_tokens the model's default caption length applies (67 tokens, as the original code)."""
    args = evaluate_capdec.EvaluateArguments(predictions="p.json", eval_file="e.json")
    assert args.generate_kwargs() == {"num_beams": 1}
    (parsed,) = evaluate_capdec.parse_recipe_and_args(
        (evaluate_capdec.EvaluateArguments,), ["--model", "m", "--annotations", "a.json", "--limit", "5"]
    )
    assert (parsed.eval_file, parsed.max_samples) == ("a.json", 5)  # the old flag names still work


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--batch_size", "0", "--batch_size must be at least 1, got 0"),
        ("--num_beams", "-1", "--num_beams must be at least 1, got -1"),
        ("--max_new_tokens", "0", "--max_new_tokens must be at least 1, got 0"),
        ("--max_samples", "0", "--max_samples must be at least 1, got 0"),
        ("--clip_rerank", "1", "--clip_rerank is a number of candidates, at least 2; got 1"),
        ("--clip_rerank_tolerance", "-0.5", "--clip_rerank_tolerance must be at least 0, got -0.5"),
        ("--clip_rerank_tolerance", "0.01", "--clip_rerank_tolerance applies to --clip_rerank's candidates"),
    ],
)
def test_bad_settings_are_refused_by_name(tmp_path, option, value, message):
    from evaluate_capdec import main

    with pytest.raises(ValueError, match=message):
        main(["--model", str(tmp_path), "--eval_file", str(tmp_path / "eval.json"), option, value])


def test_clip_rerank_settings():
    arguments = {"predictions": "p.json", "eval_file": "e.json", "clip_rerank": 3}
    assert evaluate_capdec.EvaluateArguments(**arguments).generate_kwargs() == {"clip_rerank": 3}
    wide = evaluate_capdec.EvaluateArguments(**arguments, num_beams=6).generate_kwargs()
    assert wide == {"num_beams": 6, "clip_rerank": 3}
    with pytest.raises(ValueError, match="--clip_rerank 3 needs 3 beams, but --num_beams is 2"):
        evaluate_capdec.EvaluateArguments(**arguments, num_beams=2)
    near = evaluate_capdec.EvaluateArguments(**arguments, clip_rerank_tolerance=0.01).generate_kwargs()
    assert near == {"clip_rerank": 3, "clip_rerank_tolerance": 0.01}


def test_caption_images_with_clip_rerank_chooses_as_the_pipeline(model, processor, images):
    captions = caption_images(model, processor, images, batch_size=3, clip_rerank=4, max_new_tokens=5)
    captioner = modeling_capdec.CapDecImageToTextPipeline(model=model, processor=processor)
    assert captions == [
        out[0]["generated_text"] for out in captioner(images, max_new_tokens=5, clip_rerank=4)
    ]
    # not beam search's own best
    assert captions != caption_images(model, processor, images, num_beams=4, max_new_tokens=5)
    with pytest.raises(ValueError, match="keeps one caption per image: leave num_return_sequences unset"):
        caption_images(model, processor, images, clip_rerank=2, num_return_sequences=2)
    # With a tolerance: the decoder's first beam near CLIP's best, as the pipeline keeps it; here not CLIP's best
    near = caption_images(
        model, processor, images, batch_size=3, clip_rerank=4, clip_rerank_tolerance=0.3, max_new_tokens=5
    )
    assert near == [
        out[0]["generated_text"]
        for out in captioner(images, max_new_tokens=5, clip_rerank=4, clip_rerank_tolerance=0.3)
    ]
    assert near != captions
    with pytest.raises(ValueError, match="clip_rerank_tolerance applies to clip_rerank's candidates"):
        caption_images(model, processor, images, clip_rerank_tolerance=0.1)


# -- training's eval inputs, dtype and sampling with a tiny saved model (issue 14) ---------------------------------
@pytest.fixture
def eval_jsonl(tmp_path, image_files) -> Path:
    """An eval set as training's --eval_file takes it: one JSON line per image (path and references)."""
    rows = [
        {
            "image_id": 10 + index,
            "image_path": path,
            "captions": [CAPTIONS[index % 3], CAPTIONS[(index + 1) % 3]],
        }
        for index, path in enumerate(image_files)
    ]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _evaluate_cli(saved_dir, eval_file, output_dir, *extra: str) -> dict:
    metrics = evaluate_capdec.main(
        ["--model", str(saved_dir), "--eval_file", str(eval_file), "--output_dir", str(output_dir)]
        + ["--device", "cpu", "--batch_size", "3", "--metrics", "BLEU", "CIDEr", *extra]
    )
    return {"metrics": metrics, "predictions": read_coco_results(Path(output_dir) / "predictions.json")}


def test_jsonl_eval_set_end_to_end_with_a_saved_model(saved_dir, eval_jsonl, image_files, tmp_path):
    import gzip

    result = _evaluate_cli(saved_dir, eval_jsonl, tmp_path / "eval")
    model = modeling_capdec.CapDecForConditionalGeneration.from_pretrained(saved_dir).eval()
    processor = modeling_capdec.CapDecProcessor.from_pretrained(saved_dir)
    expected = caption_images(model, processor, image_files)  # the model's own caption length
    assert result["predictions"] == {10 + index: caption for index, caption in enumerate(expected)}
    assert set(result["metrics"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr"}
    # The same eval set compressed, as training's --eval_file reads it too.
    compressed = tmp_path / "eval.jsonl.gz"
    compressed.write_bytes(gzip.compress(eval_jsonl.read_bytes()))
    assert _evaluate_cli(saved_dir, compressed, tmp_path / "eval-gz")["predictions"] == result["predictions"]


def test_dtype_and_sampling_options(saved_dir, eval_jsonl, tmp_path, monkeypatch):
    seen = []
    generate = modeling_capdec.CapDecForConditionalGeneration.generate

    def recording_generate(self, pixel_values=None, **kwargs):
        seen.append((self.dtype, pixel_values.dtype, kwargs))
        return generate(self, pixel_values=pixel_values, **kwargs)

    monkeypatch.setattr(modeling_capdec.CapDecForConditionalGeneration, "generate", recording_generate)
    sampled = [
        "--do_sample",
        "--top_p",
        "0.9",
        "--temperature",
        "1.5",
        "--seed",
        "3",
        "--max_new_tokens",
        "6",
    ]
    first = _evaluate_cli(saved_dir, eval_jsonl, tmp_path / "a", *sampled)["predictions"]
    # The sampling settings reach generate, and the seed makes the sampled captions repeat.
    assert seen[0][2] == {
        "num_beams": 1,
        "max_new_tokens": 6,
        "do_sample": True,
        "top_p": 0.9,
        "temperature": 1.5,
    }
    assert _evaluate_cli(saved_dir, eval_jsonl, tmp_path / "b", *sampled)["predictions"] == first
    seen.clear()
    bf16 = _evaluate_cli(saved_dir, eval_jsonl, tmp_path / "bf16", "--dtype", "bfloat16")["predictions"]
    assert seen[0][:2] == (torch.bfloat16, torch.bfloat16)
    assert len(bf16) == len(first) and all(isinstance(caption, str) for caption in bf16.values())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--top_p", "0.9"], r"--top_p only apply when sampling: add --do_sample"),
        (["--do_sample", "--top_p", "1.5"], r"--top_p must be in \(0, 1\], got 1.5"),
        (["--do_sample", "--temperature", "0"], r"--temperature must be greater than 0, got 0.0"),
        (["--dtype", "float64"], r"--dtype: invalid choice: 'float64'"),
    ],
)
def test_sampling_and_dtype_errors(tmp_path, extra, message, capsys):
    argv = ["--model", str(tmp_path), "--eval_file", str(tmp_path / "eval.json"), *extra]
    if extra[0] == "--dtype":  # argparse refuses a choice on stderr and exits
        with pytest.raises(SystemExit):
            evaluate_capdec.main(argv)
        assert re.search(message, capsys.readouterr().err)
        return
    with pytest.raises(ValueError, match=message):
        evaluate_capdec.main(argv)


def test_eval_set_from_a_glob_of_compressed_shards(eval_jsonl, tmp_path):
    import gzip

    lines = eval_jsonl.read_text().splitlines(keepends=True)
    (tmp_path / "shards").mkdir()
    for index, start in enumerate(range(0, len(lines), 2)):
        (tmp_path / "shards" / f"eval-{index}.jsonl.gz").write_bytes(
            gzip.compress("".join(lines[start : start + 2]).encode())
        )
    eval_set = load_eval_set(str(tmp_path / "shards" / "*.jsonl.gz"), cache_dir=str(tmp_path / "hf"))
    assert eval_set.image_ids == [json.loads(line)["image_id"] for line in lines]
    with pytest.raises(FileNotFoundError, match=r"No data file matches the pattern '.*/shards/\*\.csv'"):
        load_eval_set(str(tmp_path / "shards" / "*.csv"))
