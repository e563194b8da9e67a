"""Training data for CapDec: load a caption corpus, clean it, tokenise it and precompute CLIP embeddings once.

A corpus is any `datasets` source with a caption column holding a string or a list of strings per row:

- local `.json`/`.jsonl`, `.csv`/`.tsv`, `.txt` (one caption per line) or `.parquet` files: one path, a glob or a
  list of them, the text formats optionally compressed (`.gz`, `.bz2`, `.xz`, `.zst`),
- a `save_to_disk` folder (e.g. `data/coco_train_text` from `python -m processing.karpathy ...`),
- a Hub dataset name.

`prepare_training_dataset` turns it into rows of `input_ids` (caption + eos, decoder vocabulary), `example_id`
(for the collator's reproducible noise) and `clip_embeds` (the normalised CLIP text embedding, or image embedding
in supervised mode, float32), or `caption` when embedding on the fly. Every stage is a `Dataset.map` written to
an Arrow file named by a fingerprint of its inputs (the source's datasets fingerprint, the stage's settings and
the tokenizers and CLIP weights it uses): the result is memory-mapped, never held in RAM, and a second run with
the same inputs loads the files instead of running CLIP again.

Eval sets (one row per image: an image column and a list of reference captions) are the evaluation layer's:
`modeling_capdec.evaluation.eval_sets.load_eval_set`.
"""

import contextlib
import glob
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import pyarrow.compute as pc
import torch
from datasets import Dataset, DatasetDict, IterableDataset
from datasets.fingerprint import Hasher

from ..processing_capdec import load_image
from .corpus_files import (
    COMPRESSIONS,
    TEXT_BUILDERS,
    check_corpus_file,
    check_streamable_file,
    split_compression,
    stream_corpus_rows,
)
from .noise import EXAMPLE_ID_COLUMN

logger = logging.getLogger(__name__)

# Bump when a stage's output changes for the same inputs, so that old cache files are not reused.
CACHE_VERSION = "capdec-data-1"
# Captions sorted by length together before embedding, in units of embedding_batch_size (see embed_captions).
LENGTH_SORT_WINDOW = 16
FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "text",
    ".parquet": "parquet",
    ".arrow": "arrow",
}
DROP_REASONS = ("empty", "not text")


# -- loading ---------------------------------------------------------------------------------------------
def load_dataset_source(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    config_name: str | None = None,
    split: str = "train",
    cache_dir: str | None = None,
    text_column: str = "caption",
    encoding: str = "utf-8",
    skip_bad_lines: bool = False,
    streaming: bool = False,
) -> Dataset | IterableDataset:
    """Load one split from data files, a `save_to_disk` folder or a Hub dataset name (tried in that order).

    Data files are one path, a glob (`data/*.jsonl`, `data/**/*.csv`) or a list of paths and globs, all of one
    format: `.json`/`.jsonl`, `.csv`/`.tsv`, `.txt` (one caption per line into `text_column`), `.parquet`, `.arrow`;
    the text formats may be compressed (`.gz`, `.bz2`, `.xz`, `.zst`). They are read together by
    `datasets.load_dataset(builder, data_files=[...])`, as one split in the order given (a glob's matches sorted).

    Text files are read in `encoding` and checked line by line first (`training.corpus_files.check_corpus_file`,
    decompressing as it reads): a byte that is not valid in the encoding, a malformed JSON line, a CSV row with the
    wrong number of fields or an empty file raises `CorpusFileError` naming the file, the line and the reason;
    with `skip_bad_lines` the bad lines are skipped and counted in a warning instead. Other errors name what
    failed: a missing file or folder, or a glob that matches no file (`FileNotFoundError` with the path or
    pattern), a file that cannot be parsed or files of different formats (`ValueError` with the paths), an unknown
    split (`ValueError` listing the splits).

    Example:

    ```python
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "captions.txt"
    >>> _ = path.write_text("a dog on the beach\\na red bus\\n")
    >>> list(load_dataset_source(path)["caption"])
    ['a dog on the beach', 'a red bus']
    ```
    """
    if not isinstance(source, (str, os.PathLike)):
        sources = list(source)
        if not sources:
            raise ValueError("No training corpus given: the list of data files is empty.")
        if len(sources) > 1:
            return _load_files(sources, cache_dir, text_column, encoding, skip_bad_lines, streaming)
        source = sources[0]
    path = Path(source)
    if _is_glob(str(source)) and not path.exists():
        return _load_files([source], cache_dir, text_column, encoding, skip_bad_lines, streaming)
    if path.is_file() or split_compression(path)[0] in FILE_BUILDERS:
        return _load_files([path], cache_dir, text_column, encoding, skip_bad_lines, streaming)
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except FileNotFoundError as error:
            raise ValueError(f"{path} is not a `save_to_disk` dataset folder: {error}") from error
        picked = _pick_split(loaded, split, str(path))
        return picked.to_iterable_dataset() if streaming else picked
    if _looks_like_path(str(source)):
        raise FileNotFoundError(f"Data file or dataset folder not found: {source}")
    try:
        return datasets.load_dataset(
            str(source), config_name, split=split, cache_dir=cache_dir, streaming=streaming
        )
    except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as error:
        raise ValueError(f"Cannot load the dataset {str(source)!r} (split {split!r}): {error}") from error


def _looks_like_path(source: str) -> bool:
    # Hub dataset names are "name" or "owner/name"; anything else that does not exist is a missing path.
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source


def _is_glob(source: str) -> bool:
    return any(character in source for character in "*?[")


def _expand(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """The files named by paths and globs, in the order given; a glob's matches sorted, so that row order (and
    with it the example ids the noise is drawn from) is the same in every run."""
    files: list[Path] = []
    for source in sources:
        path = Path(source)
        if _is_glob(str(source)) and not path.exists():
            matches = sorted(Path(match) for match in glob.glob(str(source), recursive=True))
            matches = [match for match in matches if match.is_file()]
            if not matches:
                raise FileNotFoundError(f"No data file matches the pattern {str(source)!r}.")
            files.extend(matches)
        elif not path.is_file():
            raise FileNotFoundError(f"Data file not found: {path}")
        else:
            files.append(path)
    return files


def _builder(path: Path) -> str:
    suffix, compression = split_compression(path)
    builder = FILE_BUILDERS.get(suffix)
    if builder is None:
        shown = path.suffix if not compression else suffix + compression
        raise ValueError(
            f"Cannot read {path}: unknown extension {shown!r}; supported: {sorted(FILE_BUILDERS)}, the text "
            f"formats also compressed ({', '.join(COMPRESSIONS)})."
        )
    if compression and builder not in TEXT_BUILDERS:
        raise ValueError(
            f"Cannot read {path}: a {suffix} file is read as it is, not {compression}-compressed; decompress it."
        )
    return builder


def _resolve_files(sources: Sequence[str | os.PathLike]) -> tuple[list[Path], str, dict[str, str]]:
    """The files of paths and globs, their one builder, and its options (the delimiter of .tsv files)."""
    files = _expand(sources)
    builders = {path: _builder(path) for path in files}
    if len(set(builders.values())) > 1:
        listed = ", ".join(f"{path} ({builder})" for path, builder in builders.items())
        raise ValueError(f"The data files are of different formats; give files of one format: {listed}.")
    builder = builders[files[0]]
    # A .tsv is read by the csv builder with a tab; .csv and .tsv files together would need two delimiters.
    delimiters = {"\t" if split_compression(path)[0] == ".tsv" else "," for path in files}
    if builder == "csv" and len(delimiters) > 1:
        raise ValueError(f"Give .csv or .tsv files, not both: {', '.join(map(str, files))}.")
    return files, builder, {"delimiter": "\t"} if delimiters == {"\t"} else {}


def _load_files(
    sources: Sequence[str | os.PathLike],
    cache_dir: str | None,
    text_column: str,
    encoding: str,
    skip_bad_lines: bool,
    streaming: bool = False,
) -> Dataset | IterableDataset:
    files, builder, options = _resolve_files(sources)
    if streaming:
        return _stream_files(files, builder, options, text_column, encoding, skip_bad_lines)
    # The files datasets reads: each one itself, or a checked UTF-8 copy without the skipped lines.
    checked = [str(check_corpus_file(path, builder, encoding, skip_bad_lines, cache_dir)) for path in files]
    named = str(files[0]) if len(files) == 1 else f"{len(files)} files ({', '.join(map(str, files))})"
    try:
        dataset = datasets.load_dataset(
            builder, data_files=checked, split="train", cache_dir=cache_dir, **options
        )
    except Exception as error:  # the builders raise many types (DatasetGenerationError, ArrowInvalid, ...)
        raise ValueError(f"Cannot read {named} as {builder}: {type(error).__name__}: {error}") from error
    if builder == "text" and text_column != "text":
        dataset = dataset.rename_column("text", text_column)
    if len(files) > 1:
        logger.info("Corpus: %d rows from %s", len(dataset), named)
    return dataset


def _stream_files(
    files: list[Path],
    builder: str,
    options: dict[str, str],
    text_column: str,
    encoding: str,
    skip_bad_lines: bool,
) -> IterableDataset:
    """The files as one `IterableDataset` whose shards are the files (shuffled with them, split across nodes).

    Parquet and Arrow files are handed to `datasets.load_dataset(builder, data_files=..., streaming=True)`. The
    text formats are read by `corpus_files.stream_corpus_rows` instead: datasets' streaming readers stop at a bad
    line with an error that names neither the file nor the line (pyarrow's "JSON parse error: Invalid value. in
    row 1", a bare UnicodeDecodeError) and cannot skip it, while this reader names both or skips and counts."""
    for path in files:
        check_streamable_file(path, builder)
    if builder not in TEXT_BUILDERS:
        return datasets.load_dataset(
            builder, data_files=[str(path) for path in files], split="train", streaming=True
        )
    return IterableDataset.from_generator(
        stream_corpus_rows,
        gen_kwargs={
            "paths": [str(path) for path in files],
            "builder": builder,
            "encoding": encoding,
            "skip_bad_lines": skip_bad_lines,
            "delimiter": options.get("delimiter", ","),
            "text_column": text_column,
        },
    )


def _pick_split(loaded: Dataset | DatasetDict, split: str, source: str) -> Dataset:
    if isinstance(loaded, DatasetDict):
        if split not in loaded:
            raise ValueError(f"No split {split!r} in {source}; splits: {list(loaded)}")
        return loaded[split]
    return loaded


# -- cleaning and tokenisation ------------------------------------------------------------------------------
@dataclass
class CleaningReport:
    """What cleaning did to a corpus: every dropped or shortened caption is counted.

    Example:

    ```python
    >>> print(CleaningReport(rows=3, captions=4, kept=3, dropped_empty=1, dropped_not_text=0, truncated=1,
    ...                      duplicates=1).summary())
    3 rows, 4 captions: kept 3, dropped 1 empty and 0 not text, truncated 1 to max_caption_tokens; 1 of the kept are duplicates of another kept caption (trained on as often as they occur)
    ```
    """

    rows: int
    captions: int
    kept: int
    dropped_empty: int
    dropped_not_text: int
    truncated: int
    # Kept captions equal (after whitespace normalisation) to an earlier kept one. They stay: a corpus's repeats
    # are its caption distribution; the count says how much of it is repetition.
    duplicates: int = 0
    embeddings_from_cache: bool = False

    def summary(self) -> str:
        return (
            f"{self.rows} rows, {self.captions} captions: kept {self.kept}, dropped {self.dropped_empty} empty "
            f"and {self.dropped_not_text} not text, truncated {self.truncated} to max_caption_tokens; "
            f"{self.duplicates} of the kept are duplicates of another kept caption (trained on as often as they "
            "occur)"
        )


def _clean_batch(
    batch: dict[str, list],
    caption_column: str,
    tokenizer: Any,
    max_caption_tokens: int,
    carried: Sequence[str],
) -> dict[str, list]:
    """One output row per caption (lists are flattened); bad captions are kept as marked rows, so that
    cleaning can be counted from the cached result and a reloaded cache reports the same numbers."""
    output: dict[str, list] = {"caption": [], "input_ids": [], "drop_reason": [], "truncated": []}
    output.update({name: [] for name in carried})
    keep_positions, keep_texts = [], []
    for row, value in enumerate(batch[caption_column]):
        captions = value if isinstance(value, list) else [value]
        if not captions:  # an empty list: a row without captions
            captions = [""]
        for caption in captions:
            reason = ""
            if not isinstance(caption, str):
                reason = "not text"
            else:
                caption = " ".join(caption.split())  # newlines, tabs and doubled spaces in scraped captions
                reason = "" if caption else "empty"
            if not reason:
                keep_positions.append(len(output["caption"]))
                keep_texts.append(caption)
            output["caption"].append(caption if not reason else "")
            output["input_ids"].append([])
            output["drop_reason"].append(reason)
            output["truncated"].append(False)
            for name in carried:
                output[name].append(batch[name][row])
    if keep_texts:
        token_ids = tokenizer(keep_texts, add_special_tokens=False)["input_ids"]
        for position, ids in zip(keep_positions, token_ids, strict=True):
            if len(ids) > max_caption_tokens:
                ids = ids[:max_caption_tokens]
                output["truncated"][position] = True
                # CLIP then embeds the text the decoder learns, not the longer original.
                output["caption"][position] = tokenizer.decode(ids).strip()
            # The eos target teaches the decoder to stop after the caption.
            output["input_ids"][position] = list(ids) + [tokenizer.eos_token_id]
    return output


def count_cleaning(cleaned: Dataset, rows: int) -> CleaningReport:
    """Count kept, dropped, truncated and duplicate captions of a cleaned corpus with Arrow (no Python lists of
    rows)."""
    table = cleaned.data  # the memory-mapped Arrow table (a map's output has no indices mapping)
    reasons = {
        entry["values"]: entry["counts"] for entry in pc.value_counts(table.column("drop_reason")).to_pylist()
    }
    truncated = pc.sum(table.column("truncated").cast("int64")).as_py() or 0
    kept_captions = table.column("caption").filter(pc.equal(table.column("drop_reason"), ""))
    distinct = pc.count_distinct(kept_captions).as_py() if len(kept_captions) else 0
    return CleaningReport(
        rows=rows,
        captions=table.num_rows,
        kept=reasons.get("", 0),
        dropped_empty=reasons.get("empty", 0),
        dropped_not_text=reasons.get("not text", 0),
        truncated=truncated,
        duplicates=len(kept_captions) - distinct,
    )


# -- fingerprints and cache files ---------------------------------------------------------------------------
def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what a tokenizer does (its vocabulary, merges, normaliser, special tokens), independent of the
    truncation/padding state that calling it leaves behind."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
    else:
        spec = sorted(tokenizer.get_vocab().items())
    return Hasher.hash((type(tokenizer).__name__, spec, tokenizer.eos_token, tokenizer.model_max_length))


@torch.no_grad()
def clip_fingerprint(clip: torch.nn.Module) -> str:
    """A hash of a CLIP model's config and weights: a cache made with other weights is never reused."""
    checksum = [
        (name, float(param.double().sum()), float(param.double().abs().sum()))
        for name, param in clip.state_dict().items()
    ]
    return Hasher.hash((clip.config.to_json_string(use_diff=False), checksum))


def _cache_folder(cache_dir: str | os.PathLike | None) -> Path:
    folder = Path(cache_dir) if cache_dir else Path(datasets.config.HF_DATASETS_CACHE) / "capdec"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _cache_file(cache_dir: str | os.PathLike | None, stage: str, fingerprint: str) -> str:
    return str(_cache_folder(cache_dir) / f"{stage}-{fingerprint}.arrow")


# `Dataset.map` writes a stage to tempfile.NamedTemporaryFile(dir=<the cache file's folder>) ("tmp" + 8 characters)
# and renames it when done; a run killed meanwhile leaves that file behind.
_TEMPORARY_FILE = re.compile(r"^tmp[a-z0-9_]{8}$")


@contextlib.contextmanager
def _cache_folder_in_use(folder: Path) -> Iterator[None]:
    """Hold a shared lock on the cache folder while the stages write to it; whoever finds no other holder removes
    the temporary files of killed runs (a live run's temporary file is never touched: it holds the lock).

    A lock dies with its process, so a kill -9 leaves no stale lock, only the temporary file cleaned up here by the
    next run. Where `fcntl` is missing (Windows) nothing is removed.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(folder / ".capdec-cache.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another run uses the folder now: its temporary files may be live
            pass
        else:
            leftovers = [
                path for path in folder.iterdir() if path.is_file() and _TEMPORARY_FILE.match(path.name)
            ]
            for path in leftovers:
                path.unlink(missing_ok=True)
            if leftovers:
                logger.warning(
                    "Removed %d temporary file(s) of an interrupted run from %s: %s",
                    len(leftovers),
                    folder,
                    ", ".join(path.name for path in leftovers),
                )
        fcntl.flock(lock, fcntl.LOCK_SH)  # the exclusive lock (if taken) becomes shared
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- the pipeline -----------------------------------------------------------------------------------------
def prepare_training_dataset(
    dataset: Dataset,
    model: Any,
    processor: Any,
    mode: Literal["text", "supervised"] = "text",
    caption_column: str = "caption",
    image_column: str | None = None,
    max_caption_tokens: int = 64,
    embed_on_the_fly: bool = False,
    embedding_batch_size: int = 256,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    overwrite_cache: bool = False,
    device: str | torch.device | None = None,
) -> tuple[Dataset, CleaningReport]:
    """Clean, tokenise and embed a caption corpus for CapDec training (cached on disk, memory-mapped).

    Stages (each a `Dataset.map` cached under `cache_dir`, default `HF_DATASETS_CACHE/capdec`):

    1. supervised mode only: CLIP image embeddings of `image_column`, one per row (before captions are
       flattened, so an image with five captions is embedded once);
    2. flatten the caption lists, drop empty or non-text captions, tokenise with the decoder tokenizer,
       truncate to `max_caption_tokens` tokens and append eos (the dropped captions are counted, not kept);
    3. text mode: normalised CLIP text embeddings of the (possibly truncated) captions, `embedding_batch_size`
       at a time on `device`; with `embed_on_the_fly` the caption text is kept instead.

    Returns the dataset (`input_ids`, `example_id`, and `clip_embeds` float32 or `caption`) and a
    `CleaningReport` (whose `embeddings_from_cache` says whether stage 3 was loaded from its cache file).
    Raises `ValueError` when a column is missing (listing the columns that exist) or when nothing is left
    after cleaning (saying how many captions were dropped and why).

    Example:

    ```python
    >>> corpus = load_dataset_source("captions.jsonl")  # doctest: +SKIP
    >>> train_dataset, report = prepare_training_dataset(corpus, model, processor)  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
    566747 rows, 566747 captions: kept 566747, dropped 0 empty and 0 not text, truncated 3 to max_caption_tokens
    ```
    """
    _check_inputs(dataset, model, mode, caption_column, image_column, max_caption_tokens, embed_on_the_fly)
    if not isinstance(embedding_batch_size, int) or embedding_batch_size < 1:
        raise ValueError(
            f"embedding_batch_size must be a whole number >= 1 (captions per CLIP forward), got {embedding_batch_size!r}."
        )
    if num_proc is not None and num_proc < 1:
        raise ValueError(f"num_proc (--preprocessing_num_workers) must be >= 1 or unset, got {num_proc}.")
    device = clip_on_device(model, device)
    clip_hash = clip_fingerprint(model.clip) if not embed_on_the_fly else None
    cache = {"cache_dir": cache_dir, "overwrite_cache": overwrite_cache}
    with _cache_folder_in_use(_cache_folder(cache_dir)):
        return _prepare(
            dataset,
            model,
            processor,
            mode,
            caption_column,
            image_column,
            max_caption_tokens,
            embed_on_the_fly,
            embedding_batch_size,
            num_proc,
            device,
            clip_hash,
            cache,
        )


def _prepare(
    dataset: Dataset,
    model: Any,
    processor: Any,
    mode: str,
    caption_column: str,
    image_column: str | None,
    max_caption_tokens: int,
    embed_on_the_fly: bool,
    embedding_batch_size: int,
    num_proc: int | None,
    device: torch.device,
    clip_hash: str | None,
    cache: dict[str, Any],
) -> tuple[Dataset, CleaningReport]:
    source, carried = dataset, []
    if mode == "supervised":
        source = _embed_images(
            dataset,
            model,
            processor,
            image_column,
            caption_column,
            embedding_batch_size,
            device,
            clip_hash,
            **cache,
        )
        carried = ["clip_embeds"]
    cleaned = _clean_captions(
        source, processor, caption_column, max_caption_tokens, carried, num_proc, **cache
    )
    report = count_cleaning(cleaned, rows=len(dataset))
    logger.info("Corpus cleaning: %s", report.summary())
    if report.kept == 0:
        raise ValueError(
            f"The corpus is empty after cleaning: all {report.captions} captions of {report.rows} rows were dropped "
            f"({report.dropped_empty} empty, {report.dropped_not_text} not text) in column {caption_column!r}."
        )
    final, report.embeddings_from_cache = _finish(
        cleaned, model, processor, mode, embed_on_the_fly, embedding_batch_size, device, clip_hash, **cache
    )
    numeric = [name for name in final.column_names if name != "caption"]
    return final.with_format("numpy", columns=numeric, output_all_columns=True), report


def _check_inputs(
    dataset: Dataset,
    model: Any,
    mode: str,
    caption_column: str,
    image_column: str | None,
    max_caption_tokens: int,
    embed_on_the_fly: bool,
) -> None:
    if mode not in ("text", "supervised"):
        raise ValueError(f"mode must be 'text' or 'supervised', got {mode!r}.")
    if embed_on_the_fly and mode != "text":
        raise ValueError("embed_on_the_fly embeds caption text with CLIP: it exists for mode='text' only.")
    if max_caption_tokens < 1:
        raise ValueError(f"max_caption_tokens must be >= 1, got {max_caption_tokens}.")
    columns = dataset.column_names
    if caption_column not in columns:
        raise ValueError(
            f"The caption column {caption_column!r} is not in the corpus; its columns are {columns}."
        )
    if mode == "supervised" and (image_column is None or image_column not in columns):
        raise ValueError(
            f"Supervised training needs an image column; {image_column!r} is not in the corpus, whose columns "
            f"are {columns}."
        )
    _check_positions(model, max_caption_tokens)


def _clean_captions(
    source: Dataset,
    processor: Any,
    caption_column: str,
    max_caption_tokens: int,
    carried: list[str],
    num_proc: int | None,
    cache_dir: str | os.PathLike | None,
    overwrite_cache: bool,
) -> Dataset:
    """Stage 2: one row per caption, with its decoder ids and why it is dropped (if it is)."""
    clean_hash = Hasher.hash(
        (
            CACHE_VERSION,
            "clean",
            source._fingerprint,
            caption_column,
            max_caption_tokens,
            tokenizer_fingerprint(processor.tokenizer),
            carried,
        )
    )
    clean_features = datasets.Features(
        {
            "caption": datasets.Value("string"),
            "input_ids": datasets.List(datasets.Value("int32")),
            "drop_reason": datasets.Value("string"),
            "truncated": datasets.Value("bool"),
            **{name: source.features[name] for name in carried},
        }
    )
    return source.map(
        _clean_batch,
        batched=True,
        fn_kwargs={
            "caption_column": caption_column,
            "tokenizer": processor.tokenizer,
            "max_caption_tokens": max_caption_tokens,
            "carried": carried,
        },
        remove_columns=source.column_names,
        features=clean_features,
        num_proc=num_proc,
        cache_file_name=_cache_file(cache_dir, "clean", clean_hash),
        new_fingerprint=clean_hash,
        load_from_cache_file=not overwrite_cache,
        desc="Cleaning and tokenising captions",
    )


def _finish(
    cleaned: Dataset,
    model: Any,
    processor: Any,
    mode: str,
    embed_on_the_fly: bool,
    embedding_batch_size: int,
    device: torch.device,
    clip_hash: str | None,
    cache_dir: str | os.PathLike | None,
    overwrite_cache: bool,
) -> tuple[Dataset, bool]:
    """Stage 3: the kept rows with their example ids and CLIP text embeddings (or caption text); and whether
    they came from the cache file."""
    final_hash = Hasher.hash(
        (
            CACHE_VERSION,
            "final",
            cleaned._fingerprint,
            mode,
            embed_on_the_fly,
            clip_hash,
            tokenizer_fingerprint(processor.clip_tokenizer),
        )
    )
    final_features = {
        "input_ids": datasets.List(datasets.Value("int32")),
        EXAMPLE_ID_COLUMN: datasets.Value("int64"),
    }
    if embed_on_the_fly:
        final_features["caption"] = datasets.Value("string")
    else:
        dim = model.config.clip_projection_dim
        final_features["clip_embeds"] = datasets.List(datasets.Value("float32"), length=dim)
    cache_file = _cache_file(cache_dir, "embeds" if not embed_on_the_fly else "final", final_hash)
    from_cache = os.path.isfile(cache_file) and not overwrite_cache
    if from_cache:
        logger.info("Reusing cached training data %s", cache_file)
    final = cleaned.map(
        _finish_batch,
        batched=True,
        with_indices=True,
        # Map batches of many forwards, so that sorting by length inside one (embed_captions) finds captions
        # of like length to batch together; the rows are written back in corpus order.
        batch_size=embedding_batch_size * LENGTH_SORT_WINDOW,
        fn_kwargs={
            "model": model,
            "processor": processor,
            "mode": mode,
            "embed_on_the_fly": embed_on_the_fly,
            "device": device,
            "forward_batch_size": embedding_batch_size,
        },
        remove_columns=cleaned.column_names,
        features=datasets.Features(final_features),
        cache_file_name=cache_file,
        new_fingerprint=final_hash,
        load_from_cache_file=not overwrite_cache,
        desc="CLIP text embeddings" if mode == "text" and not embed_on_the_fly else "Dropping bad captions",
    )
    return final, from_cache


def _check_positions(model: Any, max_caption_tokens: int) -> None:
    text_config = model.config.text_config.get_text_config()
    max_positions = getattr(text_config, "max_position_embeddings", None) or getattr(
        text_config, "n_positions", None
    )
    needed = model.config.prefix_length + max_caption_tokens + 1
    if max_positions is not None and needed > max_positions:
        raise ValueError(
            f"prefix_length ({model.config.prefix_length}) + max_caption_tokens ({max_caption_tokens}) + eos = "
            f"{needed} positions, but the decoder has {max_positions}: lower max_caption_tokens."
        )


def _finish_batch(
    batch: dict[str, list],
    indices: list[int],
    model: Any,
    processor: Any,
    mode: str,
    embed_on_the_fly: bool,
    device: torch.device,
    forward_batch_size: int,
) -> dict[str, Any]:
    keep = [i for i, reason in enumerate(batch["drop_reason"]) if not reason]
    output: dict[str, Any] = {
        "input_ids": [batch["input_ids"][i] for i in keep],
        # Row numbers of the cleaned corpus: stable across runs, so the noise of an example is too.
        EXAMPLE_ID_COLUMN: [indices[i] for i in keep],
    }
    captions = [batch["caption"][i] for i in keep]
    if embed_on_the_fly:
        output["caption"] = captions
    elif mode == "supervised":
        output["clip_embeds"] = [batch["clip_embeds"][i] for i in keep]
    elif not keep:
        output["clip_embeds"] = []
    else:
        output["clip_embeds"] = embed_captions(captions, model, processor, forward_batch_size, device)
    return output


@torch.no_grad()
def clip_on_device(model: Any, device: str | torch.device | None = None) -> torch.device:
    """The device the model's CLIP embeds on: `device`, where the CLIP is moved first (before training, Trainer
    moves the rest of the model later), or, without one, where the CLIP already is.

    Example:

    ```python
    >>> clip_on_device(model, "cuda")  # doctest: +SKIP
    device(type='cuda', index=0)
    ```
    """
    if device is not None:
        model.clip.to(device)
    return next(model.clip.parameters()).device


def embed_captions(
    captions: list[str], model: Any, processor: Any, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Normalised CLIP text embeddings `(len(captions), clip_projection_dim)` float32 on the CPU, in the order given.

    The forwards run `batch_size` captions at a time in order of length: each forward pads only to its own
    longest caption, so a batch of 5-token captions does not pay for one 30-token caption among them.
    """
    tokenizer = processor.clip_tokenizer
    token_ids = tokenizer(captions, truncation=True, max_length=processor.clip_max_length)["input_ids"]
    by_length = sorted(range(len(captions)), key=lambda i: len(token_ids[i]))
    embeds = torch.empty(len(captions), model.config.clip_projection_dim)
    for start in range(0, len(by_length), batch_size):
        rows = by_length[start : start + batch_size]
        clip_inputs = tokenizer.pad({"input_ids": [token_ids[i] for i in rows]}, return_tensors="pt").to(
            device
        )
        batch = model.get_text_embeds(clip_inputs["input_ids"], clip_inputs["attention_mask"])
        embeds[rows] = batch.float().cpu()
    return embeds


def _embed_images(
    dataset: Dataset,
    model: Any,
    processor: Any,
    image_column: str,
    caption_column: str,
    batch_size: int,
    device: torch.device,
    clip_hash: str,
    cache_dir: str | os.PathLike | None,
    overwrite_cache: bool,
) -> Dataset:
    """Stage 1 (supervised): one CLIP image embedding per row, carried with the row's captions."""

    def embed(batch: dict[str, list], indices: list[int]) -> dict[str, Any]:
        images = [
            load_image(source, index) for source, index in zip(batch[image_column], indices, strict=True)
        ]
        pixel_values = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
        return {"clip_embeds": model.get_image_embeds(pixel_values).float().cpu().numpy()}

    image_hash = Hasher.hash(
        (
            CACHE_VERSION,
            "images",
            dataset._fingerprint,
            image_column,
            caption_column,
            clip_hash,
            processor.image_processor.to_json_string(),
        )
    )
    # Only the captions travel on: copying the images into the cache file would duplicate the image data.
    features = datasets.Features(
        {
            caption_column: dataset.features[caption_column],
            "clip_embeds": datasets.List(datasets.Value("float32"), length=model.config.clip_projection_dim),
        }
    )
    return dataset.map(
        embed,
        batched=True,
        with_indices=True,
        batch_size=batch_size,
        remove_columns=[name for name in dataset.column_names if name != caption_column],
        features=features,
        cache_file_name=_cache_file(cache_dir, "image-embeds", image_hash),
        new_fingerprint=image_hash,
        load_from_cache_file=not overwrite_cache,
        desc="CLIP image embeddings",
    )


__all__ = [
    "CleaningReport",
    "count_cleaning",
    "embed_captions",
    "load_dataset_source",
    "prepare_training_dataset",
]
