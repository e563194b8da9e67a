"""Tests of the ``processing`` tools on tiny files written to ``tmp_path``; no downloads."""

from __future__ import annotations

import doctest
import json
import shutil
import tempfile

import pytest
import torch
from datasets import Dataset, DatasetDict, load_from_disk
from safetensors.torch import load_file

from modeling_capdec.evaluation.captioning import caption_images
from modeling_capdec.processing_capdec import ImageLoadError
from processing import flickrstyle, gender_balance, io_utils, karpathy, text_corpus
from processing.flickrstyle import flickrstyle_corpus, read_image_names
from processing.gender_balance import GENDER_PAIRS, build_swap_map, swap_gender
from processing.io_utils import decode_text, save_dataset
from processing.karpathy import karpathy_eval_set, karpathy_text_corpus, load_karpathy_images, split_counts
from processing.pseudo_captions import main as pseudo_captions_main
from processing.text_corpus import count_words, filter_sentences, find_text_files, split_sentences
from train_capdec import main as train_main


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("module", [io_utils, karpathy, flickrstyle, text_corpus, gender_balance])
def test_docstring_examples_run(module, tmp_path, monkeypatch):
    # The examples create their files with tempfile; keep them inside tmp_path.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_decode_text_falls_back_per_line():
    data = "café\n".encode() + b"caf\xe9 \x93quoted\x94\n" + b"\x81odd"
    assert decode_text(data).split("\n") == ["café", "café “quoted”", "\x81odd"]
    assert decode_text(b"caf\xe9", encoding="latin-1") == "café"


def test_save_dataset_needs_a_destination():
    with pytest.raises(ValueError, match="nowhere to write"):
        save_dataset(Dataset.from_dict({"caption": ["a"]}))


# ---------------------------------------------------------------------------------------- karpathy


def _image(split, imgid, captions, coco=True):
    image = {
        "filename": f"{imgid}.jpg",
        "imgid": imgid,
        "split": split,
        "sentences": [{"raw": c} for c in captions],
    }
    if coco:
        image |= {"filepath": "val2014" if split != "train" else "train2014", "cocoid": 1000 + imgid}
    return image


@pytest.fixture
def karpathy_json(tmp_path):
    images = [
        _image("train", 0, ["A man rides a horse.", "  A person\non a horse  "]),
        _image("train", 1, ["Two dogs play.", "   "]),
        _image("restval", 2, ["A red bus."]),
        _image("val", 3, ["A cat sleeps."]),
        _image("test", 4, ["A plate of food.", "Food on a plate."]),
        _image("test", 5, ["A kite."]),
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def test_karpathy_corpus_counts_restval_as_train(karpathy_json):
    corpus = karpathy_text_corpus(karpathy_json)
    assert corpus.column_names == ["caption"]
    # whitespace collapsed, the blank caption dropped, restval included
    assert corpus["caption"][:] == [
        "A man rides a horse.",
        "A person on a horse",
        "Two dogs play.",
        "A red bus.",
    ]
    without_restval = karpathy_text_corpus(karpathy_json, include_restval=False)
    assert "A red bus." not in without_restval["caption"][:] and len(without_restval) == 3


def test_karpathy_eval_set_coco(karpathy_json):
    test_set = karpathy_eval_set(karpathy_json, "test", image_root="/data/coco")
    assert test_set.column_names == ["image_id", "image_path", "captions"]
    assert test_set["image_id"][:] == [1004, 1005]
    assert test_set["image_path"][:] == ["/data/coco/val2014/4.jpg", "/data/coco/val2014/5.jpg"]
    assert test_set["captions"][0] == ["A plate of food.", "Food on a plate."]
    assert karpathy_eval_set(karpathy_json, "val")["image_path"][:] == ["val2014/3.jpg"]


def test_karpathy_eval_set_flickr_uses_imgid_and_no_filepath(tmp_path):
    path = tmp_path / "dataset_flickr30k.json"
    images = [_image("train", 0, ["A boy."], coco=False), _image("test", 7, ["A girl."], coco=False)]
    path.write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    row = karpathy_eval_set(path, "test", image_root="flickr30k-images")[0]
    assert row == {"image_id": 7, "image_path": "flickr30k-images/7.jpg", "captions": ["A girl."]}
    assert karpathy_text_corpus(path)["caption"][:] == ["A boy."]  # no restval in Flickr30k: fine


def test_karpathy_split_counts(karpathy_json):
    counts = split_counts(load_karpathy_images(karpathy_json))
    assert counts["train"] == {"images": 2, "captions": 4}
    assert counts["test"] == {"images": 2, "captions": 3}
    assert set(counts) == {"train", "restval", "val", "test"}


def test_karpathy_errors(tmp_path, karpathy_json):
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        load_karpathy_images(tmp_path / "nowhere.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        load_karpathy_images(bad)
    no_images = tmp_path / "no_images.json"
    no_images.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="no_images.json has no 'images' key"):
        load_karpathy_images(no_images)
    no_sentences = tmp_path / "no_sentences.json"
    no_sentences.write_text(json.dumps({"images": [{"filename": "a.jpg", "split": "test"}]}))
    with pytest.raises(ValueError, match=r"images\[0\] has no 'sentences' key"):
        load_karpathy_images(no_sentences)
    with pytest.raises(
        ValueError,
        match=r"No images of split .testing. in .*splits present: \['restval', 'test', 'train', 'val'\]",
    ):
        karpathy_eval_set(karpathy_json, "testing")
    only_test = tmp_path / "only_test.json"
    only_test.write_text(json.dumps({"images": [_image("test", 0, ["A cat."])]}))
    with pytest.raises(ValueError, match=r"No training split.*present: \['test'\]"):
        karpathy_text_corpus(only_test)


def test_karpathy_cli(tmp_path, karpathy_json):
    karpathy.main(
        [
            "--karpathy_json", str(karpathy_json),
            "--corpus_output_dir", str(tmp_path / "corpus"),
            "--no_include_restval",
            "--eval_split", "test",
            "--image_root", "coco",
            "--eval_output_jsonl", str(tmp_path / "test.jsonl"),
        ]
    )  # fmt: skip
    assert len(load_from_disk(str(tmp_path / "corpus"))) == 3
    rows = read_jsonl(tmp_path / "test.jsonl")
    assert rows[1] == {"image_id": 1005, "image_path": "coco/val2014/5.jpg", "captions": ["A kite."]}
    with pytest.raises(ValueError, match=r"Unknown split \['dev'\] in .*dataset_coco.json"):
        karpathy.main(
            ["--karpathy_json", str(karpathy_json), "--eval_split", "dev", "--eval_output_dir", "x"]
        )
    with pytest.raises(ValueError, match="Nothing to write"):
        karpathy.main(["--karpathy_json", str(karpathy_json)])


# ------------------------------------------------------------------------------------- flickrstyle


@pytest.fixture
def flickrstyle_root(tmp_path):
    root = tmp_path / "FlickrStyle_v0.9"
    (root / "humor").mkdir(parents=True)
    (root / "romantic").mkdir()
    # Mixed bytes as in the wild: UTF-8, a latin-1 "é", cp1252 curly quotes, CRLF, blank lines.
    humor = (
        b"a dog runs to meet his lover .\n"
        + b"  a caf\xe9 full of \x93clowns\x94 \r\n"
        + b"\n"
        + "a naïve boy jumps .\n".encode()
        + b"two dogs   fight for a bone .\n\n"
    )
    (root / "humor/funny_train.txt").write_bytes(humor)
    (root / "romantic/romantic_train.txt").write_text(
        "a couple in love .\nsunset by the sea .\n", encoding="utf-8"
    )
    return root


def test_flickrstyle_decodes_strips_and_splits(flickrstyle_root):
    everything = flickrstyle_corpus(flickrstyle_root, "humor", split="all")
    assert everything.column_names == ["caption", "style"]
    assert everything["caption"][:] == [
        "a dog runs to meet his lover .",
        "a café full of “clowns”",
        "a naïve boy jumps .",
        "two dogs fight for a bone .",
    ]
    assert set(everything["style"][:]) == {"humor"}
    # The cut is on line numbers (the blank third line counts), so it stays aligned with train.p.
    assert len(flickrstyle_corpus(flickrstyle_root, "humor", split="train", num_train=3)) == 2
    assert flickrstyle_corpus(flickrstyle_root, "humor", split="test", num_train=3)["caption"][:] == [
        "a naïve boy jumps .",
        "two dogs fight for a bone .",
    ]
    romantic = flickrstyle_corpus(flickrstyle_root, "romantic", split="train", num_train=1)
    assert romantic[0] == {"caption": "a couple in love .", "style": "romantic"}


def test_flickrstyle_image_names_stay_aligned(flickrstyle_root, tmp_path):
    names_file = tmp_path / "names.txt"
    names_file.write_text("1.jpg\n2.jpg\n3.jpg\n4.jpg\n5.jpg\n")
    names = read_image_names(names_file)
    corpus = flickrstyle_corpus(flickrstyle_root, "humor", split="all", image_names=names)
    assert corpus["image_name"][:] == ["1.jpg", "2.jpg", "4.jpg", "5.jpg"]  # line 3 is blank
    with pytest.raises(ValueError, match="4 image names for 5 caption lines"):
        flickrstyle_corpus(flickrstyle_root, "humor", image_names=names[:4])


def test_flickrstyle_never_unpickles(tmp_path):
    for name, data in [("train.p", b"anything"), ("names.txt", b"\x80\x04\x95")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match="looks like a pickle"):
            read_image_names(tmp_path / name)


def test_flickrstyle_errors(flickrstyle_root, tmp_path):
    with pytest.raises(ValueError, match=r"Unknown style 'funny'.*\['humor', 'romantic'\]"):
        flickrstyle_corpus(flickrstyle_root, "funny")
    with pytest.raises(ValueError, match="Unknown split 'val'"):
        flickrstyle_corpus(flickrstyle_root, "humor", split="val")
    with pytest.raises(FileNotFoundError, match="romantic_train.txt"):
        flickrstyle_corpus(tmp_path / "empty", "romantic")
    with pytest.raises(ValueError, match=r"num_train=6000 is outside 0\.\.5"):
        flickrstyle_corpus(flickrstyle_root, "humor")
    with pytest.raises(UnicodeDecodeError):
        flickrstyle_corpus(flickrstyle_root, "humor", split="all", encoding="utf-8")


def test_flickrstyle_cli(flickrstyle_root, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("one\ntwo\nthree\n")
    names = tmp_path / "names.txt"
    names.write_text("a.jpg\nb.jpg\nc.jpg\n")
    out = tmp_path / "out.jsonl"
    flickrstyle.main(
        ["--style", "romantic", "--caption_file", str(captions), "--split", "test", "--num_train", "2",
         "--image_names_file", str(names), "--output_jsonl", str(out)]
    )  # fmt: skip
    assert read_jsonl(out) == [{"caption": "three", "style": "romantic", "image_name": "c.jpg"}]
    flickrstyle.main(
        [
            "--root",
            str(flickrstyle_root),
            "--style",
            "humor",
            "--split",
            "all",
            "--output_dir",
            str(tmp_path / "ds"),
        ]
    )
    assert len(load_from_disk(str(tmp_path / "ds"))) == 4


# ------------------------------------------------------------------------------------- text_corpus

PLAY = """\
ACT I

SCENE II. A room of state in the castle.

 Enter the King and Queen.

KING.
Though yet of Hamlet our dear brother's death
The memory be green. [_Flourish._] Take thy fair hour, Laertes!

HAMLET.
A little more than kin, and less than kind.

QUEEN. Good Hamlet, cast thy nighted colour off.
LORD POLONIUS: He hath, my lord, wrung from me my slow leave.
"""

BOOK = """\
Mr. and Mrs. Dursley were proud to say that they were perfectly normal.
"Little tyke," chortled Mr. Dursley as he left the house. He got into
his car and drove off. J. R. R. Tolkien lived in Oxford. It was 3.5 miles away!

Dr. Watson lived near St. Paul's. "Where are you going?" she asked. "Home!"
"""


def test_split_sentences_play():
    sentences = split_sentences(PLAY)
    assert sentences == [
        "A room of state in the castle.",
        "Enter the King and Queen.",
        "Though yet of Hamlet our dear brother's death The memory be green.",
        "Take thy fair hour, Laertes!",
        "A little more than kin, and less than kind.",
        "Good Hamlet, cast thy nighted colour off.",
        "He hath, my lord, wrung from me my slow leave.",
    ]


def test_split_sentences_book():
    assert split_sentences(BOOK) == [
        "Mr. and Mrs. Dursley were proud to say that they were perfectly normal.",
        "Little tyke, chortled Mr. Dursley as he left the house.",
        "He got into his car and drove off.",
        "J. R. R. Tolkien lived in Oxford.",
        "It was 3.5 miles away!",
        "Dr. Watson lived near St. Paul's.",
        "Where are you going? she asked.",
        "Home!",
    ]


def test_filter_sentences_bounds_are_inclusive():
    def words(n):
        return " ".join(["word"] * n)

    kept, counts = filter_sentences(
        [words(4), words(5), words(19), words(20), words(5), "— " + words(4)], deduplicate=True
    )
    assert kept == [words(5), words(19)]
    assert counts == {"total": 6, "too_short": 2, "too_long": 1, "duplicates": 1, "kept": 2}
    assert count_words("— a dash is not a word —") == 6
    with pytest.raises(ValueError, match="min_words <= max_words"):
        filter_sentences([], min_words=10, max_words=5)


def test_text_corpus_directory_gutenberg_latin1_dedup(tmp_path):
    books = tmp_path / "books"
    (books / "nested").mkdir(parents=True)
    (books / "a.txt").write_text(
        "Header text that is not part of the book at all.\n"
        "*** START OF THE PROJECT GUTENBERG EBOOK A ***\n"
        "The old dog slept by the fire all night. Short one.\n"
        "*** END OF THE PROJECT GUTENBERG EBOOK A ***\n"
        "License text that is not part of the book either.\n"
    )
    (books / "nested/b.txt").write_bytes(
        b"The caf\xe9 was full of happy people today. The old dog slept by the fire all night."
    )
    (books / "notes.md").write_text("Not a text file at all, so it is never read here.")
    assert [p.name for p in find_text_files([books])] == ["a.txt", "b.txt"]
    corpus = text_corpus.text_corpus([books], deduplicate=True)
    assert corpus.column_names == ["caption"]
    assert corpus["caption"][:] == [
        "The old dog slept by the fire all night.",
        "The café was full of happy people today.",
    ]
    assert len(text_corpus.text_corpus([books])) == 3


def test_text_corpus_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        text_corpus.text_corpus([tmp_path / "missing.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No .txt files under .*empty"):
        text_corpus.text_corpus([tmp_path / "empty"])
    with pytest.raises(ValueError, match="Give --output_dir and/or --output_jsonl"):
        text_corpus.main(["--inputs", str(tmp_path / "empty")])


def test_text_corpus_cli(tmp_path):
    play = tmp_path / "hamlet.txt"
    play.write_text(PLAY)
    text_corpus.main(
        ["--inputs", str(play), "--min_words", "8", "--max_words", "12", "--output_dir", str(tmp_path / "ds")]
    )
    assert load_from_disk(str(tmp_path / "ds"))["caption"][:] == [
        "Though yet of Hamlet our dear brother's death The memory be green.",
        "A little more than kin, and less than kind.",
        "He hath, my lord, wrung from me my slow leave.",
    ]


# ---------------------------------------------------------------------------------- gender_balance


@pytest.mark.parametrize(
    ("caption", "swapped"),
    [
        ("a man, a woman. (boy)", "a woman, a man. (girl)"),
        ("the man's hat and the women's bags", "the woman's hat and the men's bags"),
        ("Man on a bike. MAN ON A BIKE. Woman", "Woman on a bike. WOMAN ON A BIKE. Man"),
        ("He and she; HE and SHE", "She and he; SHE and HE"),
        ("Mr. Smith meets Mrs. Jones", "Mrs. Smith meets Mr. Jones"),
        ("the boys' toys", "the girls' toys"),
        ("a woman holding her umbrella", "a man holding his umbrella"),
        ("a man hugs her.", "a woman hugs him."),
        ("he gives her a ball", "she gives him a ball"),
        ("next to her on the bench", "next to him on the bench"),
        ("Her dog looks at her", "His dog looks at him"),
        ("his dog", "her dog"),
        ("the bag is his.", "the bag is hers."),
        ("the bag is hers", "the bag is his"),
        ("she saw him", "he saw her"),
        ("he washes himself", "she washes herself"),
        ("a groom and his bride", "a bride and her groom"),
        (
            "manage human shepherd woman2 man_made heroes mankind",
            "manage human shepherd woman2 man_made heroes mankind",
        ),
    ],
)
def test_swap_gender(caption, swapped):
    assert swap_gender(caption) == swapped


def test_every_pair_swaps_both_ways_with_case():
    for male, female in GENDER_PAIRS:
        for a, b in ((male, female), (female, male)):
            assert swap_gender(f"a {a}.") == f"a {b}."
            assert swap_gender(a.title()) == b.title()
            assert swap_gender(a.upper()) == b.upper()


def test_build_swap_map_checks_consistency():
    assert build_swap_map((("king", "queen"),)) == {"king": "queen", "queen": "king"}
    with pytest.raises(ValueError, match="'lady' appears in more than one"):
        build_swap_map((("gentleman", "lady"), ("lord", "lady")))
    with pytest.raises(ValueError, match="'him' is swapped by the pronoun rule"):
        build_swap_map((("him", "her"),))
    with pytest.raises(ValueError, match="paired with itself"):
        build_swap_map((("person", "person"),))
    with pytest.raises(ValueError, match="lower-case letters"):
        build_swap_map((("Man", "woman"),))


def test_gender_balance_seeded_and_about_half():
    captions = [f"a man number {i} and his dog" for i in range(2000)]
    corpus = Dataset.from_dict({"caption": captions, "id": list(range(2000))})
    balanced = gender_balance.gender_balance(corpus, seed=3)
    flags = balanced["gender_swapped"][:]
    assert 0.45 < sum(flags) / len(flags) < 0.55
    assert balanced["id"][:] == list(range(2000))
    for caption, flag in zip(balanced["caption"][:20], flags[:20], strict=True):
        assert caption.startswith("a woman" if flag else "a man")
    assert gender_balance.gender_balance(corpus, seed=3)["caption"][:] == balanced["caption"][:]
    assert gender_balance.gender_balance(corpus, seed=4)["gender_swapped"][:] != flags
    untouched = gender_balance.gender_balance(corpus, probability=0.0, flag_column=None)
    assert untouched.column_names == ["caption", "id"] and untouched["caption"][:] == captions


def test_gender_balance_errors():
    corpus = Dataset.from_dict({"text": ["a man"]})
    with pytest.raises(ValueError, match=r"No column 'caption'.*\['text'\]"):
        gender_balance.gender_balance(corpus)
    with pytest.raises(ValueError, match=r"probability must be in \[0, 1\]"):
        gender_balance.gender_balance(corpus, probability=1.5, column="text")


def test_gender_balance_cli_reads_any_corpus_source(tmp_path):
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"caption": "a man"}\n{"caption": "a girl"}\n')
    gender_balance.main(["--input", str(jsonl), "--probability", "1", "--output_dir", str(tmp_path / "out")])
    out = load_from_disk(str(tmp_path / "out"))
    assert out["caption"][:] == ["a woman", "a boy"] and out["gender_swapped"][:] == [True, True]
    # the same loader as training: a folder with splits, and a .txt corpus (one caption a line)
    DatasetDict({"train": out}).save_to_disk(str(tmp_path / "dict"))
    gender_balance.main(
        ["--input", str(tmp_path / "dict"), "--probability", "1", "--output_dir", str(tmp_path / "o2")]
    )
    assert load_from_disk(str(tmp_path / "o2"))["caption"][:] == ["a man", "a girl"]
    with pytest.raises(ValueError, match=r"No split 'val'.*\['train'\]"):
        gender_balance.main(
            ["--input", str(tmp_path / "dict"), "--split", "val", "--output_dir", str(tmp_path / "o3")]
        )
    (tmp_path / "c.txt").write_text("a man\na dog\n")
    gender_balance.main(
        ["--input", str(tmp_path / "c.txt"), "--probability", "1", "--output_dir", str(tmp_path / "o4")]
    )
    assert load_from_disk(str(tmp_path / "o4"))["caption"][:] == ["a woman", "a dog"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match="Cannot read .*bad.jsonl as json"):
        gender_balance.main(["--input", str(bad), "--output_dir", str(tmp_path / "o5")])


# -- pseudo_captions: a trained model's own captions of unlabelled images, and the self-training run they feed
# (`train_capdec.py --mode supervised --init_from MODEL --train_file pseudo.jsonl`).


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory, image_files):
    folder = tmp_path_factory.mktemp("unlabelled")
    (folder / "more").mkdir()
    for index, path in enumerate(image_files):  # one in a subfolder: the folder is searched recursively
        shutil.copy(path, folder / ("more" if index == 3 else ".") / f"{index}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.mark.parametrize("rerank, tolerance", [(1, 0.0), (3, 0.0), (3, 0.3)])
def test_each_image_gets_the_caption_the_model_gives_it(
    saved_dir, model, processor, unlabelled, tmp_path, rerank, tolerance
):
    output = tmp_path / "pseudo.jsonl"
    pseudo_captions_main(
        f"--model {saved_dir} --images {unlabelled} --clip_rerank {rerank} --max_new_tokens 6 "
        f"--clip_rerank_tolerance {tolerance} --batch_size 3 --output_jsonl {output}".split()
    )
    rows = read_jsonl(output)
    files = sorted(str(path.resolve()) for path in unlabelled.rglob("*.png"))
    assert [row["image"] for row in rows] == files  # absolute paths, every image once, the text file skipped
    decoding = {"clip_rerank": rerank, "clip_rerank_tolerance": tolerance} if rerank > 1 else {}
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
    # the card says where the run started: the text-only model whose own captions it trained on
    card = (output_dir / "README.md").read_text()
    continued = f"continuing from the trained CapDec model `{saved_dir}`"
    assert f"supervised on CLIP image embeddings (the ClipCap reference), {continued}" in card


def test_an_unreadable_image_stops_the_run_by_name_or_is_skipped_and_counted(
    saved_dir, unlabelled, tmp_path, caplog
):
    folder = tmp_path / "images"
    shutil.copytree(unlabelled, folder)
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    # Found before the model loads: a model that does not exist is never reached.
    with pytest.raises(ImageLoadError, match=rf"Cannot load image \d+ \('{broken}'\): OSError"):
        pseudo_captions_main(
            f"--model {tmp_path / 'no-model'} --images {folder} --output_jsonl {tmp_path / 'x.jsonl'}".split()
        )
    output = tmp_path / "pseudo.jsonl"
    with caplog.at_level("WARNING", logger="processing.pseudo_captions"):
        pseudo_captions_main(
            f"--model {saved_dir} --images {folder} --clip_rerank 1 --max_new_tokens 4 --skip_unreadable "
            f"--output_jsonl {output}".split()
        )
    images = [row["image"] for row in read_jsonl(output)]
    readable = sorted(str(path.resolve()) for path in folder.rglob("*.png") if path != broken)
    assert images == readable
    assert f"Skipped 1 of {len(readable) + 1} images that cannot be read" in caplog.text
    assert str(broken) in caplog.text


def test_bad_arguments_are_refused_by_name(saved_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--clip_rerank must be at least 1 \(1: greedy\), got 0"):
        pseudo_captions_main(
            f"--model {saved_dir} --images {tmp_path} --clip_rerank 0 --output_jsonl x".split()
        )
    with pytest.raises(ValueError, match=r"--clip_rerank_tolerance must be at least 0, got -0.1"):
        pseudo_captions_main(
            f"--model {saved_dir} --images {tmp_path} --clip_rerank_tolerance -0.1 --output_jsonl x".split()
        )
    with pytest.raises(ValueError, match=r"--clip_rerank_tolerance applies to --clip_rerank's beams"):
        pseudo_captions_main(
            f"--model {saved_dir} --images {tmp_path} --clip_rerank 1 --clip_rerank_tolerance 0.01 "
            "--output_jsonl x".split()
        )
    with pytest.raises(ValueError, match=r"holds no image files"):
        pseudo_captions_main(
            f"--model {saved_dir} --images {tmp_path} --output_jsonl {tmp_path / 'x.jsonl'}".split()
        )
    with pytest.raises(ValueError, match=r"--output_dir and/or --output_jsonl"):
        pseudo_captions_main(f"--model {saved_dir} --images {tmp_path}".split())
