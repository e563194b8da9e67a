"""The one check of a local corpus file before `datasets` reads it: encoding, blank files, malformed JSON lines,
ragged CSV rows.

`datasets` and pyarrow fail on such files with errors that name neither the file nor the line (a
`UnicodeDecodeError` from pyarrow, `StopIteration` for an empty file, the line number only in a chained cause).
`check_corpus_file` reads the text formats once, line by line, and either raises `CorpusFileError` naming the file,
the first bad line, the reason, how many lines are bad and the way on, or, with `skip_bad_lines=True`, writes a
UTF-8 copy without the bad lines (counted in a warning) for `datasets` to load.
"""

import bz2
import csv
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import datasets

logger = logging.getLogger(__name__)

# Formats read here as text; parquet and arrow files are binary and checked by their own readers.
TEXT_BUILDERS = ("json", "csv", "text")
# How many bad line numbers a message lists before "...".
SHOWN_LINES = 5
# Single-file compressions of a text corpus (`captions.jsonl.gz`); `datasets` reads them all, and the check here
# decompresses them as it reads (the stdlib for gzip/bz2/xz, the `zstandard` package that datasets needs for .zst).
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


class CorpusFileError(ValueError):
    """A corpus file cannot be read as it is; the message names the file, the line and the reason."""


def split_compression(path: Path) -> tuple[str, str]:
    """`(format suffix, compression suffix)` of a file name, lower-cased: `a.JSONL.gz` -> `(".jsonl", ".gz")`,
    `a.csv` -> `(".csv", "")`.

    Example:

    ```python
    >>> split_compression(Path("captions.jsonl.gz"))
    ('.jsonl', '.gz')

    ```
    """
    compression = path.suffix.lower() if path.suffix.lower() in COMPRESSIONS else ""
    inner = Path(path.name[: len(path.name) - len(compression)]) if compression else path
    return inner.suffix.lower(), compression


def open_corpus_file(path: Path) -> BinaryIO:
    """`path` opened for reading bytes, decompressed on the fly when its name ends in a compression suffix."""
    compression = split_compression(path)[1]
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".bz2":
        return bz2.open(path, "rb")
    if compression == ".xz":
        return lzma.open(path, "rb")
    if compression == ".zst":
        try:
            import zstandard
        except ImportError:
            raise CorpusFileError(
                f"Cannot read {path}: .zst files need the zstandard package (pip install zstandard), which "
                "datasets uses too."
            ) from None
        # A buffered reader, so that iterating gives lines as for the other formats.
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(path.open("rb"), closefd=True))
    return path.open("rb")


@dataclass
class BadLine:
    line: int  # 1-based line number in the file
    reason: str


def _decoded_lines(path: Path, encoding: str, bad: list[BadLine]) -> Iterator[tuple[int, str]]:
    """`(line number, text)` of each line that decodes; a line that does not is recorded in `bad`."""
    with open_corpus_file(path) as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 and encoding == "utf-8" else encoding)
            except UnicodeDecodeError as error:
                byte = raw[error.start : error.start + 1].hex()
                bad.append(
                    BadLine(number, f"byte 0x{byte} at column {error.start + 1} is not valid {encoding}")
                )
                continue
            yield number, text


def _json_objects(path: Path, encoding: str, bad: list[BadLine]) -> Iterator[tuple[str, dict]]:
    """`(line text, parsed object)` of each good line of a JSON-lines file, lazily; bad lines go to `bad`."""
    for number, text in _decoded_lines(path, encoding, bad):
        if not text.strip():
            continue
        try:
            value = json.loads(text.rstrip("\r\n"))
        except json.JSONDecodeError as error:
            bad.append(BadLine(number, f"malformed JSON ({error.msg} at column {error.colno})"))
            continue
        if not isinstance(value, dict):
            bad.append(BadLine(number, f"a JSON {type(value).__name__}, not an object of named fields"))
            continue
        yield text.rstrip("\r\n"), value


def _json_lines(path: Path, encoding: str, bad: list[BadLine]) -> list[str]:
    return [text + "\n" for text, _ in _json_objects(path, encoding, bad)]


def _json_document(path: Path, encoding: str) -> None:
    with open_corpus_file(path) as handle:
        data = handle.read()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise CorpusFileError(
            f"Cannot read {path} as json: line {line}: byte 0x{data[error.start : error.start + 1].hex()} is not valid {encoding}. "
            "Give the file's encoding (--train_file_encoding, e.g. latin-1)."
        ) from None
    try:
        value = json.loads(text.lstrip("\ufeff"))
    except json.JSONDecodeError as error:
        raise CorpusFileError(
            f"Cannot read {path} as json: line {error.lineno}, column {error.colno}: malformed JSON ({error.msg}). A JSON array "
            "cannot skip a bad entry: fix it, or write one object per line (.jsonl) and pass --skip_bad_lines."
        ) from None
    if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
        raise CorpusFileError(f"{path}: a JSON corpus is a list of objects (or one object per line).")
    if not value:
        raise CorpusFileError(f"{path} holds an empty JSON list: no captions.")


def _iter_csv_rows(path: Path, encoding: str, delimiter: str, bad: list[BadLine]) -> Iterator[list[str]]:
    """The rows of a CSV file (the header first), lazily; rows of another width than the header go to `bad`."""
    lines = _decoded_lines(path, encoding, bad)
    current = [0]

    def texts() -> Iterator[str]:
        for number, text in lines:
            current[0] = number
            yield text

    width = None
    try:
        for row in csv.reader(texts(), delimiter=delimiter):
            if not row:  # a blank line, as pandas skips it
                continue
            if width is None:
                width = len(row)
            elif len(row) != width:
                bad.append(BadLine(current[0], f"{len(row)} fields where the header has {width}"))
                continue
            yield row
    except csv.Error as error:
        bad.append(BadLine(current[0], f"malformed CSV ({error})"))


def _csv_rows(path: Path, encoding: str, delimiter: str, bad: list[BadLine]) -> list[list[str]]:
    return list(_iter_csv_rows(path, encoding, delimiter, bad))


def _describe(bad: list[BadLine]) -> str:
    if len(bad) == 1:
        return "1 bad line in all"
    shown = ", ".join(str(entry.line) for entry in bad[:SHOWN_LINES])
    return f"{len(bad)} bad lines in all (lines {shown}{', ...' if len(bad) > SHOWN_LINES else ''})"


def _clean_copy(path: Path, suffix: str, cache_dir: str | os.PathLike | None, settings: tuple) -> Path:
    stat = path.stat()
    key = hashlib.sha256(
        repr((str(path.resolve()), stat.st_size, stat.st_mtime_ns, settings)).encode()
    ).hexdigest()
    folder = Path(cache_dir) if cache_dir else Path(datasets.config.HF_DATASETS_CACHE) / "capdec"
    folder.mkdir(parents=True, exist_ok=True)
    # The copy is uncompressed: `a.jsonl.gz` -> `a-checked-<key>.jsonl`.
    compression = split_compression(path)[1]
    stem = Path(path.name[: len(path.name) - len(compression)]).stem
    return folder / f"{stem}-checked-{key[:16]}{suffix}"


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def _write_atomically(target: Path, write) -> None:
    # A kill while writing leaves `<name>.<pid>.tmp`, never a half-written copy under the name that is reused;
    # the next writer removes the ones whose process is gone.
    for leftover in target.parent.glob(target.name + ".*.tmp"):
        pid = leftover.name[len(target.name) + 1 : -len(".tmp")]
        if pid.isdigit() and not _process_is_alive(int(pid)):
            leftover.unlink(missing_ok=True)
    temporary = target.with_name(target.name + f".{os.getpid()}.tmp")
    with temporary.open("w", encoding="utf-8", newline="") as handle:
        write(handle)
    os.replace(temporary, target)


def check_corpus_file(
    path: Path,
    builder: str,
    encoding: str = "utf-8",
    skip_bad_lines: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Check a `.jsonl`/`.json`/`.csv`/`.tsv`/`.txt` corpus file; return the file for `datasets` to read.

    That is `path` itself when it is UTF-8 and every line is good, else a UTF-8 copy (under `cache_dir`) without
    the bad lines when `skip_bad_lines` is set (their count and numbers are logged as a warning), or one decoded
    from `encoding`. Raises `CorpusFileError` naming the file, the first bad line, the reason and the number of
    bad lines, for: bytes that are not valid `encoding`, malformed JSON lines or lines that are not objects, CSV
    rows whose number of fields differs from the header's, and files with no captions at all.

    Example:

    ```python
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "captions.jsonl"
    >>> _ = path.write_text('{"caption": "a dog"}\\n{"caption": "a cat"\\n')
    >>> check_corpus_file(path, "json")
    Traceback (most recent call last):
    ...
    modeling_capdec.training.corpus_files.CorpusFileError: Cannot read ...captions.jsonl as json: line 2: malformed JSON (Expecting ',' delimiter at column 20); 1 bad line in all. Fix the line, or pass --skip_bad_lines to skip and count bad lines.

    ```
    """
    if path.stat().st_size == 0:
        raise CorpusFileError(f"{path} is empty (0 bytes): a corpus needs at least one caption.")
    if builder not in TEXT_BUILDERS:
        return path
    try:
        return _check_text_file(path, builder, encoding, skip_bad_lines, cache_dir)
    except (OSError, EOFError, lzma.LZMAError) as error:
        # A truncated or corrupt compressed file fails while it is read, with a message that names no file.
        if not split_compression(path)[1] or isinstance(error, FileNotFoundError):
            raise
        raise CorpusFileError(
            f"Cannot decompress {path}: {type(error).__name__}: {error}. Is the file complete and compressed as "
            "its name says?"
        ) from error


def _check_text_file(
    path: Path, builder: str, encoding: str, skip_bad_lines: bool, cache_dir: str | os.PathLike | None
) -> Path:
    suffix = split_compression(path)[0]
    with open_corpus_file(path) as handle:
        start = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if builder == "json" and start.startswith(b"["):
        _json_document(path, encoding)
        if encoding == "utf-8":
            return path
        copy = _clean_copy(path, suffix, cache_dir, (encoding,))

        def decoded(out) -> None:
            with open_corpus_file(path) as handle:
                out.write(handle.read().decode(encoding))

        _write_atomically(copy, decoded)
        return copy

    bad: list[BadLine] = []
    if builder == "json":
        good: list = _json_lines(path, encoding, bad)
        suffix = ".jsonl"
    elif builder == "csv":
        delimiter = "\t" if suffix == ".tsv" else ","
        good = _csv_rows(path, encoding, delimiter, bad)
    else:
        good = [text for _, text in _decoded_lines(path, encoding, bad)]
    if bad and not skip_bad_lines:
        first = bad[0]
        way_on = (
            "Give the file's encoding (--train_file_encoding, e.g. latin-1), or pass --skip_bad_lines to skip and "
            "count such lines."
            if "is not valid" in first.reason
            else "Fix the line, or pass --skip_bad_lines to skip and count bad lines."
        )
        raise CorpusFileError(
            f"Cannot read {path} as {builder}: line {first.line}: {first.reason}; {_describe(bad)}. {way_on}"
        )
    data_rows = len(good) - 1 if builder == "csv" else sum(1 for text in good if text.strip())
    if data_rows <= 0:
        what = "only a header" if builder == "csv" and good else "no captions"
        skipped = f" ({len(bad)} bad lines skipped)" if bad else ""
        raise CorpusFileError(f"{path} holds {what}{skipped}: a corpus needs at least one caption.")
    if bad:
        logger.warning(
            "Skipped %s of %s (--skip_bad_lines); line %d: %s.",
            _describe(bad),
            path,
            bad[0].line,
            bad[0].reason,
        )
    elif encoding == "utf-8":
        return path
    copy = _clean_copy(path, suffix, cache_dir, (encoding, skip_bad_lines))
    if (
        copy.exists()
    ):  # made from this very file (its size and mtime are in the name): keep datasets' cache valid
        return copy
    if builder == "csv":
        _write_atomically(copy, lambda out: csv.writer(out, delimiter=delimiter).writerows(good))
    else:
        _write_atomically(copy, lambda out: out.writelines(text.rstrip("\r\n") + "\n" for text in good))
    return copy


# -- streaming ------------------------------------------------------------------------------------------------
# The field of the marker row that `stream_corpus_rows` yields in place of a skipped line, so that whoever consumes
# the stream counts the skip when it gets there (`training.streaming.StreamingCaptions`).
BAD_LINE_FIELD = "__capdec_bad_line__"


def check_streamable_file(path: Path, builder: str) -> None:
    """The checks of a corpus file that cost no pass over it, made before a streamed run starts: not empty, and
    (for `.json`) one object per line, since a JSON array can only be parsed whole."""
    if path.stat().st_size == 0:
        raise CorpusFileError(f"{path} is empty (0 bytes): a corpus needs at least one caption.")
    if builder == "json":
        try:
            with open_corpus_file(path) as handle:
                start = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        except (OSError, EOFError, lzma.LZMAError) as error:
            raise CorpusFileError(f"Cannot decompress {path}: {type(error).__name__}: {error}.") from error
        if start.startswith(b"["):
            raise CorpusFileError(
                f"Cannot stream {path}: a JSON array is parsed whole, not line by line. Write one object per "
                "line (.jsonl), or train without --streaming."
            )


def stream_corpus_rows(
    paths: list[str],
    builder: str,
    encoding: str = "utf-8",
    skip_bad_lines: bool = False,
    delimiter: str = ",",
    text_column: str = "text",
) -> Iterator[dict]:
    """The rows of text corpus files, read lazily line by line with the checks of `check_corpus_file`.

    A JSON line gives its object, a CSV row a dict keyed by the header (every field as text), a text line
    `{text_column: line}`. A bad line (bytes not valid in `encoding`, malformed JSON, a line that is not an object,
    a CSV row of another width than the header) raises `CorpusFileError` naming the file, the line and the
    reason, or with `skip_bad_lines` gives a row `{BAD_LINE_FIELD: "<file> line <n>: <reason>"}` in its place, to
    be counted by the consumer. A corrupt compressed file raises `CorpusFileError` when the stream reaches it.

    This is the generator of `datasets.IterableDataset.from_generator(..., gen_kwargs={"paths": [...]})`: the
    paths are its shards.

    Example:

    ```python
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "captions.jsonl"
    >>> _ = path.write_text('{"caption": "a dog"}\\nnot json\\n')
    >>> list(stream_corpus_rows([str(path)], "json", skip_bad_lines=True))[1]
    {'__capdec_bad_line__': '...captions.jsonl line 2: malformed JSON (Expecting value at column 1)'}

    ```
    """
    for name in paths:
        path = Path(name)
        try:
            yield from _stream_file(path, builder, encoding, skip_bad_lines, delimiter, text_column)
        except (OSError, EOFError, lzma.LZMAError) as error:
            if not split_compression(path)[1] or isinstance(error, FileNotFoundError):
                raise
            raise CorpusFileError(
                f"Cannot decompress {path}: {type(error).__name__}: {error}. Is the file complete and compressed "
                "as its name says?"
            ) from error


def _stream_file(
    path: Path, builder: str, encoding: str, skip_bad_lines: bool, delimiter: str, text_column: str
) -> Iterator[dict]:
    bad: list[BadLine] = []
    if builder == "json":
        rows: Iterator[dict] = (value for _, value in _json_objects(path, encoding, bad))
    elif builder == "csv":
        rows = _csv_dicts(_iter_csv_rows(path, encoding, delimiter, bad))
    else:
        rows = ({text_column: text.rstrip("\r\n")} for _, text in _decoded_lines(path, encoding, bad))
    reported = 0
    for row in rows:
        # Lines found bad while reading up to this row come before it in the file.
        for entry in bad[reported:]:
            yield _bad_line_row(path, builder, encoding, entry, skip_bad_lines)
        reported = len(bad)
        yield row
    for entry in bad[reported:]:
        yield _bad_line_row(path, builder, encoding, entry, skip_bad_lines)


def _csv_dicts(rows: Iterator[list[str]]) -> Iterator[dict]:
    header = next(rows, None)
    for row in rows:
        yield dict(zip(header, row, strict=True))


def _bad_line_row(path: Path, builder: str, encoding: str, entry: BadLine, skip_bad_lines: bool) -> dict:
    if skip_bad_lines:
        return {BAD_LINE_FIELD: f"{path} line {entry.line}: {entry.reason}"}
    way_on = (
        "Give the file's encoding (--train_file_encoding, e.g. latin-1), or pass --skip_bad_lines to skip and "
        "count such lines."
        if "is not valid" in entry.reason
        else "Fix the line, or pass --skip_bad_lines to skip and count bad lines."
    )
    raise CorpusFileError(
        f"Cannot read {path} as {builder}: line {entry.line}: {entry.reason} (found while streaming). {way_on}"
    )


__all__ = [
    "BAD_LINE_FIELD",
    "BadLine",
    "COMPRESSIONS",
    "CorpusFileError",
    "check_corpus_file",
    "check_streamable_file",
    "open_corpus_file",
    "split_compression",
    "stream_corpus_rows",
]
