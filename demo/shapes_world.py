"""The "shapes world": a procedural, offline image-captioning world for the CapDec demo.

Each scene holds one or two coloured shapes on a dark, noisy background. Captions are drawn from
several paraphrase templates, built from a fixed lexicon (one word per colour, shape and size, one
phrase per position or relation) so that any caption can be parsed back into its scene. A few
(colour, shape) combinations never occur in the captioner's training splits; the `test_heldout` split
holds only scenes with them, which measures compositional generalisation. Only the optional
`clip_pairs` split, the tiny CLIP's stand-in for web-scale pretraining, draws from every combination.

Everything is deterministic given a seed: the same seed gives the same pixels and captions.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> scene = sample_scene(rng)
    >>> image = render_scene(scene, 48, rng)
    >>> image.size
    (48, 48)
    >>> parse_caption(caption_scene(scene, rng)) == scene
    True

Command line (writes a `datasets.DatasetDict` with splits `train_text`, `train_pairs`, `test_seen`,
`test_heldout`):

    python -m demo.shapes_world --output_dir shapes_world --seed 0
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from datasets import DatasetDict

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond", "star")
# Hues spread round the colour wheel plus white, so a tiny CLIP can tell them apart at 48x48 under noise.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 220, 50),
    "purple": (165, 55, 200),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
    "cyan": (40, 210, 220),
}
SIZES: tuple[str, ...] = ("small", "large")
# Positions of a lone object; two objects sit either left/right or top/bottom of each other.
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
# Relation phrase -> (position of the first-mentioned object, position of the second).
RELATION_PHRASES: dict[str, tuple[str, str]] = {
    "to the left of": ("left", "right"),
    "to the right of": ("right", "left"),
    "above": ("top", "bottom"),
    "below": ("bottom", "top"),
}
# Colour/shape pairs that no training split contains. Fixed (not drawn from the seed) so that a model
# trained on one seed's world has not seen them in another seed's world either. Each colour and each
# shape appears at most once, so every colour and every shape is still seen in training.
HELDOUT_COMBINATIONS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "cross"),
    ("blue", "diamond"),
    ("yellow", "star"),
    ("purple", "circle"),
)

ONE_OBJECT_TEMPLATES: tuple[str, ...] = (
    "a {obj} {pos}",
    "there is a {obj} {pos}",
    "{pos} there is a {obj}",
    "a picture of a {obj} {pos}",
    "the image shows a {obj} {pos}",
    "a single {obj} {pos}",
)
TWO_OBJECT_TEMPLATES: tuple[str, ...] = (
    "a {first} {rel} a {second}",
    "there is a {first} {rel} a {second}",
    "a picture of a {first} {rel} a {second}",
    "the image shows a {first} {rel} a {second}",
    "two shapes: a {first} {rel} a {second}",
)

# Fractions of the image side.
_RADIUS = {"small": 0.12, "large": 0.21}
_ONE_OBJECT_CENTRES = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}
_JITTER = 0.04
# Two objects: little jitter along the relation's axis (so large pairs do not touch), more across it
# (so the relation, not an absolute position, is what the caption describes).
_RELATION_JITTER = (0.02, 0.1)


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene.

    `position` is one of `POSITIONS` for a lone object; in a two-object scene the pair of positions is
    `("left", "right")` or `("top", "bottom")`, i.e. the objects' places relative to each other.

    Example:
        >>> ShapeObject("circle", "red", "small", "left").describe()
        'small red circle'
    """

    shape: str
    colour: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for value, allowed in (
            (self.shape, SHAPES),
            (self.colour, tuple(COLOURS)),
            (self.size, SIZES),
            (self.position, POSITIONS),
        ):
            if value not in allowed:
                raise ValueError(f"{value!r} is not one of {allowed}")

    def describe(self) -> str:
        """The noun phrase naming the object, e.g. `'large blue square'`."""
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """One or two objects. Two objects are stored left-then-right or top-then-bottom, so that equal
    scenes compare (and hash) equal whatever order a caption mentions them in.

    Example:
        >>> scene = Scene((ShapeObject("star", "white", "large", "top"), ShapeObject("cross", "cyan", "small", "bottom")))
        >>> caption_scene(scene, 0)
        'a large white star above a small cyan cross'
    """

    objects: tuple[ShapeObject, ...]

    def __post_init__(self) -> None:
        positions = tuple(obj.position for obj in self.objects)
        if len(self.objects) == 2 and positions not in (("left", "right"), ("top", "bottom")):
            raise ValueError(f"two objects must be placed (left, right) or (top, bottom), got {positions}")
        if len(self.objects) not in (1, 2):
            raise ValueError(f"a scene has one or two objects, got {len(self.objects)}")

    def to_records(self) -> list[dict[str, str]]:
        """The objects as plain dicts (the `objects` column of the datasets)."""
        return [
            {"shape": o.shape, "colour": o.colour, "size": o.size, "position": o.position}
            for o in self.objects
        ]

    @classmethod
    def from_records(cls, records: list[dict[str, str]]) -> Scene:
        """Inverse of `to_records`.

        Example:
            >>> scene = Scene((ShapeObject("circle", "red", "small", "left"),))
            >>> Scene.from_records(scene.to_records()) == scene
            True
        """
        return cls(tuple(ShapeObject(**record) for record in records))


def scene_attributes(scene: Scene) -> tuple[tuple[str, str, str, str], ...]:
    """The scene as a hashable tuple of `(shape, colour, size, position)` per object; two scenes are
    the same scene exactly when these tuples are equal (used e.g. for soft contrastive targets).

    Example:
        >>> scene_attributes(Scene((ShapeObject("circle", "red", "small", "left"),)))
        (('circle', 'red', 'small', 'left'),)
    """
    return tuple((o.shape, o.colour, o.size, o.position) for o in scene.objects)


def contains_combination(scene: Scene, combinations: tuple[tuple[str, str], ...]) -> bool:
    """Whether any object of the scene has a `(colour, shape)` pair from `combinations`.

    Example:
        >>> contains_combination(Scene((ShapeObject("triangle", "red", "small", "left"),)), HELDOUT_COMBINATIONS)
        True
    """
    return any((o.colour, o.shape) in combinations for o in scene.objects)


def _sample_object(rng: np.random.Generator, position: str) -> ShapeObject:
    return ShapeObject(
        shape=SHAPES[rng.integers(len(SHAPES))],
        colour=tuple(COLOURS)[rng.integers(len(COLOURS))],
        size=SIZES[rng.integers(len(SIZES))],
        position=position,
    )


def sample_scene(
    rng: np.random.Generator,
    *,
    p_two_objects: float = 0.4,
    exclude: tuple[tuple[str, str], ...] = (),
    require: tuple[tuple[str, str], ...] = (),
) -> Scene:
    """Draws a random scene.

    The number of objects is drawn first, then objects are redrawn until no object has a
    `(colour, shape)` pair in `exclude` and, if `require` is given, at least one object has a pair in
    `require`. Drawing the count first keeps the one/two-object mix the same under either filter.
    The two objects of a scene never share both colour and shape.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> scene = sample_scene(rng, require=HELDOUT_COMBINATIONS)
        >>> contains_combination(scene, HELDOUT_COMBINATIONS)
        True
    """
    two_objects = rng.random() < p_two_objects
    while True:
        if two_objects:
            positions = ("left", "right") if rng.random() < 0.5 else ("top", "bottom")
            objects = tuple(_sample_object(rng, position) for position in positions)
            if (objects[0].colour, objects[0].shape) == (objects[1].colour, objects[1].shape):
                continue
        else:
            objects = (_sample_object(rng, POSITIONS[rng.integers(len(POSITIONS))]),)
        scene = Scene(objects)
        if contains_combination(scene, exclude):
            continue
        if require and not contains_combination(scene, require):
            continue
        return scene


def swap_objects(scene: Scene) -> Scene:
    """The two-object scene with its objects' places exchanged: what "a X to the left of a Y" becomes
    when read as "a Y to the left of a X". The same words in another order, hence a hard negative.

    Example:
        >>> scene = Scene((ShapeObject("circle", "red", "small", "left"), ShapeObject("star", "cyan", "large", "right")))
        >>> caption_scene(swap_objects(scene), 0)
        'a large cyan star to the left of a small red circle'
    """
    first, second = scene.objects
    return Scene(
        (
            ShapeObject(second.shape, second.colour, second.size, first.position),
            ShapeObject(first.shape, first.colour, first.size, second.position),
        )
    )


def _templates(scene: Scene) -> tuple[str, ...]:
    return ONE_OBJECT_TEMPLATES if len(scene.objects) == 1 else TWO_OBJECT_TEMPLATES


def num_paraphrases(scene: Scene) -> int:
    """How many distinct captions `caption_scene` can give the scene (two-object scenes can be told
    in either order: "a X to the left of a Y" or "a Y to the right of a X").

    Example:
        >>> num_paraphrases(Scene((ShapeObject("circle", "red", "small", "left"),)))
        6
    """
    return len(_templates(scene)) * len(scene.objects)


def caption_scene(scene: Scene, template: np.random.Generator | int) -> str:
    """A caption of the scene: paraphrase number `template` (0 .. `num_paraphrases(scene) - 1`), or a
    random one when given a generator. Paraphrase 0 is the canonical caption.

    Example:
        >>> scene = Scene((ShapeObject("circle", "red", "small", "left"),))
        >>> caption_scene(scene, 1)
        'there is a small red circle on the left'
    """
    if isinstance(template, np.random.Generator):
        template = int(template.integers(num_paraphrases(scene)))
    templates = _templates(scene)
    if not 0 <= template < num_paraphrases(scene):
        raise ValueError(f"template must be in [0, {num_paraphrases(scene)}), got {template}")
    if len(scene.objects) == 1:
        obj = scene.objects[0]
        return templates[template].format(obj=obj.describe(), pos=POSITION_PHRASES[obj.position])
    # Paraphrases past the templates mention the objects in reverse order.
    order = scene.objects if template < len(templates) else scene.objects[::-1]
    relation = next(
        phrase
        for phrase, places in RELATION_PHRASES.items()
        if places == (order[0].position, order[1].position)
    )
    return templates[template % len(templates)].format(
        first=order[0].describe(), rel=relation, second=order[1].describe()
    )


def all_captions(scene: Scene) -> list[str]:
    """Every paraphrase of the scene, canonical first (the references of the test splits).

    Example:
        >>> len(all_captions(Scene((ShapeObject("circle", "red", "small", "left"),))))
        6
    """
    return [caption_scene(scene, index) for index in range(num_paraphrases(scene))]


_OBJECT_PATTERN = re.compile(
    rf"\b({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b",
)


def parse_caption(caption: str) -> Scene:
    """Reads a caption of the world's lexicon back into its scene; raises `ValueError` when the text
    does not name exactly one object with a position or two objects with a relation. Useful for
    scoring generated captions attribute by attribute.

    Example:
        >>> parse_caption("a large blue square to the right of a small red circle").objects[0].describe()
        'small red circle'
    """
    text = " ".join(caption.lower().split())
    mentions = list(_OBJECT_PATTERN.finditer(text))
    if len(mentions) == 1:
        found = [pos for pos, phrase in POSITION_PHRASES.items() if phrase in text]
        if len(found) != 1:
            raise ValueError(f"expected one position phrase in {caption!r}, found {found}")
        size, colour, shape = mentions[0].groups()
        return Scene((ShapeObject(shape, colour, size, found[0]),))
    if len(mentions) == 2:
        between = text[mentions[0].end() : mentions[1].start()]
        found = [phrase for phrase in RELATION_PHRASES if phrase in between]
        # "to the left of" contains no other relation phrase and vice versa, so one match is exact.
        if len(found) != 1:
            raise ValueError(f"expected one relation phrase in {caption!r}, found {found}")
        places = RELATION_PHRASES[found[0]]
        objects = [
            ShapeObject(shape, colour, size, place)
            for (size, colour, shape), place in zip((m.groups() for m in mentions), places, strict=True)
        ]
        objects.sort(key=lambda obj: obj.position in ("right", "bottom"))
        return Scene(tuple(objects))
    raise ValueError(f"expected one or two objects in {caption!r}, found {len(mentions)}")


def place_objects(scene: Scene, size: int, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """Pixel centre and radius `(x, y, r)` of each object, with a little random jitter.

    Example:
        >>> x, y, r = place_objects(Scene((ShapeObject("circle", "red", "large", "left"),)), 48, np.random.default_rng(0))[0]
        >>> x < 24 and r > 8
        True
    """
    layout = []
    if len(scene.objects) == 1:
        obj = scene.objects[0]
        fx, fy = _ONE_OBJECT_CENTRES[obj.position]
        fx, fy = fx + rng.uniform(-_JITTER, _JITTER), fy + rng.uniform(-_JITTER, _JITTER)
        layout.append((fx * size, fy * size, _RADIUS[obj.size] * size))
        return layout
    along, across = _RELATION_JITTER
    horizontal = scene.objects[0].position == "left"
    for obj, base in zip(scene.objects, (0.25, 0.75), strict=True):
        main = base + rng.uniform(-along, along)
        other = 0.5 + rng.uniform(-across, across)
        fx, fy = (main, other) if horizontal else (other, main)
        layout.append((fx * size, fy * size, _RADIUS[obj.size] * size))
    return layout


def _shape_polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        # Nearly filling the circle's bounding box: with corners this far out a 6-8 pixel patch ViT
        # tells squares from circles (an equal-area square was mistaken for a circle a third of the time).
        h = r * 0.95
        return [(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]
    if shape == "diamond":
        return [(x, y - r), (x + r, y), (x, y + r), (x - r, y)]
    if shape == "triangle":
        return [(x, y - r), (x + r * 0.95, y + r * 0.75), (x - r * 0.95, y + r * 0.75)]
    if shape == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        return [(x + rad * np.cos(a), y - rad * np.sin(a)) for a, rad in zip(angles, radii, strict=True)]
    if shape == "cross":
        t = r * 0.35
        return [
            (x - t, y - r), (x + t, y - r), (x + t, y - t), (x + r, y - t),
            (x + r, y + t), (x + t, y + t), (x + t, y + r), (x - t, y + r),
            (x - t, y + t), (x - r, y + t), (x - r, y - t), (x - t, y - t),
        ]  # fmt: skip
    raise ValueError(f"unknown polygon shape {shape!r}")


def render_scene(
    scene: Scene, size: int, rng: np.random.Generator, *, return_layout: bool = False
) -> Image.Image | tuple[Image.Image, list[tuple[float, float, float]]]:
    """Draws the scene as a `size`x`size` RGB image on a dark, noisy background.

    The background is a random dark tint with low-frequency blotches; each object's colour is
    jittered a little, and pixel noise covers everything, so the same scene renders differently each
    time. With `return_layout=True` also returns the `(x, y, r)` of each object.

    Example:
        >>> scene = Scene((ShapeObject("circle", "red", "large", "centre"),))
        >>> image = render_scene(scene, 48, np.random.default_rng(0))
        >>> image.getpixel((24, 24))[0] > 150
        True
    """
    layout = place_objects(scene, size, rng)
    base = rng.uniform(15, 45, size=3)
    coarse = rng.normal(0.0, 12.0, size=(6, 6, 3))
    # Nearest-neighbour upsampling of a coarse field gives cheap, deterministic blotches.
    blotches = np.kron(coarse, np.ones((size // 6 + 1, size // 6 + 1, 1)))[:size, :size]
    background = np.clip(base + blotches, 0, 255).astype(np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    for obj, (x, y, r) in zip(scene.objects, layout, strict=True):
        colour = tuple(
            int(c) for c in np.clip(np.array(COLOURS[obj.colour]) + rng.integers(-12, 13, 3), 0, 255)
        )
        if obj.shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        else:
            draw.polygon(_shape_polygon(obj.shape, x, y, r), fill=colour)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 10.0, size=(size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return (image, layout) if return_layout else image


def _text_rows(
    rng, num_train_texts: int, captions_per_scene: int, p_two_objects: float, bar
) -> dict[str, list]:
    """`train_text`: distinct paraphrases of scenes without a held-out pair, no images."""
    rows: dict[str, list] = {"caption": [], "objects": []}
    while len(rows["caption"]) < num_train_texts:
        scene = sample_scene(rng, p_two_objects=p_two_objects, exclude=HELDOUT_COMBINATIONS)
        count = min(captions_per_scene, num_paraphrases(scene), num_train_texts - len(rows["caption"]))
        for template in rng.choice(num_paraphrases(scene), size=count, replace=False):
            rows["caption"].append(caption_scene(scene, int(template)))
            rows["objects"].append(scene.to_records())
        bar.update(count)
    return rows


def _pair_rows(
    rng,
    num_train_pairs: int,
    image_size: int,
    p_two_objects: float,
    bar,
    exclude: tuple[tuple[str, str], ...] = HELDOUT_COMBINATIONS,
) -> dict[str, list]:
    """`train_pairs` (or `clip_pairs`, with nothing excluded): an image and one random paraphrase per scene."""
    rows: dict[str, list] = {"image": [], "caption": [], "objects": []}
    for _ in range(num_train_pairs):
        scene = sample_scene(rng, p_two_objects=p_two_objects, exclude=exclude)
        rows["image"].append(render_scene(scene, image_size, rng))
        rows["caption"].append(caption_scene(scene, rng))
        rows["objects"].append(scene.to_records())
        bar.update()
    return rows


def _test_rows(
    rng, heldout: bool, num_test: int, image_size: int, p_two_objects: float, bar
) -> dict[str, list]:
    """A test split: every paraphrase of each scene as references; held-out scenes hold a held-out pair."""
    rows: dict[str, list] = {"image_id": [], "image": [], "captions": [], "objects": []}
    filters = {"require": HELDOUT_COMBINATIONS} if heldout else {"exclude": HELDOUT_COMBINATIONS}
    for image_id in range(num_test):
        scene = sample_scene(rng, p_two_objects=p_two_objects, **filters)
        rows["image_id"].append(image_id)
        rows["image"].append(render_scene(scene, image_size, rng))
        rows["captions"].append(all_captions(scene))
        rows["objects"].append(scene.to_records())
        bar.update()
    return rows


def build_shapes_world(
    output_dir: str | Path | None = None,
    seed: int = 0,
    num_train_texts: int = 20_000,
    captions_per_scene: int = 4,
    num_train_pairs: int = 8_000,
    num_test: int = 300,
    image_size: int = 48,
    p_two_objects: float = 0.4,
    progress: bool = True,
    num_clip_pairs: int = 0,
) -> DatasetDict:
    """Builds the world's four splits as a `datasets.DatasetDict`, and saves it to `output_dir`
    (with `shapes_world.json` describing how it was made) when one is given.

    - `train_text`: `caption`, `objects`; `captions_per_scene` distinct paraphrases of each of
      `num_train_texts // captions_per_scene` scenes. No images: CapDec trains on text alone.
    - `train_pairs`: `image`, `caption` (one random paraphrase), `objects`; for the supervised
      reference.
    - `test_seen`: `image_id`, `image`, `captions` (all paraphrases), `objects`; no held-out pair.
    - `test_heldout`: same columns; every scene has an object with a `HELDOUT_COMBINATIONS` pair.
    - `clip_pairs` (only when `num_clip_pairs` > 0): like `train_pairs`, but over every combination,
      held-out pairs included. The tiny CLIP trains on it: real CLIP has seen far more than any
      captioner's corpus, and the held-out split asks whether a captioner trained without a pair can
      still name it, not whether CLIP can see it.

    No split a captioner trains on (`train_text`, `train_pairs`) contains a held-out (colour, shape)
    pair. Each split draws from its own random stream, so changing one split's size leaves the others
    unchanged, and a larger split starts with the rows of the smaller one.

    Example:
        >>> world = build_shapes_world(num_train_texts=8, num_train_pairs=4, num_test=2, progress=False)
        >>> world["train_text"].num_rows, world["test_heldout"].column_names
        (8, ['image_id', 'image', 'captions', 'objects'])
    """
    # Imported here: `datasets` takes seconds to import, and rendering or captioning needs none of it.
    from datasets import Dataset, DatasetDict, Features, List, Value
    from datasets import Image as ImageFeature
    from tqdm.auto import tqdm

    objects_feature = List(
        {
            "shape": Value("string"),
            "colour": Value("string"),
            "size": Value("string"),
            "position": Value("string"),
        }
    )
    # Child i of a SeedSequence does not depend on how many are spawned: adding the fifth stream
    # (clip_pairs) left the four older splits exactly as they were.
    text_rng, pairs_rng, seen_rng, heldout_rng, clip_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)
    )
    bar = tqdm(
        total=num_train_texts + num_train_pairs + 2 * num_test + num_clip_pairs,
        desc="shapes world",
        disable=not progress,
    )

    text_rows = _text_rows(text_rng, num_train_texts, captions_per_scene, p_two_objects, bar)
    pair_rows = _pair_rows(pairs_rng, num_train_pairs, image_size, p_two_objects, bar)

    def test_split(rng: np.random.Generator, heldout: bool) -> Dataset:
        rows = _test_rows(rng, heldout, num_test, image_size, p_two_objects, bar)
        features = Features(
            image_id=Value("int32"),
            image=ImageFeature(),
            captions=List(Value("string")),
            objects=objects_feature,
        )
        return Dataset.from_dict(rows, features=features)

    world = DatasetDict(
        train_text=Dataset.from_dict(
            text_rows, features=Features(caption=Value("string"), objects=objects_feature)
        ),
        train_pairs=Dataset.from_dict(
            pair_rows,
            features=Features(image=ImageFeature(), caption=Value("string"), objects=objects_feature),
        ),
        test_seen=test_split(seen_rng, heldout=False),
        test_heldout=test_split(heldout_rng, heldout=True),
    )
    if num_clip_pairs > 0:
        clip_rows = _pair_rows(clip_rng, num_clip_pairs, image_size, p_two_objects, bar, exclude=())
        world["clip_pairs"] = Dataset.from_dict(
            clip_rows,
            features=Features(image=ImageFeature(), caption=Value("string"), objects=objects_feature),
        )
    bar.close()
    if output_dir is not None:
        output_dir = Path(output_dir)
        world.save_to_disk(str(output_dir))
        description = {
            "seed": seed,
            "image_size": image_size,
            "p_two_objects": p_two_objects,
            "captions_per_scene": captions_per_scene,
            "heldout_combinations": [list(pair) for pair in HELDOUT_COMBINATIONS],
            "shapes": list(SHAPES),
            "colours": COLOURS,
            "sizes": list(SIZES),
            "positions": list(POSITIONS),
            "num_rows": {name: split.num_rows for name, split in world.items()},
        }
        (output_dir / "shapes_world.json").write_text(json.dumps(description, indent=2) + "\n")
    return world


@dataclass
class ShapesWorldArguments:
    """Command-line arguments of `python -m demo.shapes_world`."""

    output_dir: str = field(metadata={"help": "Where to save the DatasetDict."})
    seed: int = field(default=0, metadata={"help": "Seed of every random choice; same seed, same world."})
    num_train_texts: int = field(
        default=20_000, metadata={"help": "Captions in the text-only training split."}
    )
    captions_per_scene: int = field(default=4, metadata={"help": "Paraphrases per scene in train_text."})
    num_train_pairs: int = field(default=8_000, metadata={"help": "Image-caption pairs in train_pairs."})
    num_clip_pairs: int = field(
        default=0,
        metadata={"help": "Pairs over every combination, held-out ones included (the CLIP's); 0: none."},
    )
    num_test: int = field(default=300, metadata={"help": "Images in each of test_seen and test_heldout."})
    image_size: int = field(default=48, metadata={"help": "Side of the square images, in pixels."})
    p_two_objects: float = field(
        default=0.4, metadata={"help": "Probability that a scene holds two objects."}
    )


def main(args: ShapesWorldArguments) -> None:
    """Builds and saves the world described by `args`."""
    world = build_shapes_world(
        args.output_dir,
        seed=args.seed,
        num_train_texts=args.num_train_texts,
        captions_per_scene=args.captions_per_scene,
        num_train_pairs=args.num_train_pairs,
        num_test=args.num_test,
        image_size=args.image_size,
        p_two_objects=args.p_two_objects,
        num_clip_pairs=args.num_clip_pairs,
    )
    print(world)


if __name__ == "__main__":
    from transformers import HfArgumentParser

    main(HfArgumentParser(ShapesWorldArguments).parse_args_into_dataclasses()[0])
