"""Streaming training data (`--streaming`): a caption corpus read, cleaned and tokenised as training consumes it.

`training.data.load_dataset_source(..., streaming=True)` gives a `datasets.IterableDataset` of raw rows;
`prepare_streaming_dataset` wraps it in `StreamingCaptions`, a torch `IterableDataset` that

- shuffles the rows with datasets' seeded buffer (`shuffle_buffer` rows; the files, which are the shards, are
  shuffled too) and a new order in every pass (`set_epoch(pass)`),
- cleans and tokenises them with the non-streaming path's own rules (`data._clean_batch`: flatten caption lists,
  drop empty and non-text captions, truncate to `max_caption_tokens`, append eos),
- yields `input_ids`, `caption` (CLIP embeds it in each step, as with `--embed_on_the_fly`) and `example_id`, the
  running index of the caption in the run (dropped ones included), which the collator draws the noise from,
- starts the next pass when the stream ends, so the iterator never ends: Trainer counts `max_steps`, and its
  resume (which replays the first `global_step` batches of the iterator) rebuilds the same rows, ids and noise,
- counts what it reads in a `StreamingCleaningReport` (rows, captions, kept, dropped, truncated, skipped bad lines,
  passes) as the captions are consumed.

Without shuffling, the first pass yields the rows and example ids that `prepare_training_dataset(...,
embed_on_the_fly=True)` gives, in corpus order.
"""

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
from datasets import IterableDataset
from transformers import TrainerCallback

from .corpus_files import BAD_LINE_FIELD, SHOWN_LINES
from .data import _check_positions, _clean_batch
from .noise import EXAMPLE_ID_COLUMN

logger = logging.getLogger(__name__)

# Rows cleaned and tokenised together (one tokenizer call); the counts still advance caption by caption.
ROWS_PER_CHUNK = 64
# The carried column that tells which row of a chunk a cleaned caption came from.
_ROW = "__capdec_row__"


@dataclass
class StreamingCleaningReport:
    """What cleaning did to the captions a streamed run has read so far (the whole run once training ends).

    Counts advance as captions are consumed; a run resumed from a checkpoint re-reads the stream up to it, so its
    counts are those of the uninterrupted run. Duplicates are not counted: that would need every caption kept in
    memory.

    Example:

    ```python
    >>> print(StreamingCleaningReport(rows=3, captions=4, kept=3, dropped_empty=1, truncated=1).summary())
    so far: 3 rows read (0 complete passes over the stream), 4 captions: kept 3, dropped 1 empty and 0 not text, truncated 1 to max_caption_tokens, 0 bad lines skipped; duplicates are not counted when streaming

    ```
    """

    rows: int = 0
    captions: int = 0
    kept: int = 0
    dropped_empty: int = 0
    dropped_not_text: int = 0
    truncated: int = 0
    skipped_lines: int = 0
    passes: int = 0  # complete passes over the stream
    finished: bool = False  # set when training ends: the counts are the run's

    def summary(self) -> str:
        return (
            f"{'over the run' if self.finished else 'so far'}: {self.rows} rows read ({self.passes} complete passes over the stream), "
            f"{self.captions} captions: kept {self.kept}, dropped {self.dropped_empty} empty and "
            f"{self.dropped_not_text} not text, truncated {self.truncated} to max_caption_tokens, "
            f"{self.skipped_lines} bad lines skipped; duplicates are not counted when streaming"
        )

    def metrics(self) -> dict[str, int]:
        """The counts as run metrics (`corpus_rows`, `corpus_kept`, ...), for `train_results.json`."""
        return {
            f"corpus_{field.name}": getattr(self, field.name) for field in fields(self) if field.type is int
        }

    def reset(self) -> None:
        for field in fields(self):
            setattr(self, field.name, field.default)


class StreamingCaptions(torch.utils.data.IterableDataset):
    """Training examples from a `datasets.IterableDataset` of caption rows, cleaned and tokenised as they are read.

    See the module docstring. `report` is updated in place as examples are consumed (and reset when a new
    iteration starts: one iteration is one training run).

    Example:

    ```python
    >>> stream = load_dataset_source("captions.jsonl.gz", streaming=True)  # doctest: +SKIP
    >>> examples = StreamingCaptions(stream, processor.tokenizer, shuffle_buffer=1000, seed=0)  # doctest: +SKIP
    >>> next(iter(examples))  # doctest: +SKIP
    {'input_ids': [64, 3290, 2491, 50256], 'caption': 'a dog running', 'example_id': 0}
    ```
    """

    def __init__(
        self,
        stream: IterableDataset,
        tokenizer: Any,
        caption_column: str = "caption",
        max_caption_tokens: int = 64,
        shuffle_buffer: int = 0,
        seed: int = 0,
    ):
        self.stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer) if shuffle_buffer else stream
        self.tokenizer = tokenizer
        self.caption_column = caption_column
        self.max_caption_tokens = max_caption_tokens
        self.report = StreamingCleaningReport()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        report = self.report
        report.reset()
        example_id = 0
        for pass_index in itertools.count():
            self.stream.set_epoch(pass_index)  # a new shuffle order in each pass (no-op without shuffling)
            before = StreamingCleaningReport(**vars(report))
            rows = iter(self.stream)
            while chunk := list(itertools.islice(rows, ROWS_PER_CHUNK)):
                for example in self._clean_chunk(chunk):
                    example[EXAMPLE_ID_COLUMN] = example_id
                    example_id += 1
                    if example["input_ids"] is not None:
                        yield example
            if report.kept == before.kept:
                raise ValueError(
                    f"The corpus is empty after cleaning: all {report.captions - before.captions} captions of "
                    f"{report.rows - before.rows} rows were dropped ({report.dropped_empty - before.dropped_empty} "
                    f"empty, {report.dropped_not_text - before.dropped_not_text} not text; "
                    f"{report.skipped_lines - before.skipped_lines} bad lines skipped) in column "
                    f"{self.caption_column!r}."
                )
            report.passes += 1
            logger.info("Streaming: pass %d over the corpus done; %s", report.passes, report.summary())

    def _clean_chunk(self, chunk: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Every caption of the chunk's rows in order (dropped ones with `input_ids=None`), counted as it is
        yielded; a skipped bad line is counted where it stood."""
        report = self.report
        good = [(position, row) for position, row in enumerate(chunk) if BAD_LINE_FIELD not in row]
        batch = {
            self.caption_column: [row.get(self.caption_column) for _, row in good],
            _ROW: [position for position, _ in good],
        }
        cleaned = _clean_batch(batch, self.caption_column, self.tokenizer, self.max_caption_tokens, [_ROW])
        by_row: dict[int, list[int]] = {}
        for index, position in enumerate(cleaned[_ROW]):
            by_row.setdefault(position, []).append(index)
        for position, row in enumerate(chunk):
            if BAD_LINE_FIELD in row:
                report.skipped_lines += 1
                if report.skipped_lines <= SHOWN_LINES:
                    logger.warning("Skipped (--skip_bad_lines) %s.", row[BAD_LINE_FIELD])
                continue
            report.rows += 1
            for index in by_row[position]:
                report.captions += 1
                reason = cleaned["drop_reason"][index]
                if reason:
                    report.dropped_empty += reason == "empty"
                    report.dropped_not_text += reason == "not text"
                    yield {"input_ids": None}
                    continue
                report.kept += 1
                report.truncated += cleaned["truncated"][index]
                yield {"input_ids": cleaned["input_ids"][index], "caption": cleaned["caption"][index]}


class StreamingReportCallback(TrainerCallback):
    """Logs a streamed run's cleaning counts at each Trainer log (at info level) and, when training ends, marks
    them as the run's and prints them (process 0, at any log level: what cleaning dropped is never silent).
    `CapDecTrainer` adds it when its training set is a `StreamingCaptions`."""

    def __init__(self, report: StreamingCleaningReport):
        self.report = report

    def on_log(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            logger.info("Corpus cleaning (streamed) at step %d: %s", state.global_step, self.report.summary())
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.report.finished = True
        if state.is_world_process_zero:
            print(f"Corpus cleaning (streamed): {self.report.summary()}", flush=True)
        return control


def prepare_streaming_dataset(
    stream: IterableDataset,
    model: Any,
    processor: Any,
    caption_column: str = "caption",
    max_caption_tokens: int = 64,
    shuffle_buffer: int = 10_000,
    seed: int = 0,
) -> tuple[StreamingCaptions, StreamingCleaningReport]:
    """The streamed counterpart of `training.data.prepare_training_dataset(..., embed_on_the_fly=True)`: a
    `StreamingCaptions` over `stream` and its `StreamingCleaningReport` (empty until training reads the stream).

    Checks now, before training starts: the caption column is in the corpus (its features, or the first
    readable row), and the decoder has room for `max_caption_tokens`. Raises `ValueError` naming the problem.

    Example:

    ```python
    >>> stream = load_dataset_source("shards/*.jsonl.gz", streaming=True)  # doctest: +SKIP
    >>> train_dataset, report = prepare_streaming_dataset(stream, model, processor, seed=0)  # doctest: +SKIP
    ```
    """
    if max_caption_tokens < 1:
        raise ValueError(f"max_caption_tokens must be >= 1, got {max_caption_tokens}.")
    if shuffle_buffer < 0:
        raise ValueError(f"shuffle_buffer (--streaming_shuffle_buffer) must be >= 0, got {shuffle_buffer}.")
    _check_positions(model, max_caption_tokens)
    columns = list(stream.features) if stream.features is not None else _first_row_columns(stream)
    if caption_column not in columns:
        raise ValueError(
            f"The caption column {caption_column!r} is not in the corpus; its columns are {columns}."
        )
    examples = StreamingCaptions(
        stream, processor.tokenizer, caption_column, max_caption_tokens, shuffle_buffer, seed
    )
    return examples, examples.report


def _first_row_columns(stream: IterableDataset) -> list[str]:
    for row in stream:
        if BAD_LINE_FIELD not in row:
            return list(row)
    raise ValueError("The corpus has no readable row: its files are empty or every line was skipped as bad.")


def check_streaming_arguments(training_args: Any) -> None:
    """The Trainer settings a streamed run needs; sets `accelerator_config.dispatch_batches = False`.

    - `max_steps`: a stream has no length, so Trainer cannot count epochs.
    - `dataloader_num_workers == 0`: the stream is read, and its cleaning counted, in the training process (each
      worker would read the whole stream and keep its own counts).
    - accelerate's default for an `IterableDataset` on several processes is to read on process 0 and dispatch
      slices of `num_processes` concatenated batches, which fails for batches padded to different lengths. With
      `dispatch_batches=False` each process reads the stream itself and keeps its own batches of it
      (`accelerate.data_loader.IterableDatasetShard`); ids and noise are the same as on one process.
    """
    if training_args.max_steps is None or training_args.max_steps <= 0:
        raise ValueError(
            "--streaming needs --max_steps: a stream has no length, so Trainer counts optimizer steps, not epochs "
            "(the stream starts over, in a new shuffle order, each time it ends)."
        )
    if training_args.dataloader_num_workers > 0:
        raise ValueError(
            f"--streaming reads the corpus in the training process: leave --dataloader_num_workers at 0 (got "
            f"{training_args.dataloader_num_workers}); each worker would read the whole stream."
        )
    if training_args.accelerator_config.dispatch_batches:
        raise ValueError(
            "--streaming with --accelerator_config dispatch_batches=true: dispatching concatenates the batches of "
            "all processes, which fails for captions padded to different lengths; leave it unset."
        )
    training_args.accelerator_config.dispatch_batches = False


__all__ = [
    "StreamingCaptions",
    "StreamingCleaningReport",
    "StreamingReportCallback",
    "check_streaming_arguments",
    "prepare_streaming_dataset",
]
