"""Plain text (books, plays, news) -> a caption-like corpus of 5-19 word sentences, column ``caption``.

Pipeline, per file: drop a Project Gutenberg header/footer if present; drop all-caps heading or
speaker lines (``ACT I``, ``HAMLET.``) and all-caps speaker prefixes at line start
(``HAMLET. To be...`` -> ``To be...``); remove ``[stage directions]``; join the lines of each
paragraph (paragraphs are separated by blank lines); split paragraphs into sentences with a regex;
clean each sentence; keep those of ``min_words``..``max_words`` words (inclusive).

Sentence splitting is a deliberately simple regex, not a parser: a sentence ends at ``.``, ``!``, ``?``
or ``…`` (optionally followed by closing quotes/brackets) when whitespace and an upper-case letter,
digit or opening quote follow. Titles such as ``Mr.``, ``Mrs.``, ``Dr.``, ``St.`` and single-letter
initials (``J. R. R.``, but not the pronoun ``I.``) never end a sentence. Lower-case sentence starts
are therefore not split, and a sentence ending in an initial is joined to the next one; both are rare
in edited prose, and a joined sentence is usually dropped by the length filter.

CLI::

    python -m processing.text_corpus --inputs books/ hamlet.txt --deduplicate --output_dir data/books_text
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import HfArgumentParser

from processing.io_utils import OutputArguments, read_text, save_dataset

logger = logging.getLogger(__name__)

# Titles whose period never ends a sentence. "No.", "Co.", "Inc." and "etc." are left out on purpose:
# they end sentences often enough ("No. I won't.") that protecting them would join more than it saves.
ABBREVIATIONS = (
    "Mr", "Mrs", "Ms", "Messrs", "Mme", "Mlle", "Dr", "St", "Mt", "Jr", "Sr", "Prof", "Rev", "Fr",
    "Capt", "Col", "Gen", "Lt", "Sgt", "Cpl", "Gov", "Sen", "Rep", "Hon", "vs",
)  # fmt: skip

# A character that cannot occur in text stands in for a protected period while splitting.
_KEPT_DOT = "\ue000"
_ABBREVIATION_DOT = re.compile(r"\b(" + "|".join(ABBREVIATIONS) + r")\.")
_INITIAL_DOT = re.compile(r"\b([A-HJ-Z])\.")  # every capital except the pronoun "I"
_SENTENCE_END = re.compile(r"""([.!?…]+["'”’)\]]*)\s+(?=["'“‘(\[]*[A-Z0-9À-ÖØ-Þ])""")

_GUTENBERG_START = re.compile(r"^\*{3} ?START OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_GUTENBERG_END = re.compile(r"^\*{3} ?END OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
# An all-caps name of 2+ letters (spaces, apostrophes and hyphens allowed: "FIRST CLOWN", "LADY MACBETH").
_CAPS_NAME = r"[ \t]*[A-Z][A-Z'’ -]*[A-Z]"
_CAPS_LINE = re.compile(rf"^{_CAPS_NAME}[.:]?[ \t]*$", re.M)
_SPEAKER_PREFIX = re.compile(rf"^{_CAPS_NAME}[.:](?=\s)", re.M)
_STAGE_DIRECTION = re.compile(r"\[[^\]]*\]")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_DROPPED_CHARACTERS = str.maketrans("", "", '_"“”')
_DASH = re.compile(r"\s*(?:--+|—)\s*")
_ALPHANUMERIC = re.compile(r"[^\W_]")


def _strip_gutenberg(text: str) -> str:
    start, end = _GUTENBERG_START.search(text), _GUTENBERG_END.search(text)
    return text[start.end() if start else 0 : end.start() if end else len(text)]


def clean_sentence(sentence: str) -> str:
    """Normalise one sentence: one space between words, no ``_italics_`` marks, no double quotes.

    Double quotes are removed because splitting dialogue leaves them unmatched (``"Stop!`` / ``he
    cried."``) and a caption decoder has no use for them; apostrophes (``'tis``, ``dog's``) are kept.
    Dashes (``--``, ``—``) get spaces around them and leading dashes/commas are dropped.

    Example:
        >>> clean_sentence('  "Stop--now!" he  cried, _loudly_.')
        'Stop — now! he cried, loudly.'
    """
    sentence = sentence.translate(_DROPPED_CHARACTERS)
    sentence = _DASH.sub(" — ", sentence)
    sentence = " ".join(sentence.split())
    return sentence.lstrip("—-,;: ").strip()


def count_words(sentence: str) -> int:
    """Whitespace tokens that hold a letter or digit, so a lone dash is not a word.

    Example:
        >>> count_words("Stop — now! he cried.")
        4
    """
    return sum(1 for token in sentence.split() if _ALPHANUMERIC.search(token))


def split_sentences(text: str) -> list[str]:
    """Split raw text into cleaned sentences (see the module docstring for the rules).

    Example:
        >>> split_sentences("HAMLET.\\nMr. Smith met Dr. Who in St. Ives.\\nThey talked! 'Why?' asked he.")
        ['Mr. Smith met Dr. Who in St. Ives.', 'They talked!', "'Why?' asked he."]
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # An emptied speaker line leaves a blank line behind, so each speech becomes its own paragraph.
    text = _CAPS_LINE.sub("", text)
    text = _SPEAKER_PREFIX.sub("", text)
    text = _STAGE_DIRECTION.sub(" ", text)
    sentences = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = " ".join(paragraph.split())
        paragraph = _ABBREVIATION_DOT.sub(rf"\1{_KEPT_DOT}", paragraph)
        paragraph = _INITIAL_DOT.sub(rf"\1{_KEPT_DOT}", paragraph)
        for sentence in _SENTENCE_END.sub("\\1\n", paragraph).split("\n"):
            sentence = clean_sentence(sentence.replace(_KEPT_DOT, "."))
            if _ALPHANUMERIC.search(sentence):
                sentences.append(sentence)
    return sentences


def filter_sentences(
    sentences: Iterable[str], min_words: int = 5, max_words: int = 19, deduplicate: bool = False
) -> tuple[list[str], dict[str, int]]:
    """Keep sentences of ``min_words``..``max_words`` words (inclusive), optionally only first copies.

    Returns the kept sentences and counts ``{"total", "too_short", "too_long", "duplicates", "kept"}``.

    Example:
        >>> kept, counts = filter_sentences(["One two.", "A dog sat on the mat.", "A dog sat on the mat."],
        ...                                 deduplicate=True)
        >>> kept, counts["too_short"], counts["duplicates"]
        (['A dog sat on the mat.'], 1, 1)
    """
    if not 1 <= min_words <= max_words:
        raise ValueError(
            f"Need 1 <= min_words <= max_words, got min_words={min_words}, max_words={max_words}"
        )
    counts = {"total": 0, "too_short": 0, "too_long": 0, "duplicates": 0, "kept": 0}
    kept, seen = [], set()
    for sentence in sentences:
        counts["total"] += 1
        words = count_words(sentence)
        if words < min_words:
            counts["too_short"] += 1
        elif words > max_words:
            counts["too_long"] += 1
        elif deduplicate and sentence in seen:
            counts["duplicates"] += 1
        else:
            if deduplicate:
                seen.add(sentence)
            kept.append(sentence)
    counts["kept"] = len(kept)
    return kept, counts


def find_text_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and directories (searched recursively for ``*.txt``, sorted) into a list of files.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "b.txt").write_text("B."), (root / "a.txt").write_text("A.")
        >>> [path.name for path in find_text_files([root])]
        ['a.txt', 'b.txt']
    """
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.rglob("*.txt"))
            if not found:
                raise ValueError(f"No .txt files under {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"No such file or directory: {path}")
    return files


def text_corpus(
    paths: Iterable[str | os.PathLike],
    min_words: int = 5,
    max_words: int = 19,
    deduplicate: bool = False,
    encoding: str | None = None,
) -> Dataset:
    """Sentences of ``min_words``..``max_words`` words from text files/directories, column ``caption``.

    Files are decoded as UTF-8 with a per-line cp1252/latin-1 fallback unless ``encoding`` is given.
    Deduplication (exact match after cleaning) runs across all files. Counts are logged.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "book.txt"
        >>> _ = path.write_text("It rained. The old dog slept by the warm fire all night.")
        >>> text_corpus([path])["caption"][:]
        ['The old dog slept by the warm fire all night.']
    """
    files = find_text_files(paths)

    def all_sentences() -> Iterable[str]:
        for path in files:
            yield from split_sentences(_strip_gutenberg(read_text(path, encoding)))

    kept, counts = filter_sentences(all_sentences(), min_words, max_words, deduplicate)
    logger.info(
        "%d files: %d sentences, %d too short (< %d words), %d too long (> %d words), %d duplicates, %d kept",
        len(files),
        counts["total"],
        counts["too_short"],
        min_words,
        counts["too_long"],
        max_words,
        counts["duplicates"],
        counts["kept"],
    )
    return Dataset.from_dict({"caption": kept})


@dataclass
class TextCorpusArguments:
    """Arguments of ``python -m processing.text_corpus``."""

    inputs: list[str] = field(metadata={"help": "Text files and/or directories (searched for *.txt)."})
    min_words: int = field(default=5, metadata={"help": "Shortest sentence kept, in words."})
    max_words: int = field(default=19, metadata={"help": "Longest sentence kept, in words."})
    deduplicate: bool = field(default=False, metadata={"help": "Keep only the first copy of a sentence."})
    encoding: str | None = field(
        default=None,
        metadata={"help": "Force an encoding (default: UTF-8, per-line cp1252/latin-1 fallback)."},
    )


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; ``argv`` defaults to ``sys.argv[1:]``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, output = HfArgumentParser((TextCorpusArguments, OutputArguments)).parse_args_into_dataclasses(
        args=argv
    )
    corpus = text_corpus(args.inputs, args.min_words, args.max_words, args.deduplicate, args.encoding)
    save_dataset(corpus, output.output_dir, output.output_jsonl)


if __name__ == "__main__":
    main(sys.argv[1:])
