import itertools
import re

import numpy as np
import pytest
from datasets import load_from_disk

from demo.shapes_world import (
    COLOURS,
    HELDOUT_COMBINATIONS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    all_captions,
    build_shapes_world,
    caption_scene,
    contains_combination,
    num_paraphrases,
    parse_caption,
    render_scene,
    sample_scene,
    scene_attributes,
)

TINY = {
    "num_train_texts": 60,
    "captions_per_scene": 3,
    "num_train_pairs": 40,
    "num_test": 20,
    "progress": False,
}


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("world")
    build_shapes_world(output_dir, seed=0, **TINY)
    return load_from_disk(str(output_dir))


def _pixels(split):
    return np.stack([np.asarray(image) for image in split["image"]])


def test_splits_and_columns(tiny_world):
    assert tiny_world["train_text"].column_names == ["caption", "objects"]
    assert tiny_world["train_pairs"].column_names == ["image", "caption", "objects"]
    for name in ("test_seen", "test_heldout"):
        split = tiny_world[name]
        assert split.column_names == ["image_id", "image", "captions", "objects"]
        assert split["image_id"] == list(range(TINY["num_test"]))
        assert split[0]["image"].size == (48, 48) and split[0]["image"].mode == "RGB"
    assert tiny_world["train_text"].num_rows == TINY["num_train_texts"]
    assert tiny_world["train_pairs"].num_rows == TINY["num_train_pairs"]


def test_same_seed_same_world_other_seed_other_world(tiny_world):
    again = build_shapes_world(seed=0, **TINY)
    other = build_shapes_world(seed=1, **TINY)
    for name in ("train_pairs", "test_seen", "test_heldout"):
        np.testing.assert_array_equal(_pixels(tiny_world[name]), _pixels(again[name]))
        assert not np.array_equal(_pixels(tiny_world[name]), _pixels(other[name]))
    assert tiny_world["train_text"]["caption"] == again["train_text"]["caption"]
    assert tiny_world["train_pairs"]["caption"] == again["train_pairs"]["caption"]
    assert tiny_world["test_seen"]["captions"] == again["test_seen"]["captions"]
    assert tiny_world["train_text"]["caption"] != other["train_text"]["caption"]


def test_split_sizes_do_not_change_other_splits():
    small = build_shapes_world(seed=3, **TINY)
    bigger = build_shapes_world(seed=3, **{**TINY, "num_train_pairs": 50})
    np.testing.assert_array_equal(_pixels(small["test_seen"]), _pixels(bigger["test_seen"]))
    # A larger split starts with the smaller one's rows.
    np.testing.assert_array_equal(_pixels(small["train_pairs"]), _pixels(bigger["train_pairs"])[:40])
    assert bigger["train_pairs"]["caption"][:40] == small["train_pairs"]["caption"]


def test_clip_pairs_add_a_split_over_every_combination_and_leave_the_others_unchanged(tiny_world):
    """The tiny CLIP's pairs include held-out pairs (as web CLIP has seen them); asking for them changes
    no split a captioner trains or is tested on."""
    with_clip = build_shapes_world(seed=0, **{**TINY, "num_clip_pairs": 300})
    assert "clip_pairs" not in tiny_world and with_clip["clip_pairs"].num_rows == 300
    assert with_clip["clip_pairs"].column_names == ["image", "caption", "objects"]
    for name in ("train_pairs", "test_seen", "test_heldout"):
        np.testing.assert_array_equal(_pixels(tiny_world[name]), _pixels(with_clip[name]))
    assert tiny_world["train_text"]["caption"] == with_clip["train_text"]["caption"]
    scenes = [Scene.from_records(objects) for objects in with_clip["clip_pairs"]["objects"]]
    with_heldout = sum(contains_combination(scene, HELDOUT_COMBINATIONS) for scene in scenes)
    # 5 of the 48 colour+shape pairs, one or two objects a scene: about 13% of scenes.
    assert 0.05 * 300 < with_heldout < 0.25 * 300
    for caption, scene in zip(with_clip["clip_pairs"]["caption"], scenes, strict=True):
        assert parse_caption(caption) == scene


def test_train_text_has_distinct_paraphrases_per_scene(tiny_world):
    rows = tiny_world["train_text"]
    for start in range(0, rows.num_rows, TINY["captions_per_scene"]):
        group = rows[start : start + TINY["captions_per_scene"]]
        assert len(set(group["caption"])) == len(group["caption"])
        assert all(objects == group["objects"][0] for objects in group["objects"])


def _word_set(caption: str, words) -> set[str]:
    return {word for word in re.findall(r"[a-z]+", caption) if word in words}


@pytest.mark.parametrize("seed", range(3))
def test_every_caption_names_exactly_the_scene(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        scene = sample_scene(rng, p_two_objects=0.5)
        captions = all_captions(scene)
        assert len(set(captions)) == num_paraphrases(scene) >= 4
        for caption in captions:
            assert parse_caption(caption) == scene
            # Independently of the parser: the attribute words present are exactly the scene's.
            assert _word_set(caption, COLOURS) == {o.colour for o in scene.objects}
            assert _word_set(caption, SHAPES) == {o.shape for o in scene.objects}
            assert _word_set(caption, SIZES) == {o.size for o in scene.objects}
            if len(scene.objects) == 1:
                assert (
                    f"{scene.objects[0].size} {scene.objects[0].colour} {scene.objects[0].shape}" in caption
                )


def test_caption_scene_examples():
    scene = Scene(
        (ShapeObject("circle", "red", "small", "left"), ShapeObject("square", "blue", "large", "right"))
    )
    assert caption_scene(scene, 0) == "a small red circle to the left of a large blue square"
    assert caption_scene(scene, 5) == "a large blue square to the right of a small red circle"
    vertical = Scene(
        (ShapeObject("star", "cyan", "large", "top"), ShapeObject("cross", "white", "small", "bottom"))
    )
    assert "a small white cross below a large cyan star" in all_captions(vertical)
    with pytest.raises(ValueError):
        caption_scene(scene, num_paraphrases(scene))


def test_parse_caption_rejects_other_text():
    for text in (
        "a red circle on the left",
        "a small red circle",
        "a small red circle and a large blue square",
    ):
        with pytest.raises(ValueError):
            parse_caption(text)


def test_scene_validation():
    with pytest.raises(ValueError):
        ShapeObject("hexagon", "red", "small", "left")
    with pytest.raises(ValueError):
        Scene((ShapeObject("circle", "red", "small", "left"), ShapeObject("circle", "blue", "small", "top")))


def test_no_heldout_combination_leaks_into_training(tiny_world):
    heldout_phrases = [f"{colour} {shape}" for colour, shape in HELDOUT_COMBINATIONS]
    for name in ("train_text", "train_pairs"):
        for caption, objects in zip(tiny_world[name]["caption"], tiny_world[name]["objects"], strict=True):
            assert not any(phrase in caption for phrase in heldout_phrases), caption
            assert not contains_combination(Scene.from_records(objects), HELDOUT_COMBINATIONS)
    for captions, objects in zip(
        tiny_world["test_seen"]["captions"], tiny_world["test_seen"]["objects"], strict=True
    ):
        assert not contains_combination(Scene.from_records(objects), HELDOUT_COMBINATIONS)
        assert all(parse_caption(c) == Scene.from_records(objects) for c in captions)
    for objects in tiny_world["test_heldout"]["objects"]:
        assert contains_combination(Scene.from_records(objects), HELDOUT_COMBINATIONS)


def test_heldout_combinations_leave_every_colour_and_shape_seen():
    assert len(HELDOUT_COMBINATIONS) == len(set(HELDOUT_COMBINATIONS))
    assert 0.05 <= len(HELDOUT_COMBINATIONS) / (len(COLOURS) * len(SHAPES)) <= 0.15
    assert (
        len({c for c, _ in HELDOUT_COMBINATIONS})
        == len({s for _, s in HELDOUT_COMBINATIONS})
        == len(HELDOUT_COMBINATIONS)
    )


def test_rendered_colour_at_object_centre():
    rng = np.random.default_rng(0)
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    for shape, colour, size in itertools.product(SHAPES, COLOURS, SIZES):
        scene = Scene((ShapeObject(shape, colour, size, POSITIONS[rng.integers(len(POSITIONS))]),))
        image, [(x, y, _)] = render_scene(scene, 48, rng, return_layout=True)
        x, y = int(round(x)), int(round(y))
        patch = np.asarray(image, dtype=np.float32)[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).mean(0)
        nearest = list(COLOURS)[int(np.argmin(((palette - patch) ** 2).sum(1)))]
        assert nearest == colour, (shape, colour, size, patch)
        assert np.abs(patch - np.array(COLOURS[colour])).max() < 30


def test_two_objects_are_placed_by_their_relation():
    rng = np.random.default_rng(1)
    for _ in range(50):
        scene = sample_scene(rng, p_two_objects=1.0)
        _, layout = render_scene(scene, 48, rng, return_layout=True)
        (x0, y0, r0), (x1, y1, r1) = layout
        if scene.objects[0].position == "left":
            assert x1 - x0 >= r0 + r1  # side by side, not overlapping
        else:
            assert y1 - y0 >= r0 + r1


def test_scene_attributes_identify_scenes():
    rng = np.random.default_rng(2)
    scenes = [sample_scene(rng) for _ in range(300)]
    for a, b in itertools.combinations(scenes[:60], 2):
        assert (scene_attributes(a) == scene_attributes(b)) == (a == b)
