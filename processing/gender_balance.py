"""Gender-balanced caption corpus: swap gendered words in a random half of the captions.

Each caption is swapped with probability ``probability`` (0.5 by default). The coin flips are drawn
up front from ``numpy.random.default_rng(seed)``, one per row in order, so the result depends only on
the seed and the row order, not on batching or ``num_proc``.

Swapping works on whole words (maximal runs of letters: ``manage``, ``human``, ``shepherd`` and
``man2`` are untouched), keeps attached punctuation (``man,`` ``(boy)`` ``man's`` ``Mr.``) and the case
pattern (``man``/``Man``/``MAN`` -> ``woman``/``Woman``/``WOMAN``). One-to-one pairs come from
:data:`GENDER_PAIRS` and are mapped in both directions.

The pronouns his/him/her/hers are not one-to-one, so they follow a documented rule instead:

* ``him`` -> ``her``; ``himself``/``herself`` are an ordinary pair.
* ``his`` -> ``hers`` at the end of a clause ("the bag is his."), else ``her`` ("his dog").
* ``her`` -> ``him`` at the end of a clause (punctuation or end of text follows: "hugs her.") or before
  a function word in :data:`OBJECT_HER_NEXT_WORDS` ("gives her a ball", "next to her on a bench"),
  else ``his`` ("her dog", "her own"). "watching her play" is read as "his play": a verb after an
  object ``her`` cannot be told from a noun after a possessive one without a parser.
* ``hers`` -> ``his``.

CLI::

    python -m processing.gender_balance --input data/coco_train_text --seed 0 \\
        --output_dir data/coco_train_text_balanced
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass, field

import numpy as np
from datasets import Dataset
from transformers import HfArgumentParser

from modeling_capdec.training.data import load_dataset_source
from processing.io_utils import OutputArguments, save_dataset

logger = logging.getLogger(__name__)

# (male, female), lower case, one-to-one. Plurals are listed because they are not regular ("men").
# "guy" has no natural female counterpart; "gal" keeps the informal register. Left out on purpose:
# "hero" (gender-neutral today, and "hero sandwich") and "grooms" (mostly the verb: "a woman grooms a dog").
GENDER_PAIRS: tuple[tuple[str, str], ...] = (
    ("man", "woman"), ("men", "women"), ("boy", "girl"), ("boys", "girls"), ("he", "she"),
    ("himself", "herself"), ("male", "female"), ("males", "females"), ("masculine", "feminine"),
    ("gentleman", "lady"), ("gentlemen", "ladies"), ("guy", "gal"), ("guys", "gals"),
    ("lad", "lass"), ("lads", "lasses"), ("mr", "mrs"), ("sir", "madam"),
    ("father", "mother"), ("fathers", "mothers"), ("dad", "mom"), ("dads", "moms"),
    ("daddy", "mommy"), ("son", "daughter"), ("sons", "daughters"), ("brother", "sister"),
    ("brothers", "sisters"), ("husband", "wife"), ("husbands", "wives"), ("uncle", "aunt"),
    ("uncles", "aunts"), ("nephew", "niece"), ("nephews", "nieces"), ("grandfather", "grandmother"),
    ("grandfathers", "grandmothers"), ("grandpa", "grandma"), ("grandson", "granddaughter"),
    ("grandsons", "granddaughters"), ("stepfather", "stepmother"), ("boyfriend", "girlfriend"),
    ("boyfriends", "girlfriends"), ("groom", "bride"), ("fiance", "fiancee"), ("fiancé", "fiancée"),
    ("king", "queen"), ("kings", "queens"), ("prince", "princess"), ("princes", "princesses"),
    ("emperor", "empress"), ("duke", "duchess"), ("monk", "nun"), ("monks", "nuns"),
    ("actor", "actress"), ("actors", "actresses"), ("waiter", "waitress"), ("waiters", "waitresses"),
    ("schoolboy", "schoolgirl"), ("schoolboys", "schoolgirls"), ("policeman", "policewoman"),
    ("policemen", "policewomen"), ("businessman", "businesswoman"), ("businessmen", "businesswomen"),
    ("sportsman", "sportswoman"), ("sportsmen", "sportswomen"), ("chairman", "chairwoman"),
    ("spokesman", "spokeswoman"),
)  # fmt: skip

# The words whose swap depends on context (see the module docstring); they must not be in GENDER_PAIRS.
CONTEXT_PRONOUNS = ("his", "him", "her", "hers")

# After an object "her", the next word starts a new phrase: an article, pronoun, preposition, particle
# or conjunction. Any other next word is read as the noun (or adjective) owned by a possessive "her".
OBJECT_HER_NEXT_WORDS = frozenset(
    "a an the this that these those some his her my your our their its "
    "to at in on up down out off over into onto with by for from of about around across along near "
    "behind under while as than and or but so then there here back away again too".split()
)

_WORD = re.compile(r"\b[^\W\d_]+\b")
_NEXT_WORD = re.compile(r"\s+(\w+)")


def build_swap_map(pairs: tuple[tuple[str, str], ...] = GENDER_PAIRS) -> dict[str, str]:
    """Both directions of ``pairs`` in one dict, after checking the pairs are consistent.

    Every word must be lower-case letters, appear once in all pairs, differ from its partner and not
    be one of the context pronouns; otherwise a ``ValueError`` names the offending word. This keeps
    the mapping an involution: swapping twice gives the original word back.

    Example:
        >>> build_swap_map((("man", "woman"), ("boy", "girl")))["woman"]
        'man'
        >>> build_swap_map((("man", "woman"), ("man", "lady")))
        Traceback (most recent call last):
        ...
        ValueError: 'man' appears in more than one gender pair
    """
    swap: dict[str, str] = {}
    for male, female in pairs:
        for word in (male, female):
            if not word.isalpha() or not word.islower():
                raise ValueError(f"{word!r} in the gender pairs must be lower-case letters only")
            if word in CONTEXT_PRONOUNS:
                raise ValueError(f"{word!r} is swapped by the pronoun rule and must not be in a pair")
            if word in swap:
                raise ValueError(f"{word!r} appears in more than one gender pair")
        if male == female:
            raise ValueError(f"{male!r} is paired with itself")
        swap[male], swap[female] = female, male
    return swap


SWAP_MAP = build_swap_map()


def _match_case(replacement: str, original: str) -> str:
    if original.isupper() and len(original) > 1:
        return replacement.upper()
    if original[0].isupper():
        return replacement[0].upper() + replacement[1:]
    return replacement


def _ends_clause(text: str, end: int) -> bool:
    # A pronoun ends a clause when no word follows it: the text ends or punctuation comes next.
    return _NEXT_WORD.match(text, end) is None


def _swap_pronoun(word: str, text: str, end: int) -> str:
    if word == "him":
        return "her"
    if word == "hers":
        return "his"
    if word == "his":
        return "hers" if _ends_clause(text, end) else "her"
    next_word = _NEXT_WORD.match(text, end)
    if next_word is None or next_word.group(1).lower() in OBJECT_HER_NEXT_WORDS:
        return "him"
    return "his"


def swap_gender(text: str) -> str:
    """Swap every gendered word in ``text`` (see the module docstring for the rules).

    Example:
        >>> swap_gender("A Man (with his dog) hands her a BOY's hat, then hugs her.")
        "A Woman (with her dog) hands him a GIRL's hat, then hugs him."
        >>> swap_gender("The human manager and the shepherd.")
        'The human manager and the shepherd.'
    """

    def replace(match: re.Match) -> str:
        word = match.group(0)
        lower = word.lower()
        if lower in SWAP_MAP:
            return _match_case(SWAP_MAP[lower], word)
        if lower in CONTEXT_PRONOUNS:
            return _match_case(_swap_pronoun(lower, text, match.end()), word)
        return word

    return _WORD.sub(replace, text)


def gender_balance(
    dataset: Dataset,
    probability: float = 0.5,
    seed: int = 0,
    column: str = "caption",
    flag_column: str | None = "gender_swapped",
) -> Dataset:
    """Swap the gendered words of each row's ``column`` with ``probability``, reproducibly per ``seed``.

    ``flag_column`` (if not ``None``) records which rows were drawn for swapping, including rows that
    hold no gendered word and so read the same.

    Example:
        >>> corpus = Dataset.from_dict({"caption": ["a man runs", "a girl sits", "a dog"]})
        >>> balanced = gender_balance(corpus, probability=1.0)
        >>> balanced["caption"][:], balanced["gender_swapped"][:]
        (['a woman runs', 'a boy sits', 'a dog'], [True, True, True])
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    if column not in dataset.column_names:
        raise ValueError(f"No column {column!r} in the dataset; columns: {dataset.column_names}")
    swapped = np.random.default_rng(seed).random(len(dataset)) < probability

    def swap_batch(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        flags = [bool(swapped[index]) for index in indices]
        batch[column] = [
            swap_gender(text) if flag else text for text, flag in zip(batch[column], flags, strict=True)
        ]
        if flag_column is not None:
            batch[flag_column] = flags
        return batch

    balanced = dataset.map(swap_batch, batched=True, with_indices=True, desc="Gender swap")
    logger.info(
        "Swapped %d of %d rows (probability %.2f, seed %d)",
        int(swapped.sum()),
        len(dataset),
        probability,
        seed,
    )
    return balanced


@dataclass
class GenderBalanceArguments:
    """Arguments of ``python -m processing.gender_balance``."""

    input: str = field(
        metadata={
            "help": "The corpus: a save_to_disk folder, a .jsonl/.csv/.parquet file or a .txt file (one caption a line)."
        }
    )
    split: str = field(default="train", metadata={"help": "Split of a folder holding several."})
    probability: float = field(default=0.5, metadata={"help": "Chance that a caption is swapped."})
    seed: int = field(default=0, metadata={"help": "Seed of the coin flips."})
    column: str = field(default="caption", metadata={"help": "Text column to swap."})


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; ``argv`` defaults to ``sys.argv[1:]``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = HfArgumentParser((GenderBalanceArguments, OutputArguments))
    args, output = parser.parse_args_into_dataclasses(args=argv)
    corpus = load_dataset_source(args.input, split=args.split, text_column=args.column)
    balanced = gender_balance(corpus, args.probability, args.seed, args.column)
    save_dataset(balanced, output.output_dir, output.output_jsonl)


if __name__ == "__main__":
    main(sys.argv[1:])
