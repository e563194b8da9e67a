"""`--streaming`: the corpus read, cleaned and counted as training consumes it (training.streaming)."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

from modeling_capdec import CapDecForConditionalGeneration
from modeling_capdec.training.collator import CapDecDataCollator
from modeling_capdec.training.corpus_files import CorpusFileError
from modeling_capdec.training.data import load_dataset_source, prepare_training_dataset
from modeling_capdec.training.streaming import StreamingCaptions, prepare_streaming_dataset
from tests.test_train_capdec import REPO, SUBPROCESS_ENV, cli, parts  # noqa: F401 (a fixture)
from train_capdec import main

# A corpus with every kind of caption and line that cleaning and the line check tell apart. Captions are lists
# throughout: the non-streaming reader (pyarrow) cannot type a column that holds strings in some rows, lists in others.
MIXED_LINES = [
    json.dumps({"caption": ["a dog running on the beach"]}),
    '{"caption": ["a cat"], broken',  # malformed JSON
    json.dumps({"caption": ["a red bus", "  two   people\n riding horses "]}),  # two captions, whitespace
    json.dumps({"caption": ["", None]}),  # one empty, one not text
    json.dumps({"caption": []}),  # a row without captions: empty
    json.dumps({"caption": None}),  # not text
    "[1, 2]",  # not an object
    json.dumps({"caption": ["word " * 40]}),  # truncated
    json.dumps({"caption": ["a bowl of fruit on a wooden table"]}),
    json.dumps({"caption": ["   "]}),  # empty after whitespace normalisation
]


def _write_gz(path: Path, lines: list[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode()))
    return str(path)


def _take(examples: StreamingCaptions, count: int) -> list[dict]:
    iterator = iter(examples)
    return [next(iterator) for _ in range(count)]


def test_stream_cleans_like_the_non_streaming_path_and_counts_as_it_reads(model, processor, tmp_path):
    _write_gz(tmp_path / "shards" / "a.jsonl.gz", MIXED_LINES[:5])
    _write_gz(tmp_path / "shards" / "b.jsonl.gz", MIXED_LINES[5:])
    pattern = str(tmp_path / "shards" / "*.jsonl.gz")
    reference, reference_report = prepare_training_dataset(
        load_dataset_source(pattern, skip_bad_lines=True, cache_dir=str(tmp_path / "hf")),
        model,
        processor,
        max_caption_tokens=40,
        embed_on_the_fly=True,
        cache_dir=tmp_path / "cache",
    )
    stream = load_dataset_source(pattern, skip_bad_lines=True, streaming=True)
    examples, report = prepare_streaming_dataset(
        stream, model, processor, max_caption_tokens=40, shuffle_buffer=0
    )
    kept = len(reference)
    assert kept == 5
    first_pass = _take(examples, kept)
    # In file order, the first pass gives the non-streaming rows: ids, tokens and the text CLIP embeds.
    for streamed, row in zip(first_pass, (reference[i] for i in range(kept)), strict=True):
        assert streamed["example_id"] == row["example_id"]
        assert list(streamed["input_ids"]) == list(row["input_ids"])
        assert streamed["caption"] == row["caption"]
    # Counted up to the last kept caption: the empty one after it in b.jsonl.gz is not read yet.
    assert (report.rows, report.captions, report.kept, report.passes) == (7, 9, 5, 0)
    assert (report.dropped_empty, report.dropped_not_text, report.truncated, report.skipped_lines) == (
        2,
        2,
        1,
        2,
    )
    # One more example ends the first pass (the last, empty caption is counted) and starts the second.
    next_pass = _take(examples, kept + 1)[-1]  # a new iteration restarts the counts from 0
    assert next_pass["example_id"] == reference_report.captions  # ids keep running: fresh noise in pass 2
    assert next_pass["caption"] == reference[0]["caption"]
    assert report.passes == 1
    assert (report.rows - 1, report.captions - 1, report.kept - 1) == (
        reference_report.rows,
        reference_report.captions,
        reference_report.kept,
    )
    assert (report.dropped_empty, report.dropped_not_text, report.truncated) == (
        reference_report.dropped_empty,
        reference_report.dropped_not_text,
        reference_report.truncated,
    )
    assert report.skipped_lines == 2
    assert report.summary().startswith(
        "so far: 9 rows read (1 complete passes over the stream), 11 captions: kept 6, dropped 3 "
        "empty and 2 not text, truncated 1 to max_caption_tokens, 2 bad lines skipped"
    )


def test_streamed_sources_and_a_seeded_shuffle_that_changes_each_pass(model, processor, tmp_path):
    captions = [f"a dog number {index}" for index in range(20)]
    datasets.Dataset.from_dict({"caption": captions}).to_parquet(tmp_path / "c.parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"caption": captions})}).save_to_disk(
        tmp_path / "d"
    )
    for source in (
        tmp_path / "c.parquet",
        tmp_path / "d",
    ):  # load_dataset(streaming=True), to_iterable_dataset
        stream = load_dataset_source(source, streaming=True)
        in_order, _ = prepare_streaming_dataset(stream, model, processor, shuffle_buffer=0)
        assert [example["caption"] for example in _take(in_order, 20)] == captions, source

    # The shuffle is checked on a json stream: datasets sleeps 5 s each time a parquet stream's iterator closes
    # (its guard for apache/arrow#45214), and each order() closes two.
    (tmp_path / "c.jsonl").write_text(
        "".join(json.dumps({"caption": caption}) + "\n" for caption in captions)
    )

    def order(seed: int) -> list[str]:
        stream = load_dataset_source(tmp_path / "c.jsonl", streaming=True)
        shuffled, _ = prepare_streaming_dataset(stream, model, processor, shuffle_buffer=8, seed=seed)
        return [example["caption"] for example in _take(shuffled, 40)]

    first = order(seed=1)
    # Each pass is a permutation of the corpus, a new one in each pass; the seed fixes them.
    assert sorted(first[:20]) == sorted(first[20:]) == sorted(captions)
    assert first[:20] != captions and first[20:] != first[:20]
    assert order(seed=1) == first and order(seed=2) != first


def test_stream_errors_name_the_file_the_line_or_the_column(model, processor, tmp_path):
    path = _write_gz(tmp_path / "c.jsonl.gz", MIXED_LINES)
    stream = load_dataset_source(path, streaming=True)
    examples, _ = prepare_streaming_dataset(stream, model, processor, shuffle_buffer=0)
    # Rows are cleaned in chunks of 64, so the error comes with the first chunk, when the stream reaches line 2.
    with pytest.raises(
        CorpusFileError, match=r"c\.jsonl\.gz as json: line 2: malformed JSON .*--skip_bad_lines"
    ):
        next(iter(examples))
    with pytest.raises(
        ValueError, match=r"caption column 'text' is not in the corpus; its columns are \['caption'\]"
    ):
        prepare_streaming_dataset(stream, model, processor, caption_column="text")
    empty = _write_gz(tmp_path / "empty.jsonl.gz", [json.dumps({"caption": ""}), "not json"])
    examples, _ = prepare_streaming_dataset(
        load_dataset_source(empty, streaming=True, skip_bad_lines=True), model, processor
    )
    with pytest.raises(
        ValueError, match=r"empty after cleaning: all 1 captions of 1 rows were dropped \(1 empty"
    ):
        next(iter(examples))
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"caption": "a dog"}]))
    with pytest.raises(CorpusFileError, match=r"Cannot stream .*array\.json: a JSON array .*\(\.jsonl\)"):
        load_dataset_source(array, streaming=True)


def test_streamed_run_trains_on_the_non_streaming_batches_and_saves_a_loadable_model(
    parts,  # noqa: F811
    tmp_path,
    capsys,
    monkeypatch,
):
    lines = Path(parts.corpus).read_text().splitlines()
    _write_gz(tmp_path / "shards" / "a.jsonl.gz", lines[:10])
    _write_gz(tmp_path / "shards" / "b.jsonl.gz", lines[10:])
    pattern = str(tmp_path / "shards" / "*.jsonl.gz")
    collate, batches = CapDecDataCollator.__call__, []

    def recording(self, features):
        batch = collate(self, features)
        batches.append(batch)
        return batch

    monkeypatch.setattr(CapDecDataCollator, "__call__", recording)
    output_dir = tmp_path / "out"
    arguments = cli(parts, output_dir, *"--max_steps 3 --save_strategy no --streaming".split())
    arguments[arguments.index("--train_file") + 1] = pattern
    trainer = main(arguments + ["--streaming_shuffle_buffer", "0"])
    monkeypatch.setattr(CapDecDataCollator, "__call__", collate)

    # The same first batches as the non-streaming corpus read in order (Trainer's sampler shuffles that one).
    reference, _ = prepare_training_dataset(
        load_dataset_source(pattern, cache_dir=str(tmp_path / "hf")),
        trainer.model,
        trainer.processing_class,
        embed_on_the_fly=True,
        cache_dir=tmp_path / "cache",
    )
    # Three steps, and one batch read ahead by accelerate's dataloader (which looks for the last batch).
    assert len(batches) == 4
    for step, batch in enumerate(batches):
        expected = trainer.data_collator([reference[i] for i in range(4 * step, 4 * step + 4)])
        assert batch.keys() == expected.keys()
        for name in expected:
            assert torch.equal(batch[name], expected[name]), (step, name)
    assert batches[2]["example_id"].tolist() == [8, 9, 10, 11]

    printed = capsys.readouterr().out
    assert (
        "Corpus streamed (shuffle buffer 0 rows, seed 0): " in printed
        and "--embed_on_the_fly is implied" in printed
    )
    assert (
        "Corpus cleaning (streamed): over the run: 16 rows read (0 complete passes over the stream), 16 captions: kept 16"
        in printed
    )
    results = json.loads((output_dir / "train_results.json").read_text())
    assert (results["corpus_rows"], results["corpus_kept"], results["corpus_passes"]) == (16, 16, 0)
    card = (output_dir / "README.md").read_text()
    assert "streamed: 0 complete passes, 16 rows read" in card
    assert "| cleaning | over the run: 16 rows read" in card  # the counts of the whole run, not "so far"
    assert "| captions trained on | 12 |" in card  # 3 steps × 4, not the batch read ahead
    model = CapDecForConditionalGeneration.from_pretrained(output_dir)
    trained = trainer.model.clip_project.state_dict()
    for name, tensor in model.clip_project.state_dict().items():
        torch.testing.assert_close(tensor, trained[name].cpu())


def test_resumed_streamed_run_matches_the_uninterrupted_one(parts, tmp_path):  # noqa: F811
    def arguments(output_dir: Path) -> list[str]:
        # 30 captions in batches of 4: a pass is 7.5 steps, so checkpoint-10 lies in the second, shuffled pass.
        extra = "--max_steps 14 --save_steps 10 --logging_steps 1 --streaming --streaming_shuffle_buffer 8"
        return cli(parts, output_dir, *extra.split())

    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    reference = main(arguments(reference_dir))
    resumed = main(
        arguments(resumed_dir) + ["--resume_from_checkpoint", str(reference_dir / "checkpoint-10")]
    )
    assert resumed.state.global_step == 14
    weights, expected = (
        load_file(resumed_dir / "model.safetensors"),
        load_file(reference_dir / "model.safetensors"),
    )
    difference = max((weights[name] - expected[name]).abs().max().item() for name in expected)
    print(f"resumed vs uninterrupted streamed run: max |weight difference| = {difference:.3g}")
    # The resumed run re-reads the stream up to step 10 (same shuffle, ids and so noise) and restores the RNGs.
    assert difference == 0.0

    def losses(trainer) -> dict[int, float]:
        return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}

    assert {step: loss for step, loss in losses(resumed).items() if step > 10} == {
        step: loss for step, loss in losses(reference).items() if step > 10
    }
    counts = [
        json.loads((folder / "train_results.json").read_text()) for folder in (reference_dir, resumed_dir)
    ]
    # 14 batches trained on and one read ahead by accelerate's dataloader, across two passes.
    assert counts[0]["corpus_passes"] == 1 and counts[0]["corpus_kept"] == 15 * 4
    assert {k: v for k, v in counts[0].items() if k.startswith("corpus_")} == {
        k: v for k, v in counts[1].items() if k.startswith("corpus_")
    }


@pytest.mark.parametrize(
    "extra, message",
    [
        ("", r"--streaming needs --max_steps: a stream has no length"),
        ("--max_steps 2 --dataloader_num_workers 1", r"leave --dataloader_num_workers at 0 \(got 1\)"),
        ("--max_steps 2 --mode supervised", r"--streaming works in --mode text only"),
        (
            "--max_steps 2 --overwrite_cache",
            r"--overwrite_cache cannot be used with --streaming: nothing is cached",
        ),
        (
            "--max_steps 2 --preprocessing_num_workers 2",
            r"--preprocessing_num_workers cannot be used with --streaming",
        ),
        ("--max_steps 2 --streaming_shuffle_buffer -1", r"--streaming_shuffle_buffer must be >= 0 .*got -1"),
        (
            "--max_steps 2 --noise_variance auto",
            r"--noise_variance auto with --streaming: .*capdec-estimate-noise",
        ),
        ("--max_steps 2 --text_memory_size 8", r"--text_memory_size with --streaming: .*attach_text_memory"),
    ],
)
def test_options_that_cannot_stream_are_refused_by_name(parts, tmp_path, extra, message):  # noqa: F811
    with pytest.raises(ValueError, match=message):
        main(cli(parts, tmp_path / "out", "--streaming", *extra.split()))
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_two_processes_read_the_stream_and_train_on_disjoint_batches(parts, tmp_path):  # noqa: F811
    # Each process reads the whole stream and keeps its own batches (accelerate's IterableDatasetShard, with
    # dispatch_batches off): together they train on consecutive example ids, each id once.
    recorder = tmp_path / "record.py"
    recorder.write_text(
        "import json, os, sys\n"
        "import torch\n"
        "import train_capdec\n"
        "from modeling_capdec.training.collator import CapDecDataCollator\n"
        "collate, seen = CapDecDataCollator.__call__, []\n"
        "def record(self, features):\n"
        "    batch = collate(self, features)\n"
        "    seen.append(batch['example_id'].tolist())\n"
        "    return batch\n"
        "CapDecDataCollator.__call__ = record\n"
        "train_capdec.main(sys.argv[1:])\n"
        # One file per process: both share stdout, where their lines can interleave.
        f"with open({str(tmp_path)!r} + '/ids-' + os.environ['RANK'] + '.json', 'w') as f:\n"
        "    json.dump(seen, f)\n"
        # main() closes the process group: one left to interpreter shutdown can abort the process (SIGABRT).
        "assert not torch.distributed.is_initialized(), 'the process group is still open after main()'\n"
    )
    output_dir = tmp_path / "ddp"
    accelerate = str(Path(sys.executable).parent / "accelerate")
    command = [accelerate, *"launch --multi_gpu --num_processes 2".split(), str(recorder)]
    command += cli(parts, output_dir, *"--max_steps 3 --save_strategy no --use_cpu --streaming".split())
    result = subprocess.run(
        command, cwd=REPO, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seen = {rank: json.loads((tmp_path / f"ids-{rank}.json").read_text()) for rank in (0, 1)}
    # Three steps and one batch read ahead, of 4 examples, on each process; the stream is shuffled.
    assert sorted(seen) == [0, 1] and all(len(batches) == 4 for batches in seen.values())
    trained = [example for rank in (0, 1) for batch in seen[rank][:3] for example in batch]
    assert sorted(trained) == list(range(24))
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 3
    assert "4 per device × 2 processes" in (output_dir / "README.md").read_text()


def test_the_trainer_checks_a_stream_it_is_given_directly(model, processor, tmp_path):
    from modeling_capdec.training.arguments import CapDecTrainingArguments
    from modeling_capdec.training.trainer import CapDecTrainer

    path = _write_gz(tmp_path / "c.jsonl.gz", [json.dumps({"caption": "a dog"})])
    examples, _ = prepare_streaming_dataset(load_dataset_source(path, streaming=True), model, processor)
    collator = CapDecDataCollator(processor, embed_on_the_fly=True)
    args = CapDecTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True)
    with pytest.raises(ValueError, match="--streaming needs --max_steps"):
        CapDecTrainer(model=model, args=args, train_dataset=examples, data_collator=collator)
    args = CapDecTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, max_steps=1)
    trainer = CapDecTrainer(model, args, collator, examples)  # positional, as Trainer allows
    assert args.accelerator_config.dispatch_batches is False
    assert any(
        type(callback).__name__ == "StreamingReportCallback"
        for callback in trainer.callback_handler.callbacks
    )
