"""compute_caption_metrics gives the COCO caption toolkit's own numbers, and refuses bad input loudly.

Java runs here: the toolkit's tokenizer (~1 s a call) and METEOR (~10 s to start), so METEOR runs only in
the two module fixtures; the other scoring tests pass `metrics=` without it.
"""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from modeling_capdec.evaluation import metrics as metrics_module
from modeling_capdec.evaluation.metrics import compute_caption_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = ["BLEU", "ROUGE-L", "CIDEr"]  # no METEOR JVM

# Six COCO val2014 images with some of their references; raw text, as the toolkit gets it.
REFERENCES = {
    391895: [
        "A man with a red helmet on a small moped on a dirt road.",
        "Man riding a motor bike on a dirt road on the countryside.",
        "A man riding on the back of a motorcycle.",
        "A man in a red shirt and a red hat is on a motorcycle on a hill side.",
    ],
    522418: [
        "A woman wearing a net on her head cutting a cake.",
        "A woman cutting a large white sheet cake.",
        "A woman wearing a hair net cutting a large sheet cake.",
        "there is a woman that is cutting a white cake",
    ],
    184613: [
        "A child holding a flowered umbrella and petting a yak.",
        "A young man holding an umbrella next to a herd of cattle.",
        "a young boy barefoot holding an umbrella touching the horn of a cow",
    ],
    318219: [
        "A young boy standing in front of a computer keyboard.",
        "a little boy wearing headphones and looking at a computer monitor",
        "He is listening intently to the computer at school.",
        "A young boy stares up at the computer monitor.",
    ],
    554625: [
        "a boy wearing headphones using one computer in a long row of computers",
        "A little boy with earphones on listening to something.",
        "A group of people sitting at desk using computers.",
        "Children sitting at computer stations on a long table.",
    ],
    397133: [
        "A man is in a kitchen making pizzas.",
        "Man in apron standing on front of oven with pans and bakeware",
        "A baker is working in the kitchen rolling dough.",
    ],
}
PREDICTIONS = {
    391895: "A man riding a motorcycle on a dirt road.",
    522418: "A woman cutting a cake with a knife.",
    184613: "A boy holding an umbrella next to a cow.",
    318219: "A young boy looking at a computer monitor.",
    554625: "A group of children sitting at computers.",
    397133: "...",  # empty after tokenisation: scored as an empty caption
}
# What the toolkit gave for this set when these tests were written (pycocoevalcap 1.2, Java 17).
MEASURED = {
    "BLEU-1": 0.709856,
    "BLEU-2": 0.641885,
    "BLEU-3": 0.573322,
    "BLEU-4": 0.456090,
    "METEOR": 0.300027,
    "ROUGE-L": 0.566178,
    "CIDEr": 1.838470,
}


def _toolkit_by_hand(meteor: Meteor) -> dict[str, float]:
    """The toolkit's scorers called by hand, the way COCOEvalCap.evaluate calls them (minus SPICE)."""
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in REFERENCES.items()})
    res = tokenizer.tokenize({i: [{"caption": PREDICTIONS[i]}] for i in REFERENCES})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"BLEU-{n}": value for n, value in enumerate(bleu, start=1)}
    scores["METEOR"] = meteor.compute_score(gts, res)[0]
    scores["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    scores["CIDEr"] = Cider().compute_score(gts, res)[0]
    return scores


@pytest.fixture(scope="module")
def scores_and_toolkit_scores() -> tuple[dict[str, float], dict[str, float]]:
    """Ours (lists aligned by position) and the toolkit's by hand.

    Both use one toolkit `Meteor` process, which keeps no state between `compute_score` calls: a METEOR JVM
    takes 10-20 s to load its paraphrase table. `MEASURED` pins what a fresh one gives."""
    meteor = Meteor()
    toolkit = _toolkit_by_hand(meteor)  # first: ours ends the METEOR process it was given when done
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics_module, "Meteor", lambda: meteor)
        ours = compute_caption_metrics([PREDICTIONS[i] for i in REFERENCES], list(REFERENCES.values()))
    assert meteor.meteor_p.poll() is not None  # no JVM (and its 2 GB heap) left waiting for the collector
    return ours, toolkit


@pytest.fixture(scope="module")
def our_scores(scores_and_toolkit_scores) -> dict[str, float]:
    return scores_and_toolkit_scores[0]


def test_same_numbers_as_the_toolkit_by_hand(scores_and_toolkit_scores):
    our_scores, toolkit_scores = scores_and_toolkit_scores
    assert set(our_scores) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
    for name, value in toolkit_scores.items():
        assert round(our_scores[name], 4) == round(value, 4), name
        assert our_scores[name] == pytest.approx(MEASURED[name], abs=1e-6), name


def test_several_sets_score_as_each_alone_with_one_tokenizer_and_one_meteor(our_scores, monkeypatch, caplog):
    ids = list(REFERENCES)
    runs = {
        "run a": dict(PREDICTIONS),
        "run b": {i: REFERENCES[i][0] for i in ids},  # a reference itself: near-perfect scores
        "run c": {i: "a person" for i in ids},
    }
    # run a alone is the fixture's score (each set alone starts a METEOR JVM, 10-20 s)
    alone = {"run a": our_scores}
    alone |= {name: compute_caption_metrics(runs[name], REFERENCES) for name in ("run b", "run c")}
    started = {"Meteor": 0, "PTBTokenizer": 0}

    def counted(name):
        original = getattr(metrics_module, name)

        def start(*args, **kwargs):
            started[name] += 1
            return original(*args, **kwargs)

        return start

    monkeypatch.setattr(metrics_module, "Meteor", counted("Meteor"))
    monkeypatch.setattr(metrics_module, "PTBTokenizer", counted("PTBTokenizer"))
    with caplog.at_level("WARNING", logger="modeling_capdec.evaluation.metrics"):
        together = metrics_module.compute_caption_metrics_many(runs, REFERENCES)
    assert started == {"Meteor": 1, "PTBTokenizer": 1}
    assert list(together) == list(runs)
    assert together == alone  # exactly: the same tokens, and METEOR keeps no state between sets
    assert together["run a"]["METEOR"] == pytest.approx(MEASURED["METEOR"], abs=1e-6)
    assert together["run b"]["CIDEr"] > together["run a"]["CIDEr"] > together["run c"]["CIDEr"]
    assert "run a: 1 of 6 predictions are empty after tokenisation (e.g. image 397133)" in caplog.text


def test_several_sets_name_the_bad_one_before_java_starts(monkeypatch):
    monkeypatch.setattr(metrics_module.shutil, "which", lambda _: pytest.fail("java looked up"))
    runs = {"good": {1: "a dog"}, "bad": {1: None}}
    with pytest.raises(TypeError, match=r"prediction set 'bad': Prediction for image id 1 is a NoneType"):
        metrics_module.compute_caption_metrics_many(runs, {1: ["a dog"]})
    with pytest.raises(ValueError, match="No prediction sets to score"):
        metrics_module.compute_caption_metrics_many({}, {1: ["a dog"]})


def test_dicts_are_matched_by_id_not_order(our_scores):
    ids = list(REFERENCES)
    random.Random(0).shuffle(ids)
    shuffled_predictions = {i: PREDICTIONS[i] for i in ids}
    scores = compute_caption_metrics(shuffled_predictions, REFERENCES, metrics=FAST)
    assert list(shuffled_predictions) != list(REFERENCES)
    for name, value in scores.items():
        assert value == pytest.approx(our_scores[name], abs=1e-12), name


def test_identical_captions_on_one_image():
    caption = "a man riding a red motorcycle down a dirt road"
    scores = compute_caption_metrics([caption], [[caption, caption]], metrics=["BLEU", "CIDEr"])
    # BLEU's n-gram precisions are (correct + 1e-15) / (guess + 1e-9) in the toolkit, so 1 - ~1e-10.
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    # CIDEr weighs n-grams by idf = log(number of images) - log(document frequency) = log(1) - log(1) = 0 for
    # every n-gram of a one-image corpus: all tf-idf vectors are zero and the toolkit's CIDEr is 0.
    assert scores["CIDEr"] == 0.0


def test_identical_captions_on_distinct_images():
    captions = [
        "a man riding a red motorcycle down a dirt road",
        "a woman cutting a large white sheet cake",
        "a young boy holding an umbrella next to a cow",
    ]
    scores = compute_caption_metrics(captions, [[c, c, c] for c in captions], metrics=["BLEU", "CIDEr"])
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    # With 3 images, an n-gram found in one image's references has idf log(3) - log(1) > 0 (shared ones, like
    # "a", get 0). Candidate and reference vectors are equal, so each n-gram order's clipped cosine
    # sum(min(v, v) * v) / |v|^2 is 1 and the length penalty exp(-0^2 / (2 * 6^2)) is 1: the mean over orders
    # 1-4 is 1, averaged over the references is 1, and the toolkit multiplies by 10.
    assert scores["CIDEr"] == pytest.approx(10.0, abs=1e-9)


def test_line_breaks_inside_captions_do_not_shift_other_captions(our_scores):
    # The toolkit pairs tokenizer output lines with images by position; Java breaks lines at \r and \u2028.
    predictions = [PREDICTIONS[i] for i in REFERENCES]
    predictions[0] = predictions[0].replace(" riding ", "\rriding\u2028")
    scores = compute_caption_metrics(predictions, list(REFERENCES.values()), metrics=FAST)
    for name, value in scores.items():
        assert value == pytest.approx(our_scores[name], abs=1e-12), name


@pytest.mark.parametrize(
    ("predictions", "references", "error", "match"),
    [
        ({1: "a dog", 99: "a cat"}, {1: ["a dog"]}, KeyError, r"no references: 99"),
        ({1: "a dog"}, {1: ["a dog"], 2: ["a cat"]}, KeyError, r"no prediction for image id\(s\): 2"),
        ({1: "a dog", 2: "a cat"}, {1: ["a dog"], 2: "a cat"}, ValueError, r"image id 2 are a single string"),
        (["a dog", "a cat"], [["a dog"], "a cat"], ValueError, r"index 1 are a single string"),
        (["a dog", "a cat"], [["a dog"]], ValueError, r"2 predictions but 1 reference lists"),
        ({"7": "a dog"}, {7: ["a dog"]}, KeyError, r"'7'.*7 \(int\) where this has '7' \(str\)"),
        ({1: "a dog"}, {1: []}, ValueError, r"image id 1 must be a non-empty list"),
        ({1: "a dog"}, {1: ["a dog", "  "]}, ValueError, r"reference for image id 1 is empty"),
        ({1: None}, {1: ["a dog"]}, TypeError, r"Prediction for image id 1 is a NoneType"),
        (["a dog"], {1: ["a dog"]}, TypeError, r"both be lists .* or both be dicts"),
        ([], [], ValueError, r"No images to score"),
    ],
)
def test_bad_input_raises_naming_the_problem(predictions, references, error, match):
    with pytest.raises(error, match=match):
        compute_caption_metrics(predictions, references)


def test_unknown_metric_and_missing_spice_models_raise(monkeypatch):
    with pytest.raises(ValueError, match=r"Unknown metric\(s\) \['BLEU-4'\]"):
        compute_caption_metrics(["a dog"], [["a dog"]], metrics=["BLEU-4"])
    monkeypatch.setattr(metrics_module, "spice_models_available", lambda: False)
    with pytest.raises(FileNotFoundError, match="stanford-corenlp-3.6.0-models.jar"):
        compute_caption_metrics(["a dog"], [["a dog"]], metrics=["SPICE"])


def test_spice_is_skipped_with_a_note_when_its_models_are_missing(monkeypatch, caplog):
    monkeypatch.setattr(metrics_module, "spice_models_available", lambda: False)
    with caplog.at_level("INFO", logger="modeling_capdec.evaluation.metrics"):
        names = metrics_module._resolve_metric_names(None)
    assert names == ["BLEU", "METEOR", "ROUGE-L", "CIDEr"]
    assert "SPICE skipped" in caplog.text


def test_missing_java_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"`java` is not on PATH.*apt-get install openjdk-17-jre-headless"):
        compute_caption_metrics(["a dog"], [["a dog"]])


def test_evaluate_load_works_offline(tmp_path):
    script = (
        "import evaluate\n"
        "from modeling_capdec.evaluation import CAPTION_METRIC_PATH\n"
        "metric = evaluate.load(CAPTION_METRIC_PATH)\n"
        "print(metric.compute(predictions=['a dog runs on the beach'], references=[['a dog runs on the beach']],"
        " metrics=['BLEU']))\n"
    )
    offline = {"HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env = {**os.environ, **offline, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "'BLEU-4': 0.99999" in result.stdout


def test_the_toolkits_java_chatter_does_not_reach_the_console(capfd):
    """The PTB tokenizer's "PTBTokenizer tokenized N tokens" line (one per evaluation) stays out of the console."""
    scores = compute_caption_metrics(["a dog runs"], [["a dog runs"]], metrics=["BLEU"])
    assert scores["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
    captured = capfd.readouterr()
    assert "PTBTokenizer" not in captured.err and "PTBTokenizer" not in captured.out
