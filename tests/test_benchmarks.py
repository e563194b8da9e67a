"""The benchmarks' baselines compute what our fast paths compute: speed never changes results."""

import numpy as np
import torch
from datasets import Dataset

from benchmarks import bench_memory
from benchmarks.bench_embedding import one_caption_per_forward
from benchmarks.bench_training import padding_collators
from benchmarks.captions import WORDS, caption_word_counts, synthetic_captions, word_level_processor
from modeling_capdec.training.data import prepare_training_dataset, tokenizer_fingerprint
from tests.tiny_models import CAPTIONS


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
