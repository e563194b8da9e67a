"""Choosing ε from data: the estimators on synthetic clouds with a known spread or gap, and the parsing of
`--noise_variance auto`."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from modeling_capdec.training.arguments import CapDecTrainingArguments, noise_variance_setting
from modeling_capdec.training.noise_estimate import (
    caption_group_cosine,
    centroid_cosine,
    corpus_caption_groups,
    estimate_noise,
    fit_modality_map,
    modality_offset,
    pseudo_pair_cosine,
    variance_from_cosine,
)

DIM = 64


def unit(rows: torch.Tensor) -> torch.Tensor:
    return F.normalize(rows, dim=-1)


def noisy(embeds: torch.Tensor, variance: float, generator: torch.Generator) -> torch.Tensor:
    """CapDec's noise: add N(0, εI), normalise again."""
    return unit(embeds + torch.randn(embeds.shape, generator=generator) * math.sqrt(variance))


def test_variance_from_cosine_is_the_rule_and_refuses_impossible_cosines():
    assert variance_from_cosine(0.3, 640) == pytest.approx((1 / 0.09 - 1) / 640)
    assert variance_from_cosine(1.0, 64) == 0.0
    with pytest.raises(ValueError, match=r"must be in \(0, 1\].*got -0.1000"):
        variance_from_cosine(-0.1, 64)


@pytest.mark.parametrize("true_variance", [0.002, 0.016])
def test_pseudo_pairs_recover_the_noise_between_images_and_their_captions(true_variance):
    generator = torch.Generator().manual_seed(0)
    captions = unit(torch.randn(3000, DIM, generator=generator))
    # Unlabelled "images": 400 of the captions moved by exactly CapDec's noise; which caption is whose is not given.
    images = noisy(captions[:400], true_variance, generator)
    estimate = estimate_noise(captions, images)
    assert estimate.estimator == "pseudo_pairs"
    assert estimate.noise_variance == pytest.approx(true_variance, rel=0.1)
    assert (estimate.num_captions, estimate.num_images, estimate.dim) == (3000, 400, DIM)


def test_pseudo_pairs_take_the_best_match_per_image():
    captions = torch.eye(4)
    images = torch.tensor([[0.0, 3.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
    assert pseudo_pair_cosine(images, captions) == pytest.approx((1.0 + 0.5**0.5) / 2)


def test_centroids_recover_a_pure_shift_between_the_clouds():
    generator = torch.Generator().manual_seed(1)
    # Captions in a cone (as CLIP's are), images = captions shifted by a fixed gap vector.
    axis = unit(torch.randn(DIM, generator=generator))
    captions = unit(axis + 0.15 * torch.randn(4000, DIM, generator=generator))
    gap = 0.3 * unit(torch.randn(DIM, generator=generator))
    images = unit(captions + gap)
    true_cosine = float((images * captions).sum(-1).mean())
    assert centroid_cosine(images, captions) == pytest.approx(true_cosine, abs=0.01)
    offset = torch.tensor(modality_offset(images, captions))
    assert float(F.cosine_similarity(offset, gap, dim=0)) > 0.95
    estimate = estimate_noise(captions, images, estimator="centroids")
    assert estimate.noise_variance == pytest.approx(variance_from_cosine(true_cosine, DIM), rel=0.15)


@pytest.mark.parametrize("true_variance", [0.0005, 0.002])
def test_shifted_pseudo_pairs_measure_only_the_noise_left_after_the_modality_offset(true_variance):
    generator = torch.Generator().manual_seed(3)
    # Captions in a cone; images = captions moved by a fixed gap *and* CapDec's noise (what --noise_offset trains).
    axis = unit(torch.randn(DIM, generator=generator))
    captions = unit(axis + 0.12 * torch.randn(2000, DIM, generator=generator))
    gap = 0.5 * unit(torch.randn(DIM, generator=generator))
    images = noisy(captions[:500] + gap, true_variance, generator)
    shifted = estimate_noise(captions, images, shift_by_offset=True)
    assert shifted.shifted and shifted.estimator == "pseudo_pairs"
    # Within 25%: the offset is measured between unit vectors, so it is shorter than the gap (as for real CLIP).
    assert shifted.noise_variance == pytest.approx(true_variance, rel=0.25)
    # Without the shift the gap counts as noise: ε comes out several times too large.
    assert estimate_noise(captions, images).noise_variance > 2 * true_variance
    norm = float(torch.tensor(modality_offset(images, captions)).norm())
    assert shifted.summary().endswith(
        f"500 images, captions shifted by the modality offset, norm {norm:.4f})"
    )
    assert shifted.as_record()["shifted"] is True


def test_the_measured_noise_shape_finds_the_directions_images_differ_in():
    generator = torch.Generator().manual_seed(4)
    captions = unit(torch.randn(2000, DIM, generator=generator))
    # Images = captions moved only within the first four dimensions (variances 4 : 3 : 2 : 1).
    scales = torch.zeros(DIM)
    scales[:4] = torch.tensor([4.0, 3.0, 2.0, 1.0]).sqrt() * 0.1
    images = unit(captions[:1000] + torch.randn(1000, DIM, generator=generator) * scales)
    estimate = estimate_noise(captions, images, measure_shape=True)
    shape = estimate.noise_shape
    assert shape.shape == (DIM, DIM) and shape.dtype == torch.float32
    assert shape.pow(2).sum() == pytest.approx(DIM, rel=1e-4)  # the same expected length as isotropic noise
    covariance = shape.T @ shape
    inside = covariance[:4, :4].diagonal().sum() / covariance.diagonal().sum()
    assert (
        inside > 0.9
    )  # the residual is orthogonal to each caption, so a little leaks out of the 4 dimensions
    ratios = covariance.diagonal()[:4] / covariance[3, 3]
    assert ratios.tolist() == pytest.approx([4.0, 3.0, 2.0, 1.0], rel=0.25)
    rank = estimate.as_record()["noise_shape_effective_rank"]
    assert rank == pytest.approx(100 / 30, rel=0.25)  # (4+3+2+1)² / (16+9+4+1)
    assert estimate.summary().endswith(f"noise shaped like the residuals, effective rank {rank:.1f})")
    # ε is the one of plain pseudo_pairs: the shape moves the noise, not its length.
    assert estimate.noise_variance == estimate_noise(captions, images).noise_variance
    with pytest.raises(ValueError, match="--noise_shape measured.*needs --noise_images and the pseudo_pairs"):
        estimate_noise(captions, images, estimator="centroids", measure_shape=True)


def test_the_modality_map_recovers_a_turned_and_shifted_gap_and_the_noise_left_after_it():
    generator = torch.Generator().manual_seed(5)
    captions = unit(torch.randn(3000, DIM, generator=generator))
    # Images = captions turned by a random near-identity matrix and shifted by a gap, then CapDec's noise.
    turn = torch.eye(DIM) + 0.5 * torch.randn(DIM, DIM, generator=generator) / DIM**0.5
    clean = unit(captions[:800] @ turn + 0.5 * unit(torch.randn(DIM, generator=generator)))
    images = noisy(clean, 0.002, generator)
    estimate = estimate_noise(captions, images, map_captions=True, measure_shape=True)
    mapping = estimate.modality_map
    # The map takes captions onto their clean images; the offset alone does not.
    mapped = unit(mapping(captions[:800].double()).float())
    shifted = unit(captions[:800] + torch.tensor(estimate.modality_offset))
    mapped_gap = 1 - F.cosine_similarity(mapped, clean).mean()
    assert mapped_gap < 0.01 and mapped_gap < (1 - F.cosine_similarity(shifted, clean).mean()) / 5
    # ε: the noise left around the mapped captions; around the shifted ones the turn counts as noise.
    assert estimate.noise_variance == pytest.approx(0.002, rel=0.15)
    assert estimate_noise(captions, images, shift_by_offset=True).noise_variance > 2 * 0.002
    assert estimate.noise_shape.shape == (DIM, DIM) and estimate.noise_shape.pow(2).sum() == pytest.approx(
        DIM
    )
    record = estimate.as_record()
    assert record["modality_map_ridge"] == pytest.approx(mapping.ridge) and mapping.ridge > 0
    assert f"captions mapped by the measured modality map (ridge {mapping.ridge:.3g})" in estimate.summary()
    weight, bias = mapping.as_tensors()
    assert weight.dtype == bias.dtype == torch.float32 and weight.shape == (DIM, DIM) and bias.shape == (DIM,)


def test_the_modality_maps_leave_one_out_predictions_are_exact():
    generator = torch.Generator().manual_seed(6)
    captions = unit(torch.randn(60, 8, generator=generator))
    images = noisy(
        captions[:40] @ (torch.eye(8) + 0.3 * torch.randn(8, 8, generator=generator)), 0.01, generator
    )
    mapping, held_out = fit_modality_map(images, captions)
    # Refit without each pair in turn (same pseudo-pairs, same penalty, unpenalised intercept).
    texts, unit_images = unit(captions.double()), unit(images.double())
    shifted = unit(texts + unit_images.mean(0) - texts.mean(0))
    inputs = texts[(unit_images @ shifted.T).argmax(dim=-1)]
    for k in (0, 17, 39):
        keep = torch.arange(40) != k
        x_mean, y_mean = inputs[keep].mean(0), unit_images[keep].mean(0)
        x, y = inputs[keep] - x_mean, unit_images[keep] - y_mean
        weight = torch.linalg.solve(x.T @ x + mapping.ridge * torch.eye(8, dtype=x.dtype), x.T @ y)
        torch.testing.assert_close(held_out[k], (inputs[k] - x_mean) @ weight + y_mean)


def test_the_modality_map_needs_images_and_pseudo_pairs_and_replaces_the_shift():
    captions, images = unit(torch.randn(10, 8)), unit(torch.randn(4, 8))
    for kwargs in ({"image_embeds": None}, {"estimator": "centroids"}, {"shift_by_offset": True}):
        with pytest.raises(ValueError, match=r"Mapping the captions \(--noise_map\) fits the map"):
            estimate_noise(captions, **{"image_embeds": images, "map_captions": True, **kwargs})


def test_the_shift_needs_images_and_pseudo_pairs():
    captions = unit(torch.randn(10, 8))
    with pytest.raises(
        ValueError, match=r"modality offset \(--noise_offset\) measures it on unlabelled images"
    ):
        estimate_noise(captions, shift_by_offset=True)
    with pytest.raises(ValueError, match="needs the pseudo_pairs estimator, got centroids"):
        estimate_noise(captions, unit(torch.randn(4, 8)), estimator="centroids", shift_by_offset=True)


def test_caption_groups_recover_the_spread_of_captions_around_their_scene():
    generator = torch.Generator().manual_seed(2)
    spread = 0.004
    scenes = unit(torch.randn(500, DIM, generator=generator))
    captions = noisy(scenes.repeat_interleave(5, dim=0), spread, generator)  # five captions per scene
    group_ids = [f"scene{i // 5}" for i in range(len(captions))]
    estimate = estimate_noise(captions, group_ids=group_ids)
    assert estimate.estimator == "caption_groups"
    assert estimate.num_groups == 500
    assert estimate.noise_variance == pytest.approx(spread, rel=0.1)


def test_caption_groups_need_a_group_of_two():
    with pytest.raises(ValueError, match="No group holds two captions"):
        caption_group_cosine(torch.eye(3), [0, 1, 2])


def test_estimators_say_what_they_need():
    captions = unit(torch.randn(10, 8))
    with pytest.raises(
        ValueError, match="pseudo_pairs estimator compares images with captions.*--noise_images"
    ):
        estimate_noise(captions, estimator="pseudo_pairs")
    with pytest.raises(ValueError, match="caption_groups estimator needs captions grouped"):
        estimate_noise(captions)
    with pytest.raises(ValueError, match="Unknown noise estimator 'median'"):
        estimate_noise(captions, estimator="median")
    with pytest.raises(ValueError, match="image embeddings have 4 dimensions and the caption embeddings 8"):
        estimate_noise(captions, torch.randn(3, 4))


def test_corpus_groups_from_caption_lists_or_a_group_column_and_whole_group_sampling():
    rows = {"caption": [["a dog", "a brown dog", " "], "a cat", "a black cat"], "image": [1, 2, 2]}
    assert corpus_caption_groups(rows) == (["a dog", "a brown dog", "a cat", "a black cat"], [0, 0, 1, 2])
    assert corpus_caption_groups(rows, group_column="image") == (
        ["a dog", "a brown dog", "a cat", "a black cat"],
        [0, 0, 1, 1],
    )
    many = {"caption": [[f"caption {i}a", f"caption {i}b"] for i in range(100)]}
    captions, groups = corpus_caption_groups(many, max_captions=10, seed=0)
    assert len(captions) == 10 and all(groups.count(g) == 2 for g in set(groups))
    assert corpus_caption_groups(many, max_captions=10, seed=0) == (captions, groups)
    with pytest.raises(ValueError, match="no column 'scene'; its columns are \\['caption'\\]"):
        corpus_caption_groups(many, group_column="scene")


def test_noise_variance_setting_reads_numbers_and_auto():
    assert noise_variance_setting("auto") == "auto"
    assert noise_variance_setting("0.004") == 0.004
    assert CapDecTrainingArguments(output_dir="out", noise_variance="auto").noise_variance == "auto"
    assert CapDecTrainingArguments(output_dir="out", noise_variance=0.016).noise_variance == 0.016
    with pytest.raises(ValueError, match="--noise_variance must be a number >= 0 or 'auto', got 'lots'"):
        noise_variance_setting("lots")


def test_study_reads_a_sweep_and_finds_the_nearest_swept_noise(tmp_path):
    from demo.estimate_noise_study import nearest_sweep_point, read_sweep

    assert max(read_sweep(None).items(), key=lambda item: item[1])[0] == 0.016  # the README's peak
    results = {
        "eps=0": {"test_seen": {"CIDEr": 1.0}},
        "eps=0.01": {"test_seen": {"CIDEr": 2.0}},
        "eps=auto": {"test_seen": {"CIDEr": 3.0}},
        "eps=auto + memory": {"test_seen": {"CIDEr": 4.0}},
        "supervised": {},
    }
    (tmp_path / "results.json").write_text(json.dumps({"results": results}))
    assert read_sweep(str(tmp_path / "results.json")) == {0.0: 1.0, 0.01: 2.0}
    sweep = {0.0: 1.0, 0.001: 2.0, 0.004: 3.0, 0.016: 2.5}
    assert nearest_sweep_point(0.0019, sweep) == 0.001  # log10 distance 0.28 against 0.32 to 0.004
    assert nearest_sweep_point(0.0021, sweep) == 0.004
    assert nearest_sweep_point(1e-6, sweep) == 0.0


def test_the_estimate_embeds_on_the_device_it_is_given(processor, monkeypatch):
    # Before training the model is still where it was loaded (Trainer moves it later): the estimate must move
    # CLIP to the training device it embeds on, as the corpus embedding does, not send inputs to a device
    # CLIP is not on.
    from datasets import Dataset

    from modeling_capdec.training.noise_estimate import embed_for_estimate
    from tests.tiny_models import tiny_model

    model = tiny_model(processor)
    moved, move = [], model.clip.to
    monkeypatch.setattr(model.clip, "to", lambda device: moved.append(device) or move(device))
    corpus = Dataset.from_dict({"caption": ["a dog on the beach", "a cat on a sofa"]})
    text_embeds, _, image_embeds = embed_for_estimate(model, processor, corpus, device="cpu")
    assert (
        moved == ["cpu"]
        and text_embeds.shape == (2, model.config.clip_projection_dim)
        and image_embeds is None
    )
