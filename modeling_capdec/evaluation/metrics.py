"""Caption metrics with the COCO caption toolkit (`pycocoevalcap`), so our numbers are the papers' numbers.

BLEU-1..4, METEOR, ROUGE-L and CIDEr (the toolkit's `Cider`, which is CIDEr-D: clipped n-gram counts and a
length penalty, document frequencies from the evaluated references) are computed by the toolkit's own
scorers on captions tokenised by its own `PTBTokenizer`, as `COCOEvalCap.evaluate` does; we call them
directly because `COCOEvalCap` always builds SPICE, which downloads Stanford models. SPICE runs only when
those models are already installed. Scores are on the toolkit's scale (BLEU 0-1, CIDEr 0-10);
papers print them times 100.

The toolkit runs Java: the tokenizer and METEOR (about 10 s to load its paraphrase table) each start a JVM.

This module imports only the standard library, numpy and `pycocoevalcap`, so scoring needs no torch.
"""

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.spice import spice as spice_module
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

logger = logging.getLogger(__name__)

METRIC_NAMES = ("BLEU", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
JAVA_INSTALL_HINT = (
    "The COCO caption toolkit (pycocoevalcap) runs its tokenizer, METEOR and SPICE in Java, but `java` is not "
    "on PATH. Install a Java runtime, e.g. `apt-get install openjdk-17-jre-headless` (Debian/Ubuntu) or "
    "`conda install -c conda-forge openjdk`, and make sure `java -version` works."
)
# SPICE parses captions with Stanford CoreNLP 3.6.0; the toolkit downloads it (~1 GB) on first use, which we
# never do implicitly. Both jars must be there: the toolkit looks only for the first before downloading.
SPICE_STANFORD_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def spice_models_available() -> bool:
    """True when SPICE's Stanford CoreNLP jars are in the toolkit's `spice/lib` folder.

    Install them once with `python -c "from pycocoevalcap.spice.get_stanford_models import
    get_stanford_models as g; g()"` (downloads about 1 GB).

    Example:
        >>> isinstance(spice_models_available(), bool)
        True
    """
    lib_dir = os.path.join(os.path.dirname(os.path.abspath(spice_module.__file__)), "lib")
    return all(os.path.isfile(os.path.join(lib_dir, jar)) for jar in SPICE_STANFORD_JARS)


def compute_caption_metrics(
    predictions: Sequence[str] | Mapping[Any, str],
    references: Sequence[Sequence[str]] | Mapping[Any, Sequence[str]],
    metrics: Iterable[str] | None = None,
) -> dict[str, float]:
    """Score captions with the COCO caption toolkit: BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE).

    Args:
        predictions: one generated caption per image, either a list aligned with `references` or a dict
            `{image_id: caption}`.
        references: the reference captions of each image (any number, at least one), either a list of lists
            or a dict `{image_id: [caption, ...]}`. Dicts are matched by image id, never by order.
        metrics: which of `"BLEU"`, `"METEOR"`, `"ROUGE-L"`, `"CIDEr"`, `"SPICE"` to compute. `None` (default)
            computes all but SPICE, plus SPICE when its Stanford models are installed (see
            `spice_models_available`; otherwise a one-line note is logged). Asking for `"SPICE"` without the
            models raises. Leaving out METEOR saves its ~10 s JVM start.

    Returns:
        `{"BLEU-1": ..., "BLEU-2": ..., "BLEU-3": ..., "BLEU-4": ..., "METEOR": ..., "ROUGE-L": ...,
        "CIDEr": ...}` (plus `"SPICE"`), on the toolkit's scale (CIDEr up to 10).

    Rules for bad input (all raise before any Java starts, with a message naming the image):
        - a prediction for an image id without references, or an image without a prediction: `KeyError`;
        - references for an image given as a string instead of a list, an empty list of references, a
          reference that is empty or only whitespace, or one containing METEOR's separator `|||`: `ValueError`;
        - a caption or reference that is not a string (e.g. `None`): `TypeError`;
        - lists of different lengths: `ValueError` with both lengths; a list with a dict: `TypeError`;
        - no `java` on PATH: `RuntimeError` saying how to install it.

    Empty predictions are scored, not rejected: a caption that is empty, or becomes empty after the toolkit's
    tokenisation (e.g. `"..."`), is an empty caption that shares no n-gram with any reference. The toolkit
    gives it 0 on every metric for that image and it still counts in every average (and in BLEU's and
    METEOR's corpus statistics); a warning says how many there were. A model that sometimes says nothing
    should lose points for it, not stop an evaluation.

    Example:
        >>> scores = compute_caption_metrics(
        ...     {1: "a dog runs on the beach", 2: "a cat on a sofa"},
        ...     {1: ["a dog running on the beach", "a brown dog on sand"], 2: ["a cat sleeping on a sofa"]},
        ...     metrics=["BLEU", "CIDEr"],
        ... )
        >>> sorted(scores)
        ['BLEU-1', 'BLEU-2', 'BLEU-3', 'BLEU-4', 'CIDEr']
    """
    return compute_caption_metrics_many({None: predictions}, references, metrics)[None]


def compute_caption_metrics_many(
    prediction_sets: Mapping[Any, Sequence[str] | Mapping[Any, str]],
    references: Sequence[Sequence[str]] | Mapping[Any, Sequence[str]],
    metrics: Iterable[str] | None = None,
) -> dict[Any, dict[str, float]]:
    """`compute_caption_metrics` for several sets of predictions of the same images (runs, checkpoints, seeds):
    `{name: predictions}` in, `{name: scores}` out, each set's scores those `compute_caption_metrics` gives it
    alone. The toolkit's Java starts once for all of them, not once per set: one tokenizer call and one METEOR
    process (its ~10 s start), so scoring ten runs costs about what scoring one did.

    Every set is checked (the same rules as `compute_caption_metrics`, the message naming the set) before any
    Java starts.

    Example:
        >>> references = {1: ["a dog running on the beach"], 2: ["a cat sleeping on a sofa"]}
        >>> runs = {"eps=0": {1: "a dog", 2: "a cat"}, "eps=0.016": {1: "a dog on the beach", 2: "a cat on a sofa"}}
        >>> scores = compute_caption_metrics_many(runs, references, metrics=["CIDEr"])
        >>> scores["eps=0.016"]["CIDEr"] > scores["eps=0"]["CIDEr"]
        True
    """
    if not prediction_sets:
        raise ValueError("No prediction sets to score.")
    aligned = {}
    for name, predictions in prediction_sets.items():
        try:
            aligned[name] = _align(predictions, references)
        except (KeyError, ValueError, TypeError) as error:
            if name is None:
                raise
            raise type(error)(f"prediction set {name!r}: {error.args[0] if error.args else error}") from error
    names = _resolve_metric_names(metrics)
    if shutil.which("java") is None:
        raise RuntimeError(JAVA_INSTALL_HINT)

    # One tokenizer call for every set: the references once, each set's candidates after them. The toolkit's
    # scorers take {key: [tokenised caption, ...]}; positions as keys keep any id type usable (SPICE sorts the
    # keys and writes them to JSON).
    _, _, reference_lists = next(iter(aligned.values()))
    candidate_sets = {name: candidates for name, (_, candidates, _) in aligned.items()}
    res_sets, gts = _tokenize(candidate_sets, reference_lists)
    meteor = _Meteor() if "METEOR" in names else None
    try:
        scores = {}
        for name, (image_ids, _, _) in aligned.items():
            res = res_sets[name]
            _warn_about_empty_predictions(res, image_ids, name)
            scores[name] = _score_tokenized(gts, res, names, meteor)
    finally:
        if meteor is not None:
            meteor.close()
    return scores


def _score_tokenized(gts: dict, res: dict, names: list[str], meteor: "_Meteor | None") -> dict[str, float]:
    scores: dict[str, float] = {}
    if "BLEU" in names:
        # "closest" reference length for the brevity penalty, as the toolkit's Bleu always does.
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores.update({f"BLEU-{n}": float(value) for n, value in enumerate(bleu, start=1)})
    if "METEOR" in names:
        scores["METEOR"] = meteor.score(gts, res)
    if "ROUGE-L" in names:
        scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    if "CIDEr" in names:
        scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if "SPICE" in names:
        scores["SPICE"] = float(spice_module.Spice().compute_score(gts, res)[0])
    return scores


def _resolve_metric_names(metrics: Iterable[str] | None) -> list[str]:
    if metrics is None:
        if spice_models_available():
            return list(METRIC_NAMES)
        logger.info(
            "SPICE skipped: its Stanford CoreNLP models are not in pycocoevalcap/spice/lib "
            "(see modeling_capdec.evaluation.metrics.spice_models_available)."
        )
        return [name for name in METRIC_NAMES if name != "SPICE"]
    if isinstance(metrics, str):
        metrics = [metrics]
    names = list(metrics)
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; choose from {list(METRIC_NAMES)}.")
    if "SPICE" in names and not spice_models_available():
        raise FileNotFoundError(
            f"SPICE needs {' and '.join(SPICE_STANFORD_JARS)} in pycocoevalcap/spice/lib; install them with "
            "`python -c 'from pycocoevalcap.spice.get_stanford_models import get_stanford_models as g; g()'`."
        )
    if not names:
        raise ValueError(f"No metric asked for; choose from {list(METRIC_NAMES)}.")
    return names


def _align(
    predictions: Sequence[str] | Mapping[Any, str],
    references: Sequence[Sequence[str]] | Mapping[Any, Sequence[str]],
) -> tuple[list[Any], list[str], list[list[str]]]:
    """Check the inputs and return `(image_ids, candidates, reference_lists)` aligned by position."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be lists or dicts, not a single string.")
    predictions_by_id = isinstance(predictions, Mapping)
    if predictions_by_id != isinstance(references, Mapping):
        raise TypeError(
            "predictions and references must both be lists (matched by position) or both be dicts "
            f"(matched by image id); got {type(predictions).__name__} and {type(references).__name__}."
        )
    if predictions_by_id:
        unknown = [image_id for image_id in predictions if image_id not in references]
        if unknown:
            raise KeyError(
                _id_mismatch_message("prediction(s) for image id(s) with no references", unknown, references)
            )
        missing = [image_id for image_id in references if image_id not in predictions]
        if missing:
            raise KeyError(_id_mismatch_message("no prediction for image id(s)", missing, predictions))
        image_ids = list(references)
        candidates = [predictions[image_id] for image_id in image_ids]
        reference_lists = [references[image_id] for image_id in image_ids]
    else:
        candidates, reference_lists = list(predictions), list(references)
        if len(candidates) != len(reference_lists):
            raise ValueError(
                f"Got {len(candidates)} predictions but {len(reference_lists)} reference lists; "
                "they must be aligned one per image."
            )
        image_ids = list(range(len(candidates)))
    if not image_ids:
        raise ValueError("No images to score: predictions and references are empty.")

    where = "image id" if predictions_by_id else "index"
    for image_id, candidate, refs in zip(image_ids, candidates, reference_lists, strict=True):
        if not isinstance(candidate, str):
            raise TypeError(
                f"Prediction for {where} {image_id!r} is a {type(candidate).__name__}, not a string."
            )
        if isinstance(refs, str):
            raise ValueError(
                f"References for {where} {image_id!r} are a single string ({refs!r}); give a list of strings."
            )
        if not isinstance(refs, Sequence) or len(refs) == 0:
            raise ValueError(
                f"References for {where} {image_id!r} must be a non-empty list of strings, got {refs!r}."
            )
        for ref in refs:
            if not isinstance(ref, str):
                raise TypeError(
                    f"A reference for {where} {image_id!r} is a {type(ref).__name__}, not a string."
                )
            if not ref.strip():
                raise ValueError(f"A reference for {where} {image_id!r} is empty.")
            if "|||" in ref:
                # METEOR's Java process reads '|||' as its field separator: the score would be garbage.
                raise ValueError(
                    f"A reference for {where} {image_id!r} contains '|||', which METEOR cannot read."
                )
    return image_ids, candidates, [list(refs) for refs in reference_lists]


def _id_mismatch_message(problem: str, ids: list[Any], other: Mapping[Any, Any]) -> str:
    shown = ", ".join(repr(image_id) for image_id in ids[:5])
    message = f"{problem}: {shown}" + (f" (and {len(ids) - 5} more)" if len(ids) > 5 else "")
    # JSON object keys are always strings: {"42": ...} against {42: ...} is the usual cause.
    other_as_text = {str(key): key for key in other}
    if str(ids[0]) in other_as_text:
        match = other_as_text[str(ids[0])]
        message += (
            f". The other side has {match!r} ({type(match).__name__}) where this has {ids[0]!r} "
            f"({type(ids[0]).__name__}): convert the ids to one type."
        )
    return message


def _one_line(caption: str) -> str:
    # The toolkit writes one caption per line and pairs output lines with images by position; Java also
    # breaks lines at \r, \x85, \u2028, ... so one such character would shift every later caption onto the
    # wrong image. They are whitespace to the tokenizer anyway.
    return "".join(" " if unicodedata.category(char) in ("Cc", "Zl", "Zp") else char for char in caption)


@contextlib.contextmanager
def _java_stderr_captured():
    """Capture what the toolkit's Java tokenizer writes to the process's stderr (a "PTBTokenizer tokenized N tokens"
    line per call and "Untokenizable" warnings) instead of letting it reach the console at every evaluation. Yields
    the list the captured lines are put in; on an error they are raised with it, so nothing is lost."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)

        def read() -> str:
            captured.seek(0)
            return captured.read().decode(errors="replace")

        try:
            yield lines
        except Exception as error:
            os.dup2(saved, 2)
            raise RuntimeError(f"The COCO caption toolkit's tokenizer failed:\n{read()[-2000:]}") from error
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            lines.extend(read().splitlines())


def _tokenize(
    candidate_sets: Mapping[Any, list[str]], reference_lists: list[list[str]]
) -> tuple[dict[Any, dict], dict]:
    """PTB-tokenise (lower case, punctuation removed) with the toolkit, in one JVM for the references and every
    set of candidates. Returns `({set name: res}, gts)`, keyed by position as the scorers want.

    The tokenizer handles each line on its own, so one call gives the same tokens as `COCOEvalCap`'s two."""
    captions = {}
    for set_index, candidates in enumerate(candidate_sets.values()):
        for index, caption in enumerate(candidates):
            captions["prediction", set_index, index] = [{"caption": _one_line(caption)}]
    for index, refs in enumerate(reference_lists):
        captions["references", index] = [{"caption": _one_line(ref)} for ref in refs]
    with _java_stderr_captured() as java_messages:
        tokenized = PTBTokenizer().tokenize(captions)
    untokenizable = [line for line in java_messages if "Untokenizable" in line]
    if untokenizable:
        logger.info(
            "PTB tokenizer: %d untokenizable characters dropped (%s)", len(untokenizable), untokenizable[0]
        )
    res_sets = {
        name: {index: tokenized["prediction", set_index, index] for index in range(len(candidates))}
        for set_index, (name, candidates) in enumerate(candidate_sets.items())
    }
    gts = {index: tokenized["references", index] for index in range(len(reference_lists))}
    return res_sets, gts


def _warn_about_empty_predictions(res: dict[int, list[str]], image_ids: list[Any], name: Any = None) -> None:
    empty = [image_ids[index] for index, (caption,) in res.items() if not caption.strip()]
    if empty:
        logger.warning(
            "%s%d of %d predictions are empty after tokenisation (e.g. image %r); each scores 0 for its image.",
            "" if name is None else f"{name}: ",
            len(empty),
            len(image_ids),
            empty[0],
        )


class _Meteor:
    """The toolkit's METEOR process, started once and asked for one score per set of predictions (each EVAL line
    carries its set's own statistics, so a set's score does not depend on the sets scored before it)."""

    def __init__(self) -> None:
        self.meteor = Meteor()

    def score(self, gts: dict, res: dict) -> float:
        try:
            score, _ = self.meteor.compute_score(gts, res)
        except (ValueError, OSError) as error:
            # The JVM died (e.g. it could not reserve its 2 GB heap): an empty line where a score should be.
            # compute_score still holds the lock that Meteor.__del__ takes, which would hang at exit.
            self.meteor.lock.release()
            self.meteor.meteor_p.kill()
            stderr = self.meteor.meteor_p.stderr.read().decode(errors="replace").strip()
            raise RuntimeError(f"METEOR's Java process failed: {stderr or error}") from error
        return float(score)

    def close(self) -> None:
        # What Meteor.__del__ does, now rather than whenever the object is collected; then __del__ has nothing to
        # wait for (kill and wait on an ended process return at once).
        if self.meteor.meteor_p.poll() is None:
            self.meteor.meteor_p.stdin.close()
            self.meteor.meteor_p.kill()
            self.meteor.meteor_p.wait()


__all__ = [
    "compute_caption_metrics",
    "compute_caption_metrics_many",
    "spice_models_available",
    "METRIC_NAMES",
]
