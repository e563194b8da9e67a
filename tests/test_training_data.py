"""Corpus loading, cleaning, the CLIP-embedding cache and eval sets (data_capdec)."""

import json

import datasets
import numpy as np
import pytest
import torch
from transformers import CLIPModel

from modeling_capdec.evaluation.eval_sets import load_eval_set
from modeling_capdec.training.arguments import DataArguments
from modeling_capdec.training.data import load_dataset_source, prepare_training_dataset
from tests.tiny_models import CAPTIONS


@pytest.fixture
def clip_calls(monkeypatch):
    """Counts CLIP text and image forward passes."""
    calls = {"text": 0, "image": 0}
    text_features, image_features = CLIPModel.get_text_features, CLIPModel.get_image_features

    def count_text(self, *args, **kwargs):
        calls["text"] += 1
        return text_features(self, *args, **kwargs)

    def count_image(self, *args, **kwargs):
        calls["image"] += 1
        return image_features(self, *args, **kwargs)

    monkeypatch.setattr(CLIPModel, "get_text_features", count_text)
    monkeypatch.setattr(CLIPModel, "get_image_features", count_image)
    return calls


def _write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_load_sources(tmp_path):
    cache = str(tmp_path / "hf")
    jsonl = _write_jsonl(tmp_path / "c.jsonl", [{"caption": "a dog"}, {"caption": "a cat"}])
    assert load_dataset_source(jsonl, cache_dir=cache)["caption"] == ["a dog", "a cat"]
    (tmp_path / "c.csv").write_text("caption,other\na dog,1\na cat,2\n")
    assert load_dataset_source(tmp_path / "c.csv", cache_dir=cache)["caption"] == ["a dog", "a cat"]
    (tmp_path / "c.txt").write_text("a dog\na cat\n")
    assert load_dataset_source(tmp_path / "c.txt", cache_dir=cache, text_column="text")["text"] == [
        "a dog",
        "a cat",
    ]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"caption": ["a bus"]})}).save_to_disk(
        tmp_path / "d"
    )
    assert load_dataset_source(tmp_path / "d")["caption"] == ["a bus"]
    with pytest.raises(ValueError, match=r"No split 'val'.*\['train'\]"):
        load_dataset_source(tmp_path / "d", split="val")


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_dataset_source(tmp_path / "missing.jsonl")
    broken = tmp_path / "broken.json"
    broken.write_text('{"caption": "a dog"\n{{{ not json')
    with pytest.raises(ValueError, match=r"Cannot read .*broken\.json as json"):
        load_dataset_source(broken, cache_dir=str(tmp_path / "hf"))
    (tmp_path / "c.docx").write_text("x")
    with pytest.raises(ValueError, match=r"unknown extension '\.docx'"):
        load_dataset_source(tmp_path / "c.docx")
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        load_dataset_source(tmp_path / "no_such_folder")
    with pytest.raises(ValueError, match="Give one training corpus, not 2: --train_file, --dataset_name"):
        DataArguments(train_file=str(tmp_path / "c.docx"), dataset_name="coco")


def test_cleaning_flattens_drops_and_truncates(model, processor, tmp_path):
    corpus = datasets.Dataset.from_dict(
        {"caption": [["a dog running on the beach", "  a   red\nbus "], [], ["", None], ["word " * 40]]}
    )
    dataset, report = prepare_training_dataset(
        corpus, model, processor, max_caption_tokens=12, cache_dir=tmp_path
    )
    assert (report.rows, report.captions, report.kept) == (4, 6, 3)
    assert (report.dropped_empty, report.dropped_not_text, report.truncated) == (2, 1, 2)
    eos = processor.tokenizer.eos_token_id
    rows = [dataset[i] for i in range(len(dataset))]
    assert all(row["input_ids"][-1] == eos and len(row["input_ids"]) <= 13 for row in rows)
    assert processor.tokenizer.decode(rows[1]["input_ids"][:-1]) == "a red bus"  # whitespace normalised
    assert [row["example_id"] for row in rows] == [0, 1, 5]  # row numbers of the flattened corpus
    # The stored embedding is the normalised CLIP embedding of the caption the decoder learns.
    clip_inputs = processor(clip_text=["a red bus"], return_tensors="pt")
    expected = model.get_text_embeds(clip_inputs["clip_input_ids"], clip_inputs["clip_attention_mask"])
    stored = torch.as_tensor(rows[1]["clip_embeds"])
    assert stored.dtype == torch.float32 and stored.shape == (model.config.clip_projection_dim,)
    torch.testing.assert_close(stored, expected[0], atol=1e-6, rtol=1e-5)
    assert dataset.features["clip_embeds"].length == model.config.clip_projection_dim


def test_embeddings_are_cached_and_reused(model, processor, tmp_path, clip_calls):
    corpus = load_dataset_source(
        _write_jsonl(tmp_path / "c.jsonl", [{"caption": c} for c in CAPTIONS]), cache_dir=str(tmp_path / "hf")
    )
    first, report = prepare_training_dataset(
        corpus, model, processor, embedding_batch_size=8, cache_dir=tmp_path / "c"
    )
    assert clip_calls["text"] == 4 and not report.embeddings_from_cache  # 30 captions in batches of 8
    assert all(
        cache["filename"].startswith(str(tmp_path / "c")) for cache in first.cache_files
    )  # memory-mapped
    again = load_dataset_source(tmp_path / "c.jsonl", cache_dir=str(tmp_path / "hf"))
    second, report = prepare_training_dataset(
        again, model, processor, embedding_batch_size=8, cache_dir=tmp_path / "c"
    )
    assert clip_calls["text"] == 4 and report.embeddings_from_cache  # no CLIP forward pass the second time
    np.testing.assert_array_equal(first["clip_embeds"], second["clip_embeds"])
    # Anything the embeddings depend on (here the CLIP weights) makes a new cache entry.
    with torch.no_grad():
        model.clip.text_projection.weight.add_(0.01)
    try:
        _, report = prepare_training_dataset(
            again, model, processor, embedding_batch_size=8, cache_dir=tmp_path / "c"
        )
    finally:
        with torch.no_grad():
            model.clip.text_projection.weight.sub_(0.01)
    assert clip_calls["text"] == 8 and not report.embeddings_from_cache


def test_captions_are_embedded_in_length_sorted_batches_and_kept_in_corpus_order(
    model, processor, tmp_path, monkeypatch
):
    short, long = "a dog", "a small brown dog runs on a green field"
    captions = [long if i % 2 else f"{short} {i}" for i in range(8)]
    widths = []
    text_features = CLIPModel.get_text_features

    def record_width(self, input_ids=None, **kwargs):
        widths.append(input_ids.shape[1])
        return text_features(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(CLIPModel, "get_text_features", record_width)
    dataset, _ = prepare_training_dataset(
        datasets.Dataset.from_dict({"caption": captions}),
        model,
        processor,
        embedding_batch_size=4,
        cache_dir=tmp_path,
    )
    # Two forwards: the four short captions together, then the four long ones (not short and long mixed).
    lengths = [
        len(ids)
        for ids in processor(clip_text=captions, padding=False, return_tensors=None)["clip_input_ids"]
    ]
    assert max(lengths[0::2]) < min(lengths[1::2])
    assert widths == [max(lengths[0::2]), max(lengths[1::2])]
    monkeypatch.setattr(CLIPModel, "get_text_features", text_features)
    for row, caption in enumerate(captions):
        clip_inputs = processor(clip_text=caption, return_tensors="pt")
        expected = model.get_text_embeds(clip_inputs["clip_input_ids"], clip_inputs["clip_attention_mask"])[0]
        torch.testing.assert_close(torch.as_tensor(dataset[row]["clip_embeds"]), expected, atol=1e-5, rtol=0)
    assert list(dataset["example_id"]) == list(range(8))


def test_embed_on_the_fly_keeps_text(model, processor, tmp_path, clip_calls):
    corpus = datasets.Dataset.from_dict({"caption": CAPTIONS[:3]})
    dataset, _ = prepare_training_dataset(corpus, model, processor, embed_on_the_fly=True, cache_dir=tmp_path)
    assert dataset.column_names == ["input_ids", "example_id", "caption"] and clip_calls["text"] == 0
    assert dataset[0]["caption"] == CAPTIONS[0]


def test_supervised_embeds_each_image_once(model, processor, tmp_path, image_files, clip_calls):
    corpus = datasets.Dataset.from_dict(
        {"image_path": image_files[:2], "captions": [CAPTIONS[:3], CAPTIONS[3:5]]}
    )
    dataset, report = prepare_training_dataset(
        corpus,
        model,
        processor,
        mode="supervised",
        caption_column="captions",
        image_column="image_path",
        cache_dir=tmp_path,
    )
    assert report.kept == len(dataset) == 5 and clip_calls == {"text": 0, "image": 1}
    pixel_values = processor(images=image_files[:1], return_tensors="pt")["pixel_values"]
    expected = model.get_image_embeds(pixel_values)[0]
    for row in range(3):  # the three captions of the first image share its embedding
        torch.testing.assert_close(
            torch.as_tensor(dataset[row]["clip_embeds"]), expected, atol=1e-6, rtol=1e-5
        )


def test_corpus_errors(model, processor, tmp_path):
    corpus = datasets.Dataset.from_dict({"text": ["a dog"], "id": [1]})
    with pytest.raises(
        ValueError, match=r"caption column 'caption' is not in the corpus; its columns are \['text', 'id'\]"
    ):
        prepare_training_dataset(corpus, model, processor, cache_dir=tmp_path)
    empty = datasets.Dataset.from_dict({"caption": ["", "   ", None]})
    with pytest.raises(
        ValueError,
        match=r"empty after cleaning: all 3 captions of 3 rows were dropped \(2 empty, 1 not text\)",
    ):
        prepare_training_dataset(empty, model, processor, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="needs an image column; 'image' is not in the corpus"):
        prepare_training_dataset(
            corpus.rename_column("text", "caption"),
            model,
            processor,
            mode="supervised",
            image_column="image",
            cache_dir=tmp_path,
        )
    with pytest.raises(ValueError, match="positions, but the decoder has 128"):
        prepare_training_dataset(
            corpus.rename_column("text", "caption"),
            model,
            processor,
            max_caption_tokens=200,
            cache_dir=tmp_path,
        )


def test_eval_set(tmp_path, image_files):
    rows = [
        {"image_id": 10 + i, "image_path": path, "captions": CAPTIONS[i : i + 2]}
        for i, path in enumerate(image_files)
    ]
    eval_file = _write_jsonl(tmp_path / "eval.jsonl", rows)
    eval_set = load_eval_set(eval_file, max_samples=3, cache_dir=str(tmp_path / "hf"))
    assert eval_set.image_ids == [10, 11, 12] and eval_set.references[0] == CAPTIONS[:2]
    assert list(eval_set.images) == image_files[:3]

    no_images = _write_jsonl(tmp_path / "no_images.jsonl", [{"image_id": 1, "captions": ["a dog"]}])
    with pytest.raises(ValueError, match=r"no image column: none of \['image', 'image_path'"):
        load_eval_set(no_images, cache_dir=str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="eval image column 'picture' is not in"):
        load_eval_set(eval_file, image_column="picture", cache_dir=str(tmp_path / "hf"))
    missing = _write_jsonl(
        tmp_path / "missing.jsonl", [{"image_path": str(tmp_path / "nope.png"), "captions": ["a"]}]
    )
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_eval_set(missing, cache_dir=str(tmp_path / "hf"))


CORPUS_FILES = {
    # name: (bytes, the message's line and reason, rows kept with skip_bad_lines)
    "latin1.jsonl": (
        b'{"caption": "a dog"}\n{"caption": "caf\xe9 au lait"}\n{"caption": "a cat"}\n',
        r"line 2: byte 0xe9 at column 17 is not valid utf-8; 1 bad line in all\. Give the file's encoding",
        2,
    ),
    "latin1.txt": (b"a dog\ncaf\xe9\na cat\n", r"line 2: byte 0xe9 at column 4 is not valid utf-8", 2),
    "malformed.jsonl": (
        b'{"caption": "a dog"}\n{"caption": "a cat"\n["a list"]\n{"caption": "a bus"}\n',
        r"line 2: malformed JSON \(Expecting ',' delimiter at column 20\); 2 bad lines in all \(lines 2, 3\)\. "
        r"Fix the line, or pass --skip_bad_lines",
        2,
    ),
    "ragged.csv": (
        b"caption,id\na dog,1\na cat,2,extra\na bus,3\n",
        r"line 3: 3 fields where the header has 2; 1 bad line in all",
        2,
    ),
    "ragged.tsv": (b"caption\tid\na dog\t1\na cat\n", r"line 3: 1 fields where the header has 2", 1),
}


@pytest.mark.parametrize("name", sorted(CORPUS_FILES))
def test_bad_corpus_lines_are_named_or_skipped_and_counted(tmp_path, caplog, name):
    data, message, kept = CORPUS_FILES[name]
    path = tmp_path / name
    path.write_bytes(data)
    cache = str(tmp_path / "hf")
    with pytest.raises(ValueError, match=rf"Cannot read .*{name} as \w+: {message}"):
        load_dataset_source(path, cache_dir=cache)
    with caplog.at_level("WARNING"):
        dataset = load_dataset_source(path, cache_dir=cache, skip_bad_lines=True)
    assert dataset.num_rows == kept
    skipped = (
        data.count(b"\n") - kept - (1 if name.endswith("sv") else 0)
    )  # all lines but the kept (and header)
    assert f"Skipped {skipped} bad line" in caplog.text and name in caplog.text
    assert dataset["caption"][0] == "a dog"
    assert not list(tmp_path.glob("hf/**/*.tmp"))


def test_corpus_encoding_option_reads_other_encodings(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(CORPUS_FILES["latin1.jsonl"][0])
    dataset = load_dataset_source(path, cache_dir=str(tmp_path / "hf"), encoding="latin-1")
    assert dataset["caption"] == ["a dog", "café au lait", "a cat"]
    text = tmp_path / "latin1.txt"
    text.write_bytes(CORPUS_FILES["latin1.txt"][0])
    assert (
        load_dataset_source(text, cache_dir=str(tmp_path / "hf"), encoding="latin-1")["caption"][1] == "café"
    )


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("empty.jsonl", b"", r"empty\.jsonl is empty \(0 bytes\)"),
        ("empty.txt", b"", r"empty\.txt is empty \(0 bytes\)"),
        ("blank.txt", b"\n  \n", r"blank\.txt holds no captions"),
        ("blank.jsonl", b"\n\n", r"blank\.jsonl holds no captions"),
        ("header.csv", b"caption,id\n", r"header\.csv holds only a header"),
        ("empty.json", b"[]", r"empty\.json holds an empty JSON list"),
        ("array.json", b'[{"caption": "a"},\n {"caption": "b",}]', r"array\.json as json: line 2, column 18"),
        ("empty.parquet", b"", r"empty\.parquet is empty \(0 bytes\)"),
    ],
)
def test_empty_and_malformed_corpus_files(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=message):
        load_dataset_source(tmp_path / name, cache_dir=str(tmp_path / "hf"), skip_bad_lines=True)


def test_cleaning_counts_duplicates_and_checks_the_batch_size(model, processor, tmp_path):
    corpus = datasets.Dataset.from_dict({"caption": ["a dog", "a  dog", "a cat", "a dog", ""]})
    _, report = prepare_training_dataset(corpus, model, processor, cache_dir=tmp_path)
    assert (report.kept, report.duplicates, report.dropped_empty) == (4, 2, 1)
    assert "2 of the kept are duplicates" in report.summary()
    for size in (0, -3):
        with pytest.raises(
            ValueError, match=rf"embedding_batch_size must be a whole number >= 1 .* got {size}"
        ):
            prepare_training_dataset(corpus, model, processor, embedding_batch_size=size, cache_dir=tmp_path)


def test_temporary_files_of_a_killed_map_are_removed(model, processor, tmp_path, caplog):
    cache = tmp_path / "c"
    cache.mkdir()
    leftover = cache / "tmpab12cd_9"  # what Dataset.map's NamedTemporaryFile leaves when the run is killed
    leftover.write_bytes(b"half an arrow file")
    keep = cache / "notes-tmp.txt"
    keep.write_text("not ours")
    corpus = datasets.Dataset.from_dict({"caption": ["a dog", "a cat"]})
    with caplog.at_level("WARNING"):
        prepare_training_dataset(corpus, model, processor, cache_dir=cache)
    assert not leftover.exists() and keep.exists()
    assert "Removed 1 temporary file(s) of an interrupted run" in caplog.text


# -- compressed files, globs, several files (issue 14) -------------------------------------------------------------
def _compressed(path, text: str) -> str:
    """Write `text` to `path`, compressed as its suffix says (the stdlib's gzip/bz2/lzma)."""
    import bz2
    import gzip
    import lzma

    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[path.suffix]
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.write(text)
    return str(path)


@pytest.mark.parametrize(
    "name, text, column",
    [
        ("c.jsonl.gz", '{"caption": "a dog"}\n{"caption": "a cat"}\n', "caption"),
        ("c.csv.bz2", "caption,other\na dog,1\na cat,2\n", "caption"),
        ("c.tsv.xz", "caption\tother\na dog\t1\na cat\t2\n", "caption"),
        ("c.txt.gz", "a dog\na cat\n", "caption"),
        ("c.json.gz", '[{"caption": "a dog"}, {"caption": "a cat"}]', "caption"),
    ],
)
def test_compressed_corpus_files(tmp_path, name, text, column):
    path = _compressed(tmp_path / name, text)
    assert list(load_dataset_source(path, cache_dir=str(tmp_path / "hf"))[column]) == ["a dog", "a cat"]


def test_compressed_files_are_checked_line_by_line(tmp_path):
    cache = str(tmp_path / "hf")
    path = _compressed(
        tmp_path / "bad.jsonl.gz", '{"caption": "a dog"}\n{"caption": \n{"caption": "a cat"}\n'
    )
    with pytest.raises(ValueError, match=r"Cannot read .*bad\.jsonl\.gz as json: line 2: malformed JSON"):
        load_dataset_source(path, cache_dir=cache)
    assert list(load_dataset_source(path, cache_dir=cache, skip_bad_lines=True)["caption"]) == [
        "a dog",
        "a cat",
    ]
    latin = tmp_path / "latin.txt.gz"
    import gzip

    latin.write_bytes(gzip.compress("a dog\ncafé\n".encode("latin-1")))
    with pytest.raises(
        ValueError, match=r"latin\.txt\.gz as text: line 2: byte 0xe9 .*--train_file_encoding"
    ):
        load_dataset_source(latin, cache_dir=cache)
    assert load_dataset_source(latin, cache_dir=cache, encoding="latin-1")["caption"][1] == "café"
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(gzip.compress(b'{"caption": "a dog"}\n' * 50)[:30])
    with pytest.raises(ValueError, match=r"Cannot decompress .*truncated\.jsonl\.gz: EOFError"):
        load_dataset_source(truncated, cache_dir=cache)
    (tmp_path / "c.parquet.gz").write_bytes(b"x")
    with pytest.raises(
        ValueError, match=r"c\.parquet\.gz: a \.parquet file is read as it is, not \.gz-compressed"
    ):
        load_dataset_source(tmp_path / "c.parquet.gz", cache_dir=cache)
    (tmp_path / "c.docx.gz").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"unknown extension '\.docx\.gz'"):
        load_dataset_source(tmp_path / "c.docx.gz", cache_dir=cache)


def test_globs_and_several_files(tmp_path):
    cache = str(tmp_path / "hf")
    (tmp_path / "data").mkdir()
    # Written out of order: a glob's matches are read sorted, so the rows (and example ids) are the same each run.
    _write_jsonl(tmp_path / "data" / "part-2.jsonl", [{"caption": "a bus"}])
    _write_jsonl(tmp_path / "data" / "part-1.jsonl", [{"caption": "a dog"}, {"caption": "a cat"}])
    _compressed(tmp_path / "data" / "part-3.jsonl.gz", '{"caption": "a tree"}\n')
    assert list(load_dataset_source(str(tmp_path / "data" / "*.jsonl"), cache_dir=cache)["caption"]) == [
        "a dog",
        "a cat",
        "a bus",
    ]
    # Several paths and globs, compressed or not, in the order given.
    sources = [str(tmp_path / "data" / "part-3.jsonl.gz"), str(tmp_path / "data" / "part-[12].jsonl")]
    assert list(load_dataset_source(sources, cache_dir=cache)["caption"]) == [
        "a tree",
        "a dog",
        "a cat",
        "a bus",
    ]
    # A list of one behaves as the path itself.
    assert list(load_dataset_source(sources[:1], cache_dir=cache)["caption"]) == ["a tree"]


def test_glob_and_list_errors_name_the_item(tmp_path):
    cache = str(tmp_path / "hf")
    good = _write_jsonl(tmp_path / "a.jsonl", [{"caption": "a dog"}])
    with pytest.raises(FileNotFoundError, match=r"No data file matches the pattern '.*/nothing/\*\.jsonl'"):
        load_dataset_source(str(tmp_path / "nothing" / "*.jsonl"), cache_dir=cache)
    with pytest.raises(FileNotFoundError, match=r"Data file not found: .*missing\.jsonl"):
        load_dataset_source([good, str(tmp_path / "missing.jsonl")], cache_dir=cache)
    (tmp_path / "b.csv").write_text("caption\na cat\n")
    with pytest.raises(ValueError, match=r"different formats; .*a\.jsonl \(json\), .*b\.csv \(csv\)"):
        load_dataset_source([good, str(tmp_path / "b.csv")], cache_dir=cache)
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"caption": "a cat"}\nnot json\n')
    # The line check names the bad file among several.
    with pytest.raises(ValueError, match=r"Cannot read .*b\.jsonl as json: line 2: malformed JSON"):
        load_dataset_source([good, str(bad)], cache_dir=cache)
    assert list(load_dataset_source([good, str(bad)], cache_dir=cache, skip_bad_lines=True)["caption"]) == [
        "a dog",
        "a cat",
    ]
    with pytest.raises(ValueError, match="list of data files is empty"):
        load_dataset_source([], cache_dir=cache)


def test_train_file_arguments_and_streaming_settings():
    # One string (a recipe's value) becomes a list of one; train_source stays a plain path for one file.
    assert DataArguments(train_file="a.jsonl").train_file == ["a.jsonl"]
    assert DataArguments(train_file="a.jsonl").train_source == "a.jsonl"
    assert DataArguments(train_file=["a.jsonl", "b/*.jsonl"]).train_source == ["a.jsonl", "b/*.jsonl"]
    # A stream is embedded in each step: --streaming implies --embed_on_the_fly, and is handed to the loader.
    streamed = DataArguments(train_file="a.jsonl", streaming=True)
    assert streamed.embed_on_the_fly and streamed.source_kwargs()["streaming"]
    assert streamed.streaming_kwargs() == {
        "caption_column": "caption",
        "max_caption_tokens": 64,
        "shuffle_buffer": 10_000,
    }
