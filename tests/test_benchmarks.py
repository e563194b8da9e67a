"""The benchmarks' baselines compute what our fast paths compute: speed never changes results."""

import tempfile

import numpy as np
import torch
from datasets import Dataset

from benchmarks import bench_memory
from benchmarks.bench_embedding import one_caption_per_forward
from benchmarks.bench_training import (
    check_authors_loss_equals_ours,
    padding_collators,
    run_authors,
    run_ours,
    speed_rows,
)
from benchmarks.captions import WORDS, caption_word_counts, synthetic_captions, word_level_processor
from benchmarks.mfu import mfu, peak_flops, training_flops_per_caption
from benchmarks.reference_loops import authors_batch, authors_fixed_length, authors_loss
from modeling_capdec.training.collator import CapDecDataCollator
from modeling_capdec.training.data import prepare_training_dataset, tokenizer_fingerprint
from tests.tiny_models import CAPTIONS, tiny_model


def test_fixed_length_padding_gives_the_dynamic_loss(model, processor):
    eos = processor.tokenizer.eos_token_id
    ids = [row + [eos] for row in processor.tokenizer(CAPTIONS[:10], add_special_tokens=False)["input_ids"]]
    corpus_max = max(len(row) for row in ids) + 7  # the corpus holds a longer caption than this batch
    features = [
        {
            "input_ids": row,
            "clip_embeds": torch.nn.functional.normalize(torch.randn(16), dim=0),
            "example_id": i,
        }
        for i, row in enumerate(ids[:4])
    ]
    collators = padding_collators(processor, corpus_max)
    dynamic, fixed = collators["dynamic"](features), collators["fixed"](features)
    assert fixed["input_ids"].shape[1] == corpus_max
    assert dynamic["input_ids"].shape[1] == max(len(row) for row in ids[:4])
    assert (fixed["labels"][:, dynamic["labels"].shape[1] :] == -100).all()
    torch.testing.assert_close(dynamic["clip_embeds"], fixed["clip_embeds"])  # same noise per example
    with torch.no_grad():
        torch.testing.assert_close(model(**dynamic).loss, model(**fixed).loss)


def test_one_caption_per_forward_gives_the_batched_embeddings(model, processor, tmp_path):
    captions = CAPTIONS[:10]
    dataset, _ = prepare_training_dataset(
        Dataset.from_dict({"caption": captions}), model, processor, embedding_batch_size=4, cache_dir=tmp_path
    )
    batched = torch.from_numpy(dataset.with_format("numpy")[:]["clip_embeds"])
    for pad_to_context in (True, False):
        single = one_caption_per_forward(model, processor, captions, pad_to_context=pad_to_context)
        torch.testing.assert_close(single, batched, atol=1e-5, rtol=0)


def test_synthetic_captions_are_coco_like_and_one_token_per_word():
    counts = caption_word_counts(10_000)
    assert 10 <= counts.mean() <= 11.5 and counts.max() == 50 and counts.min() >= 5
    captions = synthetic_captions(200)
    assert captions == synthetic_captions(200) and all(caption.startswith("a ") for caption in captions)
    processor = word_level_processor()
    words = [len(caption.split()) for caption in captions]
    assert [len(ids) for ids in processor.tokenizer(captions)["input_ids"]] == words
    assert [len(ids) for ids in processor.clip_tokenizer(captions)["input_ids"]] == [n + 2 for n in words]
    assert max(max(ids) for ids in processor.tokenizer(WORDS)["input_ids"]) < 1000
    # Built, not trained: the same tokenizers (and so the same datasets cache keys) every time.
    again = word_level_processor()
    assert tokenizer_fingerprint(again.clip_tokenizer) == tokenizer_fingerprint(processor.clip_tokenizer)
    assert tokenizer_fingerprint(again.tokenizer) == tokenizer_fingerprint(processor.tokenizer)


def test_memory_baseline_holds_the_rows_of_the_prepared_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_memory, "CACHE_ROOT", tmp_path)
    bench_memory.build_corpus(60)
    prepared, processor, from_cache = bench_memory.load_prepared(bench_memory.corpus_dir(60))
    assert from_cache
    in_memory = bench_memory.InMemoryCaptions(bench_memory.corpus_dir(60) / "original.pt", processor)
    assert len(in_memory) == len(prepared) == 60
    for index in (0, 17, 59):
        row = prepared[index]
        assert in_memory[index]["input_ids"].tolist() == row["input_ids"].tolist()
        np.testing.assert_array_equal(in_memory[index]["clip_embeds"].numpy(), row["clip_embeds"])


def _caption_rows(processor, count: int) -> list[dict]:
    eos = processor.tokenizer.eos_token_id
    ids = processor.tokenizer(CAPTIONS[:count], add_special_tokens=False)["input_ids"]
    embeds = torch.nn.functional.normalize(
        torch.randn(count, 16, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    return [
        {"input_ids": row + [eos], "clip_embeds": embeds[i], "example_id": i} for i, row in enumerate(ids)
    ]


def test_the_authors_loss_is_ours_on_captions_without_token_0(model, processor):
    rows = _caption_rows(processor, 6)
    fixed_length = authors_fixed_length([len(row["input_ids"]) - 1 for row in rows])
    check_authors_loss_equals_ours(model, processor, rows, fixed_length)  # raises when they differ

    # Their padding is token 0 and `ignore_index=0`: a real token 0 in a caption is dropped from their loss.
    captions = [row["input_ids"][:-1] for row in rows]
    captions[0] = [0, *captions[0][1:]]
    embeds = torch.stack([row["clip_embeds"] for row in rows])
    tokens, mask, _ = authors_batch(captions, embeds, fixed_length, model.config.prefix_length)
    ours = CapDecDataCollator(processor, noise_variance=0.0)(
        [
            {"input_ids": caption[:fixed_length], "clip_embeds": row}
            for caption, row in zip(captions, embeds, strict=True)
        ]
    )
    with torch.no_grad():
        theirs = authors_loss(model, tokens, mask, embeds)
        assert not torch.allclose(model(**ours).loss, theirs, atol=1e-4)


def test_authors_fixed_length_is_mean_plus_ten_std_capped_at_the_longest():
    assert authors_fixed_length([10, 12, 14, 50]) == 50  # mean 21.5 + 10 × std 19.1 > 50
    assert authors_fixed_length([10] * 99 + [40]) == 40  # capped at the longest
    assert authors_fixed_length([10, 10, 11, 11] * 50 + [60]) == int(
        torch.tensor([10.0, 10, 11, 11] * 50 + [60]).mean()
        + 10 * torch.tensor([10.0, 10, 11, 11] * 50 + [60]).std()
    )


def test_model_flops_count_each_part_by_hand(processor):
    width, vocab, clip_dim, layers = 32, len(processor.tokenizer), 16, 2
    caption = 7.0
    decoder_positions, mapper_positions = 4 + caption, 4 + 4
    decoder = 2 * layers * 12 * width**2 * decoder_positions  # qkv 3d², out d², MLP 8d² per block
    decoder += 4 * layers * decoder_positions**2 * width + 2 * vocab * width * caption  # attention, LM head
    mapper = 2 * clip_dim * 4 * width  # the linear layer, once per caption
    mapper += 2 * layers * 8 * width**2 * mapper_positions  # q, kv, out 4d², MLP (ratio 2) 4d² per block
    mapper += 4 * layers * mapper_positions**2 * width
    trained = tiny_model(processor)
    assert trained.config.clip_projection_dim == clip_dim
    assert training_flops_per_caption(trained, caption) == 3 * (decoder + mapper)
    frozen = tiny_model(processor, train_decoder=False)  # forward + input gradient only through the decoder
    assert training_flops_per_caption(frozen, caption) == 3 * mapper + 2 * decoder
    assert peak_flops("cpu", "float32") is None and mfu(10.0, 1e9, None) is None


def test_speed_suite_times_the_authors_loop_and_the_trainer_path(model, processor):
    import argparse
    import copy

    rows = _caption_rows(processor, 12)
    args = argparse.Namespace(device="cpu", batch_size=2, steps=2)
    batches = [rows[i : i + 2] for i in range(0, 12, 2)]
    trained = copy.deepcopy(model)
    fixed_length = authors_fixed_length([len(row["input_ids"]) - 1 for row in rows])
    authors = run_authors(trained, batches[1:5], batches[:1], fixed_length, args)
    assert len(authors) == 2 and all(seconds > 0 for seconds in authors)
    for row in speed_rows([8, 16]):
        if row.name in ("ours_default", "ours_buckets", "ours_no_nan_guard"):
            with tempfile.TemporaryDirectory() as output_dir:
                blocks = run_ours(trained, processor, batches[1:5], batches[:1], row, args, output_dir)
            assert len(blocks) == 2 and all(seconds > 0 for seconds in blocks), row.name
