import doctest
import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

import demo.bpe_tokenizers
import demo.shapes_world
import demo.tiny_clip_model
import modeling_capdec  # noqa: F401  (registers CLIPResNetModel with AutoModel)
from demo.bpe_tokenizers import train_clip_tokenizer
from demo.shapes_world import (
    COLOURS,
    HELDOUT_COMBINATIONS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    build_shapes_world,
    caption_scene,
    contains_combination,
    parse_caption,
    render_scene,
    sample_scene,
    swap_objects,
)
from demo.tiny_clip_model import (
    embed_images,
    embed_texts,
    evaluate_tiny_clip,
    hard_negative_scene,
    mirror_scene,
    scene_id_lookup,
    soft_clip_loss,
    tiny_clip_config,
    tiny_clip_processor,
)

REPO = Path(__file__).resolve().parents[1]
COMMITTED_CLIP = REPO / "demo" / "tiny_clip"


@pytest.mark.parametrize("module", [demo.bpe_tokenizers, demo.shapes_world, demo.tiny_clip_model])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


@pytest.fixture(scope="module")
def committed():
    model = AutoModel.from_pretrained(COMMITTED_CLIP).eval()
    processor = AutoProcessor.from_pretrained(COMMITTED_CLIP)
    return model, processor


def test_committed_clip_loads_offline_and_is_small(committed):
    model, processor = committed
    assert isinstance(processor, CLIPProcessor)
    assert model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-4)
    # The processor brings the world's 48-pixel images to the size the image tower takes.
    pixels = processor(images=Image.new("RGB", (48, 48)), return_tensors="pt")["pixel_values"]
    assert pixels.shape[-1] == model.config.vision_config.image_size
    size = sum(path.stat().st_size for path in COMMITTED_CLIP.iterdir())
    assert size < 10 * 2**20
    report = json.loads((COMMITTED_CLIP / "training_report.json").read_text())
    assert report["test_seen"]["recall_at_1"] > 0.5


def test_committed_report_matches_the_checkpoint_and_clip_geometry(committed):
    """Re-evaluates the committed CLIP on the report's test splits: the report's numbers are the
    checkpoint's, and they show CLIP's geometry (a large modality gap) and two-object relations."""
    model, processor = committed
    report = json.loads((COMMITTED_CLIP / "training_report.json").read_text())
    arguments = report["arguments"]
    # Each split has its own random stream, so the test splits come out the same without the training ones.
    world = build_shapes_world(
        seed=arguments["world_seed"],
        num_train_texts=0,
        num_train_pairs=0,
        num_test=arguments["num_test"],
        image_size=arguments["image_size"],
        progress=False,
    )
    for split in ("test_seen", "test_heldout"):
        scenes = [Scene.from_records(objects) for objects in world[split]["objects"]]
        metrics = evaluate_tiny_clip(model, processor, list(world[split]["image"]), scenes)
        assert metrics == pytest.approx(report[split], abs=2e-3), split
        assert metrics["zero_shot_relation"] >= 0.8, split  # chance is 0.5
        assert metrics["zero_shot_shape"] >= 0.97, split  # the ViT's 8-pixel patches gave 0.88 / 0.72
        # Real CLIP ViT-B/32: matched cosine about 0.3, and one direction tells images from captions.
        assert 0.2 <= metrics["cos_image_caption"] <= 0.4, split
        assert metrics["modality_separability"] >= 0.99 and metrics["centroid_distance"] > 0.5, split
    assert model.config.projection_dim == 512


def test_mirrored_image_shows_the_mirrored_scene():
    rng = np.random.default_rng(7)
    for _ in range(40):
        scene = sample_scene(rng, p_two_objects=0.5)
        image, layout = render_scene(scene, 48, rng, return_layout=True)
        mirrored = mirror_scene(scene)
        assert mirror_scene(mirrored) == scene
        assert parse_caption(caption_scene(mirrored, 0)) == mirrored
        flipped = np.asarray(image)[:, ::-1]
        for obj, (x, y, _) in zip(scene.objects, layout, strict=True):
            # The object's pixels now sit at 47 - x, and the mirrored scene names that place.
            assert np.abs(flipped[int(y), 47 - int(x)].astype(int) - COLOURS[obj.colour]).max() < 60
            (moved,) = [o for o in mirrored.objects if (o.shape, o.colour) == (obj.shape, obj.colour)]
            if moved.position in ("left", "right"):
                assert (47 - x < 24) == (moved.position == "left")


def test_hard_negatives_differ_by_order_or_shape_and_never_use_a_heldout_pair():
    rng = np.random.default_rng(3)
    for _ in range(200):
        scene = sample_scene(rng, exclude=HELDOUT_COMBINATIONS)
        for offset in range(1, len(SHAPES)):
            negative = hard_negative_scene(scene, offset)
            assert negative != scene and not contains_combination(negative, HELDOUT_COMBINATIONS)
            if len(scene.objects) == 2:
                assert negative == swap_objects(scene)
            else:
                assert replace(negative.objects[0], shape=scene.objects[0].shape) == scene.objects[0]


def test_soft_loss_with_hard_negatives_by_hand():
    logits = torch.tensor([[2.0, 1.0, 1.5], [0.5, 3.0, 0.0]])  # two images, their captions, one negative
    image_loss = -(logits.log_softmax(dim=1)[[0, 1], [0, 1]]).mean()
    text_loss = -(logits[:, :2].T.log_softmax(dim=1)[[0, 1], [0, 1]]).mean()
    expected = (image_loss + text_loss) / 2
    torch.testing.assert_close(
        soft_clip_loss(logits, torch.tensor([0, 1]), torch.tensor([0, 1, 2])), expected
    )


def _other_colour_and_shape(scene: Scene, rng: np.random.Generator) -> Scene:
    obj = scene.objects[0]
    colour = rng.choice([c for c in COLOURS if c != obj.colour])
    shape = rng.choice([s for s in SHAPES if s != obj.shape])
    return Scene((ShapeObject(str(shape), str(colour), obj.size, obj.position),))


def test_committed_clip_prefers_the_scenes_own_caption(committed):
    model, processor = committed
    rng = np.random.default_rng(1234)  # fresh scenes, not the training world's
    scenes = [sample_scene(rng, p_two_objects=0.0) for _ in range(50)]
    images = [render_scene(scene, 48, rng) for scene in scenes]
    image_embeds = embed_images(model, processor, images)
    own = embed_texts(model, processor, [caption_scene(scene, rng) for scene in scenes])
    other = embed_texts(
        model, processor, [caption_scene(_other_colour_and_shape(s, rng), rng) for s in scenes]
    )
    wins = ((image_embeds * own).sum(-1) > (image_embeds * other).sum(-1)).float().mean().item()
    assert wins >= 0.8
    # Colour alone would pass the check above; the weakest attribute, shape, must be seen too.
    other_shape = [
        Scene((replace(s.objects[0], shape=str(rng.choice([x for x in SHAPES if x != s.objects[0].shape]))),))
        for s in scenes
    ]
    other = embed_texts(model, processor, [caption_scene(s, rng) for s in other_shape])
    wins = ((image_embeds * own).sum(-1) > (image_embeds * other).sum(-1)).float().mean().item()
    assert wins >= 0.7


def test_tokenizer_round_trips_and_keeps_words_whole(tmp_path):
    rng = np.random.default_rng(0)
    captions = [caption_scene(sample_scene(rng), rng) for _ in range(300)]
    tokenizer = train_clip_tokenizer(captions)
    tokenizer.save_pretrained(tmp_path)
    reloaded = CLIPTokenizer.from_pretrained(tmp_path)
    batch = captions[:20] + ["an Unseen word, with punctuation!"]
    assert reloaded(batch)["input_ids"] == tokenizer(batch)["input_ids"]
    for word in (*SHAPES, *COLOURS, *SIZES, *POSITIONS):
        assert tokenizer.tokenize(word) == [word + "</w>"]
    ids = tokenizer("a small red circle on the left")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    # Unseen symbols must not turn into <|endoftext|>, where CLIP pools the sentence.
    assert tokenizer.eos_token_id not in tokenizer("qüx ~ zebra")["input_ids"][1:-1]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a small red circle on the left"
    # The BPE trainer's internal numbering varies between runs; ours must not.
    assert train_clip_tokenizer(captions).get_vocab() == tokenizer.get_vocab()


def test_processor_round_trip(tmp_path):
    tokenizer = train_clip_tokenizer(["a small red circle on the left"])
    processor = tiny_clip_processor(tokenizer)
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    a = processor(images=image, text="a red circle", return_tensors="pt")
    b = reloaded(images=image, text="a red circle", return_tensors="pt")
    assert a["pixel_values"].shape == (1, 3, 48, 48)
    torch.testing.assert_close(a["pixel_values"], b["pixel_values"])
    assert a["input_ids"].tolist() == b["input_ids"].tolist()


def test_soft_loss_is_clip_loss_when_scenes_are_distinct():
    tokenizer = train_clip_tokenizer(["a small red circle on the left", "a large blue square at the top"])
    model = CLIPModel(tiny_clip_config(tokenizer)).eval()
    input_ids = tokenizer(["a small red circle on the left", "a large blue square at the top"], padding=True)
    outputs = model(
        input_ids=torch.tensor(input_ids["input_ids"]),
        pixel_values=torch.randn(2, 3, 48, 48),
        return_loss=True,
    )
    torch.testing.assert_close(soft_clip_loss(outputs.logits_per_image, torch.tensor([0, 1])), outputs.loss)


def test_soft_loss_by_hand_with_a_repeated_scene():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.5, 3.0, 0.0], [1.0, 0.0, 1.0]])
    scene_ids = torch.tensor([4, 9, 4])  # pairs 0 and 2 show the same scene
    targets = torch.tensor([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    image_loss = -(targets * logits.log_softmax(dim=1)).sum(1).mean()
    text_loss = -(targets * logits.T.log_softmax(dim=1)).sum(1).mean()
    torch.testing.assert_close(soft_clip_loss(logits, scene_ids), (image_loss + text_loss) / 2)
    a = Scene((ShapeObject("circle", "red", "small", "left"),))
    b = Scene((ShapeObject("circle", "red", "small", "right"),))
    assert scene_id_lookup([a, b, a]).tolist() == [0, 1, 0]


@pytest.mark.parametrize("image_tower", ["resnet", "vit"])
def test_training_script_writes_a_loadable_checkpoint(tmp_path, monkeypatch, image_tower):
    spec = importlib.util.spec_from_file_location("train_tiny_clip", REPO / "demo" / "train_tiny_clip.py")
    script = importlib.util.module_from_spec(spec)
    # dataclasses resolve the script's string annotations through sys.modules.
    monkeypatch.setitem(sys.modules, spec.name, script)
    spec.loader.exec_module(script)
    args = script.TinyClipArguments(
        output_dir=str(tmp_path),
        num_train_texts=200,
        num_train_pairs=64,
        num_test=12,
        max_steps=3,
        warmup_steps=1,
        batch_size=16,
        log_every=1,
        image_tower=image_tower,
    )
    report = script.main(args)
    assert set(report["test_heldout"]) >= {"recall_at_1", "zero_shot_shape", "centroid_distance"}
    assert json.loads((tmp_path / "training_report.json").read_text())["arguments"]["max_steps"] == 3
    model = AutoModel.from_pretrained(tmp_path)
    assert type(model).__name__ == {"resnet": "CLIPResNetModel", "vit": "CLIPModel"}[image_tower]
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-4)
    inputs = processor(
        images=Image.new("RGB", (48, 48)), text=["a small red circle on the left"], return_tensors="pt"
    )
    assert model(**inputs).logits_per_image.shape == (1, 1)
    # Seeded end to end: a second run writes the same weights and tokenizer.
    script.main(replace(args, output_dir=str(tmp_path / "again")))
    for name in ("model.safetensors", "tokenizer.json"):
        assert (tmp_path / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
