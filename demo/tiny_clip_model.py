"""A tiny CLIP for the shapes world: its tokenizer, config, contrastive loss and evaluation.

`demo/train_tiny_clip.py` uses these to train the CLIP that the offline CapDec demo starts from. By
default it is a tiny OpenAI-style CLIP ResNet (`modeling_capdec.CLIPResNetModel`, the family of the
paper's RN50x4) with transformers' CLIP text transformer; `tiny_clip_config` gives the ViT
alternative, a plain `transformers.CLIPModel`. Only the size, the locally trained BPE tokenizer and
the pinned temperature are particular. The hard negatives and mirroring of its training live here too.

Example:
    >>> tokenizer = train_clip_tokenizer(["a small red circle on the left", "a large blue square at the top"])
    >>> model = CLIPModel(tiny_clip_config(tokenizer))
    >>> round(model.logit_scale.exp().item())
    100
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    AutoModel,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    PreTrainedModel,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from demo.bpe_tokenizers import train_clip_tokenizer  # noqa: F401  (the docstring examples use it)
from demo.shapes_world import (
    COLOURS,
    HELDOUT_COMBINATIONS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    caption_scene,
    scene_attributes,
    swap_objects,
)
from modeling_capdec.configuration_capdec import CLIPResNetConfig


def tiny_clip_config(
    tokenizer: CLIPTokenizer,
    image_size: int = 48,
    patch_size: int = 8,
    hidden_size: int = 96,
    num_layers: int = 2,
    num_heads: int = 4,
    projection_dim: int = 64,
    logit_scale: float = 100.0,
) -> CLIPConfig:
    """A small `CLIPConfig` for the shapes world, with token ids taken from `tokenizer`.

    `logit_scale` is the fixed inverse temperature (100 as in trained CLIP); the config stores its
    logarithm, as CLIP does.

    Example:
        >>> config = tiny_clip_config(train_clip_tokenizer(["a red circle"]), patch_size=6)
        >>> config.vision_config.patch_size, config.projection_dim
        (6, 64)
    """
    common = {
        "hidden_size": hidden_size,
        "intermediate_size": 4 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "projection_dim": projection_dim,
    }
    text_config = {
        **common,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": tokenizer.model_max_length,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {**common, "image_size": image_size, "patch_size": patch_size}
    return CLIPConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=projection_dim,
        logit_scale_init_value=math.log(logit_scale),
    )


def tiny_clip_resnet_config(
    tokenizer: CLIPTokenizer,
    input_size: int = 64,
    width: int = 8,
    layers: Sequence[int] = (1, 1, 1, 1),
    text_hidden_size: int = 96,
    text_layers: int = 2,
    text_heads: int = 4,
    pool_heads: int = 8,
    projection_dim: int = 512,
    logit_scale: float = 100.0,
) -> CLIPResNetConfig:
    """A tiny `CLIPResNetConfig`: OpenAI's CLIP ResNet design (3-conv stem, anti-aliased bottlenecks,
    attention pooling) at `width` 8 with one block per stage, and a small CLIP text transformer.

    The ResNet downsamples 32 times, so `input_size` is a multiple of 32: the processor resizes the
    world's 48-pixel images to 64, which leaves a 2x2 map for the attention pool.

    Example:
        >>> config = tiny_clip_resnet_config(train_clip_tokenizer(["a red circle"]))
        >>> config.vision_config.image_size, config.vision_config.embed_dim, config.projection_dim
        (64, 256, 512)
    """
    text_config = tiny_clip_config(
        tokenizer,
        hidden_size=text_hidden_size,
        num_layers=text_layers,
        num_heads=text_heads,
        projection_dim=projection_dim,
    ).text_config.to_dict()
    vision_config = {
        "layers": list(layers),
        "width": width,
        "image_size": input_size,
        "num_attention_heads": pool_heads,
        "output_dim": projection_dim,
    }
    return CLIPResNetConfig(
        text_config=text_config,
        vision_config=vision_config,
        projection_dim=projection_dim,
        logit_scale_init_value=math.log(logit_scale),
    )


def tiny_clip_processor(tokenizer: CLIPTokenizer, image_size: int = 48) -> CLIPProcessor:
    """A `CLIPProcessor` that resizes images to `image_size` (the ViT takes the world's 48 pixels as
    they are; the ResNet needs 64).

    Example:
        >>> processor = tiny_clip_processor(train_clip_tokenizer(["a red circle"]))
        >>> processor(images=Image.new("RGB", (48, 48)), return_tensors="pt")["pixel_values"].shape
        torch.Size([1, 3, 48, 48])
    """
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def load_tiny_clip(clip_dir: str | Path) -> tuple[PreTrainedModel, CLIPProcessor]:
    """The saved tiny CLIP (ResNet or ViT, by its config) in eval mode, and its processor.

    The image processor is named as the PIL one: the default asks for torchvision and warns when it
    falls back to PIL.

    Example:
        >>> model, processor = load_tiny_clip("demo/tiny_clip")  # doctest: +SKIP
    """
    import modeling_capdec  # noqa: F401  (registers CLIPResNetModel with AutoModel)

    model = AutoModel.from_pretrained(clip_dir).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil.from_pretrained(clip_dir),
        tokenizer=CLIPTokenizer.from_pretrained(clip_dir),
    )
    return model, processor


def soft_clip_loss(
    logits_per_image: torch.Tensor, scene_ids: torch.Tensor, text_scene_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric contrastive loss whose targets treat every caption of the same scene as a positive.

    With a small world, a batch often holds the same scene twice; CLIP's one-hot targets would push
    an image away from a correct caption. The target of row i spreads evenly over the columns j whose
    caption describes image i's scene. With all ids distinct and no extra captions this is CLIP's loss.

    Extra captions (hard negatives) may follow the batch's own captions as columns: they compete for
    each image (image -> text), while the text -> image direction uses the batch's own captions only,
    since an extra caption need not describe any image of the batch.

    Args:
        logits_per_image: `(batch, num_captions)` scaled cosine similarities, image i against caption
            j; the first `batch` captions are the images' own, in order.
        scene_ids: `(batch,)` integer id of each image's scene.
        text_scene_ids: `(num_captions,)` scene id of each caption; `scene_ids` when omitted (then
            `num_captions == batch`).

    Example:
        >>> logits = torch.tensor([[10.0, 10.0], [10.0, 10.0]])
        >>> round(soft_clip_loss(logits, torch.tensor([7, 7])).item(), 4)  # both captions fit both images
        0.6931
        >>> hard = torch.tensor([[10.0, 0.0, 10.0], [0.0, 10.0, 0.0]])  # image 0 ties with its negative
        >>> round(soft_clip_loss(hard, torch.tensor([0, 1]), torch.tensor([0, 1, 2])).item(), 4)  # log(2) / 4
        0.1733
    """
    if text_scene_ids is None:
        text_scene_ids = scene_ids
    batch = len(scene_ids)
    same_scene = (scene_ids[:, None] == text_scene_ids[None, :]).float()
    image_loss = torch.nn.functional.cross_entropy(
        logits_per_image, same_scene / same_scene.sum(dim=1, keepdim=True)
    )
    own = same_scene[:, :batch].T
    text_loss = torch.nn.functional.cross_entropy(
        logits_per_image[:, :batch].T, own / own.sum(dim=1, keepdim=True)
    )
    return (image_loss + text_loss) / 2


def mirror_scene(scene: Scene) -> Scene:
    """The scene a left-right mirrored image shows: left and right exchange, top and bottom stay.

    Every shape of the world is symmetric about its vertical axis, so a mirrored rendering is a
    rendering of this scene (the flip augmentation of `demo/train_tiny_clip.py`).

    Example:
        >>> from demo.shapes_world import ShapeObject
        >>> caption_scene(mirror_scene(Scene((ShapeObject("circle", "red", "small", "left"),))), 0)
        'a small red circle on the right'
    """
    if len(scene.objects) == 2:
        return swap_objects(scene) if scene.objects[0].position == "left" else scene
    obj = scene.objects[0]
    flipped = {"left": "right", "right": "left"}.get(obj.position, obj.position)
    return Scene((replace(obj, position=flipped),))


def hard_negative_scene(
    scene: Scene, offset: int, exclude: tuple[tuple[str, str], ...] = HELDOUT_COMBINATIONS
) -> Scene:
    """A scene that differs from `scene` in the way the tiny CLIP finds hardest to see: a two-object
    scene with its objects swapped (same words, other order), a lone object with another shape
    (`offset`, 1 .. len(SHAPES) - 1, steps through the other shapes, skipping `(colour, shape)` pairs
    in `exclude`, so that no held-out pair reaches training even as a negative caption).

    Example:
        >>> from demo.shapes_world import ShapeObject
        >>> caption_scene(hard_negative_scene(Scene((ShapeObject("circle", "red", "small", "left"),)), 1), 0)
        'a small red square on the left'
    """
    if len(scene.objects) == 2:
        return swap_objects(scene)
    obj = scene.objects[0]
    while True:
        shape = SHAPES[(SHAPES.index(obj.shape) + offset) % len(SHAPES)]
        if shape != obj.shape and (obj.colour, shape) not in exclude:
            return Scene((replace(obj, shape=shape),))
        offset += 1


@torch.inference_mode()
def embed_images(
    model: CLIPModel, processor: CLIPProcessor, images: Sequence[Image.Image], batch_size: int = 256
) -> torch.Tensor:
    """L2-normalised image embeddings, `(num_images, projection_dim)`.

    Example:
        >>> tokenizer = train_clip_tokenizer(["a red circle"])
        >>> model = CLIPModel(tiny_clip_config(tokenizer))
        >>> embed_images(model, tiny_clip_processor(tokenizer), [Image.new("RGB", (48, 48))]).shape
        torch.Size([1, 64])
    """
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = processor(images=list(images[start : start + batch_size]), return_tensors="pt")[
            "pixel_values"
        ]
        chunks.append(model.get_image_features(pixel_values=pixels).pooler_output)
    return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)


@torch.inference_mode()
def embed_texts(
    model: CLIPModel, processor: CLIPProcessor, texts: Sequence[str], batch_size: int = 512
) -> torch.Tensor:
    """L2-normalised text embeddings, `(num_texts, projection_dim)`.

    Example:
        >>> tokenizer = train_clip_tokenizer(["a red circle"])
        >>> model = CLIPModel(tiny_clip_config(tokenizer))
        >>> embed_texts(model, tiny_clip_processor(tokenizer), ["a red circle", "a circle"]).shape
        torch.Size([2, 64])
    """
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = processor.tokenizer(
            list(texts[start : start + batch_size]), padding=True, truncation=True, return_tensors="pt"
        )
        chunks.append(model.get_text_features(**tokens).pooler_output)
    return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)


def _attribute_variants(scene: Scene, attribute: str) -> tuple[list[Scene], int]:
    """Scenes that differ from a one-object `scene` only in `attribute`, and the index of `scene`."""
    obj = scene.objects[0]
    values = {"shape": SHAPES, "colour": tuple(COLOURS), "size": SIZES, "position": POSITIONS}[attribute]
    variants = [Scene((replace(obj, **{attribute: value}),)) for value in values]
    return variants, values.index(getattr(obj, attribute))


def evaluate_tiny_clip(
    model: CLIPModel, processor: CLIPProcessor, images: Sequence[Image.Image], scenes: Sequence[Scene]
) -> dict[str, float]:
    """Measures a CLIP on rendered scenes; every caption used is a canonical caption (paraphrase 0).

    - `recall_at_1`: image -> text retrieval among the distinct scenes of the sample; a hit when the
      top caption describes the image's scene.
    - `zero_shot_<attribute>` for shape, colour, size and position (one-object scenes): the image
      ranks captions that differ only in that attribute; accuracy of the top one.
    - `zero_shot_relation` (two-object scenes): the caption against the one with the objects swapped.
    - `cos_image_caption`: mean cosine of an image and its own caption; `cos_paraphrases`: of two
      paraphrases of a scene; `cos_image_image` / `cos_caption_caption`: of different scenes within
      one modality (how narrow each modality's cone is); `centroid_distance`: between the means of
      the normalised image embeddings and of their own captions' (the modality gap);
      `modality_separability`: accuracy of telling image from caption embeddings by which side of the
      mid-point between the centroids they fall, along the line joining them.

    Example:
        >>> import numpy as np
        >>> from demo.shapes_world import render_scene, sample_scene
        >>> rng = np.random.default_rng(0)
        >>> scenes = [sample_scene(rng) for _ in range(8)]
        >>> images = [render_scene(scene, 48, rng) for scene in scenes]
        >>> tokenizer = train_clip_tokenizer([caption_scene(s, 0) for s in scenes])
        >>> metrics = evaluate_tiny_clip(CLIPModel(tiny_clip_config(tokenizer)), tiny_clip_processor(tokenizer), images, scenes)
        >>> 0.0 <= metrics["recall_at_1"] <= 1.0
        True
    """
    model.eval()
    image_embeds = embed_images(model, processor, images)
    one_object = [i for i, scene in enumerate(scenes) if len(scene.objects) == 1]
    two_objects = [i for i, scene in enumerate(scenes) if len(scene.objects) == 2]
    distinct = list(dict.fromkeys(scenes))
    variants = {
        attribute: [_attribute_variants(scenes[i], attribute) for i in one_object]
        for attribute in ("shape", "colour", "size", "position")
    }
    # Embed every caption needed once: attribute variants repeat across images.
    needed = [caption_scene(scene, 0) for scene in distinct]
    needed += [caption_scene(swap_objects(scenes[i]), 0) for i in two_objects]
    needed += [caption_scene(scene, 1) for scene in scenes]
    needed += [caption_scene(v, 0) for lists in variants.values() for options, _ in lists for v in options]
    needed = list(dict.fromkeys(needed))
    text_embeds = embed_texts(model, processor, needed)
    row_of_text = {caption: row for row, caption in enumerate(needed)}

    def captions_embeds(captions: list[str]) -> torch.Tensor:
        return text_embeds[[row_of_text[caption] for caption in captions]]

    caption_embeds = captions_embeds([caption_scene(scene, 0) for scene in distinct])
    row_of_scene = {scene: row for row, scene in enumerate(distinct)}
    own_rows = torch.tensor([row_of_scene[scene] for scene in scenes])
    top = (image_embeds @ caption_embeds.T).argmax(dim=1)
    # Distinct scenes have distinct canonical captions, so a hit is exactly top == own row.
    metrics = {"num_images": len(scenes), "recall_at_1": (top == own_rows).float().mean().item()}

    for attribute, per_image in variants.items():
        hits = [
            int((captions_embeds([caption_scene(v, 0) for v in options]) @ image_embeds[i]).argmax()) == truth
            for i, (options, truth) in zip(one_object, per_image, strict=True)
        ]
        metrics[f"zero_shot_{attribute}"] = float(np.mean(hits)) if hits else float("nan")
    if two_objects:
        own = (
            captions_embeds([caption_scene(scenes[i], 0) for i in two_objects]) * image_embeds[two_objects]
        ).sum(-1)
        swapped = (
            captions_embeds([caption_scene(swap_objects(scenes[i]), 0) for i in two_objects])
            * image_embeds[two_objects]
        ).sum(-1)
        metrics["zero_shot_relation"] = (own > swapped).float().mean().item()

    own_captions = caption_embeds[own_rows]
    second_paraphrases = captions_embeds([caption_scene(scene, 1) for scene in scenes])
    off_diagonal = ~torch.eye(len(distinct), dtype=torch.bool)
    first_image_of = {}
    for i, scene in enumerate(scenes):
        first_image_of.setdefault(scene, i)
    distinct_images = image_embeds[[first_image_of[scene] for scene in distinct]]
    # A single direction (between the centroids), thresholded half-way, tells the modalities apart.
    gap_direction = image_embeds.mean(0) - own_captions.mean(0)
    midpoint = (image_embeds.mean(0) + own_captions.mean(0)) / 2 @ gap_direction
    separable = torch.cat([image_embeds @ gap_direction > midpoint, own_captions @ gap_direction <= midpoint])
    metrics.update(
        cos_image_caption=(image_embeds * own_captions).sum(-1).mean().item(),
        cos_paraphrases=(own_captions * second_paraphrases).sum(-1).mean().item(),
        cos_image_image=(distinct_images @ distinct_images.T)[off_diagonal].mean().item(),
        cos_caption_caption=(caption_embeds @ caption_embeds.T)[off_diagonal].mean().item(),
        centroid_distance=gap_direction.norm().item(),
        modality_separability=separable.float().mean().item(),
        logit_scale=model.logit_scale.exp().item(),
    )
    return metrics


def scene_id_lookup(scenes: Sequence[Scene]) -> torch.Tensor:
    """Integer ids, equal exactly for equal scenes (for `soft_clip_loss`), `(len(scenes),)`.

    Example:
        >>> from demo.shapes_world import ShapeObject
        >>> s = Scene((ShapeObject("circle", "red", "small", "left"),))
        >>> scene_id_lookup([s, s]).tolist()
        [0, 0]
    """
    ids: dict = {}
    return torch.tensor([ids.setdefault(scene_attributes(scene), len(ids)) for scene in scenes])
