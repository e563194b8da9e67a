"""Shared offline fixtures: tiny random CLIP / GPT-2 / tokenizers, images, and a saved Hub-ready folder."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny_models import tiny_model, tiny_processor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread: tiny models gain nothing from more, and on a shared 2-core machine two threads thrash.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def processor():
    return tiny_processor()


@pytest.fixture(scope="session")
def model(processor):
    # Seed 3 gives four different greedy and beam captions for `images`: the equivalence tests compare
    # batched with one-by-one generation, which would prove little if every image got the same caption.
    return tiny_model(processor, seed=3)


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    # Distinct flat colours and gradients (random noise images all embed alike under a random CLIP).
    rng = np.random.default_rng(0)
    sizes = [(40, 50), (32, 32), (64, 48), (37, 41)]
    colours = [(230, 20, 20), (20, 200, 40), (30, 30, 220), (240, 240, 240)]
    images = []
    for index, ((h, w), colour) in enumerate(zip(sizes, colours, strict=True)):
        ramp = np.linspace(0, 1, w)[None, :, None] if index % 2 else np.linspace(0, 1, h)[:, None, None]
        array = np.asarray(colour)[None, None, :] * ramp + rng.normal(0, 4, (h, w, 3))
        images.append(Image.fromarray(array.clip(0, 255).astype(np.uint8)))
    return images


@pytest.fixture(scope="session")
def saved_dir(tmp_path_factory, model, processor):
    path = tmp_path_factory.mktemp("capdec_saved")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def image_files(tmp_path_factory, images) -> list[str]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for index, image in enumerate(images):
        path = folder / f"img{index}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def pytest_configure(config):
    # Marks used by transformers' vendored test mixins (tests/transformers_upstream), registered as transformers'
    # own conftest does, so that pytest does not warn about unknown marks.
    for mark in (
        "slow",
        "accelerate_tests",
        "flash_attn_test",
        "flash_attn_3_test",
        "flash_attn_4_test",
        "torch_compile_test",
    ):
        config.addinivalue_line("markers", f"{mark}: transformers test mark")
