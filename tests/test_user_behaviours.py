"""Behaviours users rely on that a small deliberate bug would otherwise break unnoticed (mutation-audit gaps):
each test checks values against an independent computation, not only shapes or "it ran"."""

import math

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modeling_capdec.training.arguments import CapDecTrainingArguments
from modeling_capdec.training.collator import CapDecDataCollator
from modeling_capdec.training.data import prepare_training_dataset
from modeling_capdec.training.model_card import model_card_fields
from modeling_capdec.training.trainer import CapDecNoiseCallback, CapDecTrainer
from tests.tiny_models import CAPTIONS


# -- embeddings -----------------------------------------------------------------------------------------------
def test_image_embeds_are_the_normalised_clip_features(model, processor, images):
    pixel_values = processor(images=images)["pixel_values"]
    with torch.no_grad():
        raw = model.clip.get_image_features(pixel_values=pixel_values).pooler_output
    embeds = model.get_image_embeds(pixel_values)
    torch.testing.assert_close(embeds, F.normalize(raw, dim=-1))
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(len(images)))
    torch.testing.assert_close(model.get_image_embeds(pixel_values, normalize=False), raw)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(images)))  # the check above is not vacuous


def test_clip_is_frozen_by_its_parameters_not_only_by_no_grad(model, saved_dir):
    from modeling_capdec import CapDecForConditionalGeneration

    loaded = CapDecForConditionalGeneration.from_pretrained(saved_dir)
    for candidate in (model, loaded):
        assert not any(param.requires_grad for param in candidate.clip.parameters())
        assert all(param.requires_grad for param in candidate.clip_project.parameters())


# -- training: noise per epoch, inside a real Trainer run ---------------------------------------------------------
class RecordingCollator(CapDecDataCollator):
    """Records, for every batch, the epoch it drew noise for and each example's noised embedding."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.seen: list[tuple[int, int, torch.Tensor]] = []

    def __call__(self, features):
        batch = super().__call__(features)
        for feature, row in zip(features, batch["clip_embeds"], strict=True):
            self.seen.append((self.epoch, int(feature["example_id"]), row.clone()))
        return batch


def test_every_epoch_of_a_trainer_run_draws_fresh_noise(model, processor, tmp_path):
    rng = np.random.default_rng(0)
    embeds = F.normalize(torch.from_numpy(rng.normal(size=(8, 16))).float(), dim=-1)
    ids = processor.tokenizer(CAPTIONS[:8])["input_ids"]
    dataset = datasets.Dataset.from_dict(
        {
            "input_ids": [row + [processor.tokenizer.eos_token_id] for row in ids],
            "clip_embeds": embeds.tolist(),
        }
    ).map(lambda _, index: {"example_id": index}, with_indices=True)
    collator = RecordingCollator(processor, noise_variance=0.016, seed=0)
    args = CapDecTrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=3,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    trainer = CapDecTrainer(
        model=model.__class__(model.config),  # a fresh copy: the session model stays untouched
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=processor,
        callbacks=[CapDecNoiseCallback(collator)],
    )
    trainer.train()
    epochs = sorted({epoch for epoch, _, _ in collator.seen})
    assert epochs == [0, 1, 2]
    by_epoch = {epoch: {example: row for e, example, row in collator.seen if e == epoch} for epoch in epochs}
    assert all(sorted(rows) == list(range(8)) for rows in by_epoch.values())
    for example in range(8):
        assert not torch.allclose(by_epoch[0][example], by_epoch[1][example])
        assert not torch.allclose(by_epoch[1][example], by_epoch[2][example])
        # the amount: cos(noised, clean) ≈ 1 / sqrt(1 + d ε) for d = 16, ε = 0.016 (0.92), not 100 ε's 0.24
        cosine = F.cosine_similarity(by_epoch[0][example], embeds[example], dim=0).item()
        assert 0.75 < cosine < 0.995


# -- training data ----------------------------------------------------------------------------------------------
def test_truncated_captions_are_embedded_as_truncated_text(model, processor, tmp_path):
    long_caption = "a man holding a surfboard near the ocean on a sunny day with two dogs"
    corpus = datasets.Dataset.from_dict({"caption": [long_caption, "a red bus"]})  # 44 and 6 tokens
    dataset, report = prepare_training_dataset(
        corpus, model, processor, max_caption_tokens=8, cache_dir=tmp_path
    )
    assert report.truncated == 1
    kept_ids = processor.tokenizer(long_caption, add_special_tokens=False)["input_ids"][:8]
    truncated_text = processor.tokenizer.decode(kept_ids).strip()
    assert dataset[0]["input_ids"].tolist() == kept_ids + [processor.tokenizer.eos_token_id]
    clip = processor(clip_text=[truncated_text, long_caption])
    expected = model.get_text_embeds(clip["clip_input_ids"], clip["clip_attention_mask"])
    torch.testing.assert_close(torch.as_tensor(dataset[0]["clip_embeds"]), expected[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)  # the full caption embeds elsewhere


def test_example_ids_are_unique_across_the_whole_corpus(model, processor, tmp_path):
    # embedding_batch_size 2 maps 32 rows at a time: ids that restart per map batch would repeat.
    corpus = datasets.Dataset.from_dict({"caption": [f"{CAPTIONS[i % 10]} {i}" for i in range(100)]})
    dataset, _ = prepare_training_dataset(
        corpus, model, processor, embed_on_the_fly=True, embedding_batch_size=2, cache_dir=tmp_path
    )
    assert [int(i) for i in dataset["example_id"]] == list(range(100))


# -- generation ---------------------------------------------------------------------------------------------------
def test_a_prompt_batched_with_several_images_continues_each_image(model, processor, images):
    """Row i of a batched prompt goes with image i (and its N beams stay together), as when run alone."""
    pixel_values = processor(images=images)["pixel_values"]
    prompts = torch.tensor([[65], [70], [80], [90]])  # one different prompt token per image
    settings = dict(max_new_tokens=5, min_new_tokens=5, num_beams=2, num_return_sequences=2, do_sample=False)
    batched = model.generate(pixel_values=pixel_values, input_ids=prompts, **settings)
    for index in range(len(images)):
        alone = model.generate(
            pixel_values=pixel_values[index : index + 1], input_ids=prompts[index : index + 1], **settings
        )
        assert torch.equal(batched[2 * index : 2 * index + 2], alone), f"image {index}"
        assert (batched[2 * index : 2 * index + 2, 0] == prompts[index, 0]).all()


def test_generate_samples_when_asked(model, processor, images):
    pixel_values = processor(images=images)["pixel_values"]
    greedy = model.generate(pixel_values=pixel_values, max_new_tokens=6, min_new_tokens=6)
    sampled = []
    for seed in range(3):
        torch.manual_seed(seed)
        sampled.append(
            model.generate(pixel_values=pixel_values, do_sample=True, max_new_tokens=6, min_new_tokens=6)
        )
    assert any(not torch.equal(rows, greedy) for rows in sampled)
    assert not torch.equal(sampled[0], sampled[1]) or not torch.equal(sampled[1], sampled[2])
    torch.manual_seed(0)
    again = model.generate(pixel_values=pixel_values, do_sample=True, max_new_tokens=6, min_new_tokens=6)
    assert torch.equal(again, sampled[0])


# -- the model card -----------------------------------------------------------------------------------------------
def test_model_card_scores_are_the_metrics_times_100(model, tmp_path):
    args = CapDecTrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True)
    config = model.config
    config.training_noise = {"noise_variance": 0.004, "noise_type": "gaussian", "modality_offset": None}
    fields = model_card_fields(
        config,
        args,
        clip_model="openai/clip-vit-base-patch32",
        decoder_model="gpt2",
        mode="text",
        corpus="captions.jsonl",
        cleaning_summary="3 rows",
        corpus_size=12345,
        trained_steps=10,
        trained_epochs=1.0,
        eval_set="eval.jsonl",
        metrics={"eval_BLEU-4": 0.12345, "eval_CIDEr": 0.9876, "eval_runtime": 3.0},
    )
    del config.training_noise
    header, rule, values = fields["metrics_table"].splitlines()[:3]
    assert header == "| BLEU-4 | CIDEr |" and values == "| 12.3 | 98.8 |"
    assert fields["noise"] == f"gaussian, ε = 0.004 (std {math.sqrt(0.004):.3f})"
    assert fields["corpus_size"] == "12,345" and fields["prefix_length"] == str(model.config.prefix_length)
    card_data = fields["card_data"]
    assert card_data.base_model == ["openai/clip-vit-base-patch32", "gpt2"]
    # The model-index carries the same numbers as the table (× 100), one result per metric, in the table's order.
    assert [(r.metric_type, r.metric_value) for r in card_data.eval_results] == [
        ("bleu-4", 12.3),
        ("cider", 98.8),
    ]
    assert {r.dataset_name for r in card_data.eval_results} == {"eval.jsonl"}


@pytest.mark.parametrize("mode, expected", [("supervised", "none (supervised"), ("text", "none (ε = 0)")])
def test_model_card_says_when_there_was_no_noise(model, tmp_path, mode, expected):
    args = CapDecTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    config = model.config
    config.training_noise = {"noise_variance": 0.0, "noise_type": "gaussian"}
    fields = model_card_fields(
        config, args, clip_model="c", decoder_model="d", mode=mode, corpus="x", cleaning_summary="",
        corpus_size=1, trained_steps=1, trained_epochs=1.0,
    )  # fmt: skip
    del config.training_noise
    assert fields["noise"].startswith(expected)
