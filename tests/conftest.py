"""Shared offline fixtures: tiny random CLIP / GPT-2 / tokenizers, images, and a saved Hub-ready folder."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny_models import tiny_model, tiny_processor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def processor():
    return tiny_processor()


@pytest.fixture(scope="session")
def model(processor):
    return tiny_model(processor)


@pytest.fixture(scope="session")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(40, 50), (32, 32), (64, 48), (37, 41)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


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
