"""CapDecDataCollator: padding and labels, the noise's statistics, and reproducible noise."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modeling_capdec.training.collator import CapDecDataCollator
from modeling_capdec.training.noise import example_noise_generator

EPS = 0.016
DIM = 512
ROWS = 4096


@pytest.fixture(scope="module")
def unit_embedding() -> torch.Tensor:
    return F.normalize(torch.randn(DIM, generator=torch.Generator().manual_seed(123)), dim=0)


def _features(embeds: torch.Tensor, ids=None) -> list[dict]:
    ids = range(len(embeds)) if ids is None else ids
    return [
        {"input_ids": [5, 6, 0], "clip_embeds": row.numpy(), "example_id": i}
        for row, i in zip(embeds, ids, strict=True)
    ]


def test_padding_and_labels(processor):
    eos = processor.tokenizer.eos_token_id
    collator = CapDecDataCollator(processor, noise_variance=0.0)
    embeds = F.normalize(torch.randn(2, 16), dim=-1)
    batch = collator(
        [
            {"input_ids": [11, 12, 13, eos], "clip_embeds": embeds[0].tolist()},
            {"input_ids": [21, eos], "clip_embeds": embeds[1].tolist()},
        ]
    )
    assert batch["input_ids"].tolist() == [[11, 12, 13, eos], [21, eos, eos, eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    # The caption's own eos (same id as the padding) stays a target: the model must learn to stop.
    assert batch["labels"].tolist() == [[11, 12, 13, eos], [21, eos, -100, -100]]
    assert batch["clip_embeds"].dtype == torch.float32 and torch.equal(batch["clip_embeds"], embeds)

    padded = CapDecDataCollator(processor, noise_variance=0.0, pad_to_multiple_of=8)(
        [{"input_ids": [1, 2, 3], "clip_embeds": embeds[0].tolist()}]
    )
    assert padded["input_ids"].shape == (1, 8) and padded["labels"][0, 3:].eq(-100).all()


def test_gaussian_noise_statistics(processor, unit_embedding):
    collator = CapDecDataCollator(processor, noise_variance=EPS, seed=7, epoch=2)
    embeds = unit_embedding.expand(ROWS, DIM)
    noised = collator.add_noise(embeds, example_ids=list(range(ROWS)))
    # The noise before re-normalisation, replayed from the per-example generators the collator drew it from.
    noise = torch.stack(
        [torch.randn(DIM, generator=example_noise_generator(7, 2, i)) * math.sqrt(EPS) for i in range(ROWS)]
    )
    torch.testing.assert_close(noised, F.normalize(embeds + noise, dim=-1), atol=1e-6, rtol=0)
    assert noise.mean().abs() < 5 * math.sqrt(EPS / noise.numel())  # 5 standard errors of the mean
    per_dimension = noise.var(dim=0)  # over the 4096 rows: relative standard error sqrt(2/4095) = 2.2%
    assert abs(per_dimension.mean().item() / EPS - 1) < 0.02
    assert ((per_dimension / EPS - 1).abs() < 0.12).all()  # > 5 standard errors, for each of 512 dimensions
    torch.testing.assert_close(noised.norm(dim=-1), torch.ones(ROWS))
    # The paper's regime: the noise is as large as the embedding itself (E|n|^2 = d * eps = 8.2).
    assert 0.2 < F.cosine_similarity(noised, embeds).mean() < 0.5


def test_shaped_noise_has_the_covariance_of_its_shape(processor, unit_embedding):
    # A shape that puts all the noise in the first 8 dimensions, twice as much in the first 4 (||A||_F^2 = d).
    scales = torch.zeros(DIM)
    scales[:4], scales[4:8] = (DIM / 6) ** 0.5, (DIM / 12) ** 0.5
    shape = torch.diag(scales)
    collator = CapDecDataCollator(processor, noise_variance=EPS, seed=3, noise_shape=shape)
    embeds = unit_embedding.expand(ROWS, DIM)
    noised = collator.add_noise(embeds, example_ids=list(range(ROWS)))
    drawn = torch.stack(
        [torch.randn(DIM, generator=example_noise_generator(3, 0, i)) * math.sqrt(EPS) for i in range(ROWS)]
    )
    torch.testing.assert_close(noised, F.normalize(embeds + drawn @ shape, dim=-1), atol=1e-6, rtol=0)
    noise = drawn @ shape
    assert noise[:, 8:].abs().max() == 0  # nothing outside the shape's directions
    variances = noise.var(dim=0)
    assert variances[:4].mean() / variances[4:8].mean() == pytest.approx(2.0, rel=0.05)
    assert noise.pow(2).sum(dim=-1).mean() == pytest.approx(EPS * DIM, rel=0.05)  # the same expected length
    # Without example ids the collator's own generator draws, shaped the same way.
    assert collator.add_noise(embeds[:2]).shape == (2, DIM)
    assert collator.settings()["noise_shape_effective_rank"] == pytest.approx(7.2)  # (4·2 + 4)² / (4·4 + 4)
    with pytest.raises(ValueError, match=r"must be a \(8, 8\) matrix for 8-d embeddings, got \(512, 512\)"):
        collator.add_noise(torch.randn(2, 8))  # checked against the embeddings it meets
    with pytest.raises(ValueError, match="noise_shape shapes Gaussian noise; noise_type is 'uniform'"):
        CapDecDataCollator(processor, noise_variance=EPS, noise_type="uniform", noise_shape=shape)


def test_uniform_noise_stays_within_the_radius(processor, unit_embedding):
    collator = CapDecDataCollator(processor, noise_variance=EPS, noise_type="uniform", seed=1)
    embeds = unit_embedding.expand(ROWS, DIM)
    noised = collator.add_noise(embeds, example_ids=list(range(ROWS)))
    torch.testing.assert_close(noised.norm(dim=-1), torch.ones(ROWS))
    # |n| <= r = sqrt(eps) bounds the angle to the clean embedding: sin(angle) <= r, so cos >= sqrt(1 - eps).
    cosine = F.cosine_similarity(noised, embeds)
    assert cosine.min() >= math.sqrt(1 - EPS) - 1e-6
    assert cosine.max() < 0.999 and not torch.allclose(noised[0], noised[1])  # but there is noise


def test_zero_variance_is_the_identity(processor, unit_embedding):
    embeds = torch.stack([unit_embedding, -unit_embedding])
    batch = CapDecDataCollator(processor, noise_variance=0.0)(_features(embeds))
    assert torch.equal(batch["clip_embeds"], embeds)


def test_modality_offset_is_added_before_normalising(processor, unit_embedding):
    offset = torch.full((DIM,), 0.01)
    batch = CapDecDataCollator(processor, noise_variance=0.0, modality_offset=offset.tolist())(
        _features(unit_embedding[None])
    )
    torch.testing.assert_close(batch["clip_embeds"][0], F.normalize(unit_embedding + offset, dim=0))


def test_modality_map_is_applied_to_the_unit_caption_before_the_noise(processor, unit_embedding):
    generator = torch.Generator().manual_seed(7)
    weight, bias = torch.eye(DIM) + 0.1 * torch.randn(DIM, DIM, generator=generator), torch.full((DIM,), 0.02)
    collator = CapDecDataCollator(processor, noise_variance=0.0, modality_map=(weight, bias))
    assert collator.adds_noise and collator.settings()["modality_map"] == "measured"
    batch = collator(_features(3 * unit_embedding[None]))  # not unit: normalised first
    torch.testing.assert_close(batch["clip_embeds"][0], F.normalize(unit_embedding @ weight + bias, dim=0))
    # With noise, the noise is drawn around the mapped caption (its norm sets how far the noise moves it).
    noisy = CapDecDataCollator(processor, noise_variance=EPS, modality_map=(weight, bias))(
        _features(unit_embedding.expand(ROWS, DIM))
    )["clip_embeds"]
    mapped = unit_embedding @ weight + bias
    expected = 1 / math.sqrt(1 + DIM * EPS / float(mapped.pow(2).sum()))
    assert F.cosine_similarity(noisy, mapped[None]).mean() == pytest.approx(expected, rel=0.02)
    with pytest.raises(ValueError, match=r"modality_map must be \(weight \(512, 512\), bias \(512,\)\)"):
        CapDecDataCollator(processor, modality_map=(weight, bias[:3]))
    with pytest.raises(ValueError, match="modality_map holds values that are not finite"):
        CapDecDataCollator(processor, modality_map=(weight, torch.full((DIM,), float("nan"))))
    from modeling_capdec.training.noise import inject_noise  # called directly, it checks the map too

    with pytest.raises(ValueError, match=r"got \(\(512, 8\), \(512,\)\)"):
        inject_noise(unit_embedding[None], 0.0, modality_map=(weight[:, :8], bias))


def test_noise_is_reproducible_and_fresh(processor):
    embeds = F.normalize(torch.randn(6, DIM), dim=-1)

    def noised(seed: int, epoch: int = 0, ids=None) -> torch.Tensor:
        collator = CapDecDataCollator(processor, noise_variance=EPS, seed=seed)
        collator.set_epoch(epoch)
        return collator(_features(embeds, ids))["clip_embeds"]

    assert torch.equal(noised(0), noised(0))
    assert not torch.allclose(noised(0), noised(1))
    assert not torch.allclose(noised(0), noised(0, epoch=1))  # every epoch draws fresh noise
    # An example's noise does not depend on its batch: the same id gives the same noise anywhere.
    shuffled = noised(0, ids=[5, 4, 3, 2, 1, 0])
    assert not torch.equal(shuffled[0], noised(0)[0])
    collator = CapDecDataCollator(processor, noise_variance=EPS, seed=0)
    alone = collator(_features(embeds[2:3], ids=[2]))["clip_embeds"]
    torch.testing.assert_close(alone[0], noised(0)[2], atol=0, rtol=0)
    # Without example ids the collator's own generator advances: consecutive batches differ.
    collator = CapDecDataCollator(processor, noise_variance=EPS, seed=0)
    plain = [{"input_ids": [1, 0], "clip_embeds": row.numpy()} for row in embeds]
    assert not torch.allclose(collator(plain)["clip_embeds"], collator(plain)["clip_embeds"])


def test_supervised_mode_passes_image_embeddings_through(processor):
    embeds = F.normalize(torch.randn(3, 16), dim=-1)
    batch = CapDecDataCollator(processor, noise_variance=EPS, mode="supervised")(_features(embeds))
    assert torch.equal(batch["clip_embeds"], embeds)


def test_embed_on_the_fly_returns_clip_tokens(processor):
    collator = CapDecDataCollator(processor, noise_variance=EPS, embed_on_the_fly=True)
    captions = ["a dog running on the beach", "a cat"]
    batch = collator(
        [{"input_ids": [1, 0], "caption": text, "example_id": 7 + i} for i, text in enumerate(captions)]
    )
    expected = processor(clip_text=captions, return_tensors="pt")
    assert torch.equal(batch["clip_input_ids"], expected["clip_input_ids"])
    assert batch["example_id"].tolist() == [7, 8]
    assert torch.equal(batch["clip_attention_mask"], expected["clip_attention_mask"])
    # The model never draws noise: no flag for it, no embeddings yet (the trainer embeds, the collator noises).
    assert "inject_noise" not in batch and "clip_embeds" not in batch


def test_trainer_noises_on_the_fly_embeddings_like_precomputed_ones(processor, model, tmp_path):
    """Embedding on the fly gives each example the very noise the precomputed path gives it."""
    from modeling_capdec.training.arguments import CapDecTrainingArguments
    from modeling_capdec.training.trainer import CapDecTrainer

    captions = ["a dog running on the beach", "a cat sleeping on a red sofa"]
    on_the_fly = CapDecDataCollator(processor, noise_variance=EPS, embed_on_the_fly=True, seed=3, epoch=1)
    precomputed = CapDecDataCollator(processor, noise_variance=EPS, seed=3, epoch=1)
    args = CapDecTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = CapDecTrainer(model=model, args=args, data_collator=on_the_fly)
    features = [
        {"input_ids": [1, 0], "caption": text, "example_id": 5 + i} for i, text in enumerate(captions)
    ]
    embedded = trainer._embed_captions(model, on_the_fly(features))
    clip = processor(clip_text=captions, return_tensors="pt")
    clean = model.get_text_embeds(clip["clip_input_ids"], clip["clip_attention_mask"])
    reference = precomputed(
        [{**f, "clip_embeds": row.numpy()} for f, row in zip(features, clean, strict=True)]
    )
    torch.testing.assert_close(embedded["clip_embeds"], reference["clip_embeds"])
    assert not torch.allclose(embedded["clip_embeds"], clean)  # noised
    assert "clip_input_ids" not in embedded and "example_id" not in embedded


def test_bad_features_and_settings(processor):
    with pytest.raises(KeyError, match="no 'clip_embeds'.*embed_on_the_fly"):
        CapDecDataCollator(processor)([{"input_ids": [1, 0], "caption": "a dog"}])
    for bad in (-0.1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=f"noise_variance must be a finite number >= 0, got {bad}"):
            CapDecDataCollator(processor, noise_variance=bad)
    with pytest.raises(ValueError, match="modality_offset holds a value that is not finite"):
        CapDecDataCollator(processor, modality_offset=[0.0, float("inf")])
    with pytest.raises(ValueError, match="noise_type"):
        CapDecDataCollator(processor, noise_type="laplace")
    with pytest.raises(ValueError, match="mode='text' only"):
        CapDecDataCollator(processor, mode="supervised", embed_on_the_fly=True)


def test_inject_noise_takes_drawn_noise_and_checks_its_shape():
    from modeling_capdec.training.noise import inject_noise, sample_noise

    embeds = torch.randn(3, DIM)
    drawn = sample_noise((3, DIM), EPS, generator=torch.Generator().manual_seed(0))
    expected = inject_noise(embeds, EPS, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(inject_noise(embeds, EPS, noise=drawn), expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"noise has shape \(2, 512\), the embeddings \(3, 512\)"):
        inject_noise(embeds, EPS, noise=torch.zeros(2, DIM))


# -- what a mutation audit found unguarded (tests/README.md) ---------------------------------------------------
def test_noise_keeps_the_input_dtype_and_is_computed_in_float32(unit_embedding):
    from modeling_capdec.training.noise import inject_noise

    embeds = unit_embedding.expand(3, DIM).to(torch.bfloat16)
    noised = inject_noise(embeds, EPS, generator=torch.Generator().manual_seed(0))
    reference = inject_noise(embeds.float(), EPS, generator=torch.Generator().manual_seed(0))
    assert noised.dtype == torch.bfloat16
    torch.testing.assert_close(noised, reference.to(torch.bfloat16), atol=0, rtol=0)
    offset = inject_noise(embeds, 0.0, modality_offset=[0.5] + [0.0] * (DIM - 1))
    assert offset.dtype == torch.bfloat16 and offset.shape == embeds.shape
    assert inject_noise(embeds, 0.0).dtype == torch.bfloat16  # no noise, no offset: normalised only


@pytest.mark.parametrize("dim", [2, 512])
def test_uniform_noise_fills_the_ball_uniformly(dim):
    """Uniform in a d-ball of radius r: |n| = r U^(1/d), so E|n| = r d/(d+1), and directions are isotropic."""
    from modeling_capdec.training.noise import sample_noise

    noise = sample_noise((ROWS, dim), EPS, "uniform", generator=torch.Generator().manual_seed(0))
    radius = math.sqrt(EPS)
    norms = noise.norm(dim=-1) / radius
    assert norms.max() <= 1 + 1e-6
    expected, spread = (
        dim / (dim + 1),
        math.sqrt(dim / ((dim + 2) * (dim + 1) ** 2)),
    )  # mean and std of U^(1/d)
    assert abs(norms.mean().item() - expected) < 5 * spread / math.sqrt(ROWS)
    directions = F.normalize(noise, dim=-1)
    assert directions.mean(dim=0).norm() < 5 / math.sqrt(ROWS)  # no preferred direction
    if dim == 2:  # area: a quarter of the disc lies within half the radius
        assert abs((norms < 0.5).float().mean().item() - 0.25) < 5 * math.sqrt(0.25 * 0.75 / ROWS)


def test_uniform_noise_is_replayed_from_each_examples_generator(processor, unit_embedding):
    from modeling_capdec.training.noise import sample_noise

    embeds = unit_embedding.expand(8, DIM)
    noised = CapDecDataCollator(
        processor, noise_variance=EPS, noise_type="uniform", seed=4, epoch=1
    ).add_noise(embeds, example_ids=list(range(8)))
    replayed = torch.cat(
        [sample_noise((1, DIM), EPS, "uniform", generator=example_noise_generator(4, 1, i)) for i in range(8)]
    )
    torch.testing.assert_close(noised, F.normalize(embeds + replayed, dim=-1), atol=1e-6, rtol=0)


def test_without_example_ids_the_noise_follows_the_collators_seed(processor):
    embeds = F.normalize(torch.randn(4, DIM, generator=torch.Generator().manual_seed(1)), dim=-1)
    plain = [{"input_ids": [1, 0], "clip_embeds": row.numpy()} for row in embeds]
    offset = [0.05] * DIM
    first = CapDecDataCollator(processor, noise_variance=EPS, seed=9, modality_offset=offset)(plain)
    again = CapDecDataCollator(processor, noise_variance=EPS, seed=9, modality_offset=offset)(plain)
    torch.testing.assert_close(first["clip_embeds"], again["clip_embeds"], atol=0, rtol=0)
    no_noise = CapDecDataCollator(processor, noise_variance=0.0, modality_offset=offset)(plain)
    torch.testing.assert_close(no_noise["clip_embeds"], F.normalize(embeds + torch.tensor(offset), dim=-1))


def test_example_noise_generator_mixes_all_three_numbers_into_64_bits():
    high, low = np.random.SeedSequence([3, 2, 1]).generate_state(2, dtype=np.uint32)
    assert example_noise_generator(3, 2, 1).initial_seed() == (int(high) << 32) | int(low)
    for bad in ((-1, 0, 0), (0, -1, 0), (0, 0, -1)):
        with pytest.raises(ValueError, match=r"seed, epoch and example_id must be >= 0, got \("):
            example_noise_generator(*bad)


def test_captions_are_padded_with_the_decoders_pad_token(processor):
    import copy

    with_pad = copy.deepcopy(processor)
    with_pad.tokenizer.add_special_tokens({"pad_token": "<pad>"})
    pad_id = with_pad.tokenizer.pad_token_id
    assert pad_id != with_pad.tokenizer.eos_token_id
    batch = CapDecDataCollator(with_pad, noise_variance=0.0).pad_captions([[5, 6, 0], [7, 0]])
    assert batch["input_ids"].tolist() == [[5, 6, 0], [7, 0, pad_id]]
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    assert batch["labels"].tolist() == [[5, 6, 0], [7, 0, -100]]


def test_collator_errors_name_the_example_and_the_setting(processor):
    features = [{"input_ids": [1, 0], "clip_embeds": [0.0] * DIM}, {"input_ids": [1, 0]}]
    with pytest.raises(KeyError, match=r"Example 1 of the batch has no 'clip_embeds'"):
        CapDecDataCollator(processor)(features)
    with pytest.raises(KeyError, match=r"Example 0 of the batch has no 'caption'.*needs the caption text"):
        CapDecDataCollator(processor, embed_on_the_fly=True)([{"input_ids": [1, 0]}])
    with pytest.raises(ValueError, match="Cannot collate an empty batch"):
        CapDecDataCollator(processor)([])
    for kwargs, message in (
        ({"mode": "images"}, "mode must be 'text' or 'supervised', got 'images'"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
        ({"pad_to_multiple_of": 0}, "pad_to_multiple_of must be >= 1, got 0"),
        ({"noise_type": "pink"}, r"noise_type must be one of \['gaussian', 'uniform'\], got 'pink'"),
    ):
        with pytest.raises(ValueError, match=message):
            CapDecDataCollator(processor, **kwargs)
    assert CapDecDataCollator(processor, noise_variance=0.0, pad_to_multiple_of=1).pad_captions([[1, 0]])[
        "input_ids"
    ].shape == (1, 2)
    with pytest.raises(ValueError, match="2 example ids for 1 embeddings"):
        CapDecDataCollator(processor).add_noise(torch.ones(1, DIM), example_ids=[0, 1])


def test_precomputed_embeddings_of_any_type_become_float32(processor):
    rows = torch.eye(2, DIM, dtype=torch.float64)
    features = [{"input_ids": [1, 0], "clip_embeds": row} for row in rows]
    batch = CapDecDataCollator(processor, noise_variance=0.0)(features)
    assert batch["clip_embeds"].dtype == torch.float32
    torch.testing.assert_close(batch["clip_embeds"], rows.float())


def test_length_buckets_pad_to_the_smallest_bucket_and_keep_the_loss(processor, model):
    eos = processor.tokenizer.eos_token_id
    embeds = F.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    captions = [[11, 12, 13, eos], [21, eos], [31, 32, 33, 34, 35, eos]]
    features = [
        {"input_ids": ids, "clip_embeds": row, "example_id": i}
        for i, (ids, row) in enumerate(zip(captions, embeds, strict=True))
    ]
    buckets = CapDecDataCollator(processor, noise_variance=EPS, seed=3, pad_to_buckets=[8, 4, 16])
    assert buckets.pad_to_buckets == (4, 8, 16)  # sorted
    assert buckets(features[:2])["input_ids"].shape[1] == 4  # longest 4: the 4 bucket
    assert buckets(features)["input_ids"].shape[1] == 8  # longest 6: the 8 bucket
    long = [{"input_ids": list(range(40, 60)) + [eos], "clip_embeds": embeds[0]}]
    assert buckets(long)["input_ids"].shape[1] == 21  # past the largest bucket: its own length

    dynamic = CapDecDataCollator(processor, noise_variance=EPS, seed=3)(features)
    bucketed = buckets(features)
    assert bucketed["labels"][:, 6:].eq(-100).all() and bucketed["attention_mask"][:, 6:].eq(0).all()
    torch.testing.assert_close(bucketed["clip_embeds"], dynamic["clip_embeds"])  # the same noise
    with torch.no_grad():  # padding is masked: the same loss
        torch.testing.assert_close(model(**bucketed).loss, model(**dynamic).loss)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pad_to_buckets": [16], "pad_to_multiple_of": 8}, "not both"),
        ({"pad_to_buckets": []}, "lengths >= 1"),
        ({"pad_to_buckets": [16, 0]}, "lengths >= 1"),
    ],
)
def test_bad_length_buckets_are_refused(processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        CapDecDataCollator(processor, noise_variance=0.0, **kwargs)
