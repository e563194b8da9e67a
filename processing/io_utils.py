"""Small file helpers shared by the ``processing`` tools: robust text decoding and writing outputs.

Every tool writes a ``datasets.Dataset`` with ``save_to_disk`` and/or a UTF-8 jsonl file (one JSON object
per row), so a corpus can be loaded back with ``datasets.load_from_disk(output_dir)`` or
``datasets.load_dataset("json", data_files=output_jsonl)``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset

logger = logging.getLogger(__name__)


@dataclass
class OutputArguments:
    """Where a tool writes its dataset; at least one of the two must be given."""

    output_dir: str | None = field(
        default=None, metadata={"help": "Directory for `Dataset.save_to_disk` (load with `load_from_disk`)."}
    )
    output_jsonl: str | None = field(
        default=None, metadata={"help": "Path of a UTF-8 jsonl file, one JSON object per row."}
    )

    def __post_init__(self) -> None:
        if not self.output_dir and not self.output_jsonl:
            raise ValueError(
                "Give --output_dir and/or --output_jsonl: there is nowhere to write the dataset."
            )


def decode_text(data: bytes, encoding: str | None = None) -> str:
    """Decode bytes to text, falling back line by line when the file is not valid UTF-8.

    Corpora "in the wild" (FlickrStyle10k, old Gutenberg books) mix UTF-8 with Windows-1252 / latin-1.
    UTF-8 is tried first because valid UTF-8 is almost never produced by accident; a line that fails
    is decoded as cp1252 (curly quotes at 0x80-0x9f) and, if even that fails, as latin-1, which
    accepts every byte. Pass ``encoding`` to skip the guessing.

    Example:
        >>> decode_text("café\\n".encode("utf-8"))
        'café\\n'
        >>> decode_text(b"caf\\xe9 \\x93ok\\x94")
        'café “ok”'
    """
    if encoding is not None:
        return data.decode(encoding)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    lines = []
    for raw_line in data.split(b"\n"):
        for candidate in ("utf-8", "cp1252", "latin-1"):
            try:
                lines.append(raw_line.decode(candidate))
                break
            except UnicodeDecodeError:
                continue
    return "\n".join(lines)


def read_text(path: str | os.PathLike, encoding: str | None = None) -> str:
    """Read a text file with :func:`decode_text`; a missing file raises ``FileNotFoundError`` naming it.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = path.write_bytes(b"na\\xefve")
        >>> read_text(path)
        'naïve'
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {path}")
    return decode_text(path.read_bytes(), encoding)


def write_jsonl(dataset: Dataset, path: str | os.PathLike) -> None:
    """Write every row of ``dataset`` as one JSON object per line (UTF-8, non-ASCII kept as is).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "c.jsonl"
        >>> write_jsonl(Dataset.from_dict({"caption": ["a café"]}), path)
        >>> path.read_text(encoding="utf-8")
        '{"caption": "a café"}\\n'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for batch in dataset.iter(batch_size=10_000):
            columns = list(batch)
            for values in zip(*(batch[name] for name in columns), strict=True):
                handle.write(json.dumps(dict(zip(columns, values, strict=True)), ensure_ascii=False) + "\n")


def save_dataset(dataset: Dataset, output_dir: str | None = None, output_jsonl: str | None = None) -> None:
    """Save ``dataset`` with ``save_to_disk`` to ``output_dir`` and/or as jsonl to ``output_jsonl``.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> save_dataset(Dataset.from_dict({"caption": ["a dog"]}), out / "ds", out / "ds.jsonl")
        >>> sorted(p.name for p in out.iterdir())
        ['ds', 'ds.jsonl']
    """
    if not output_dir and not output_jsonl:
        raise ValueError("Give output_dir and/or output_jsonl: there is nowhere to write the dataset.")
    if output_dir:
        dataset.save_to_disk(str(output_dir))
        logger.info("Saved %d rows to %s", len(dataset), output_dir)
    if output_jsonl:
        write_jsonl(dataset, output_jsonl)
        logger.info("Wrote %d rows to %s", len(dataset), output_jsonl)
