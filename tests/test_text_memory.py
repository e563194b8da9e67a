"""Projection onto the text memory (DeCap's idea, an option of generate and the pipeline): the formula's limits,
the memory saved with the weights and reloaded bit-exact, also through the remote-code pipeline."""

import json
import shutil
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from modeling_capdec import CapDecForConditionalGeneration
from modeling_capdec.training.text_memory import attach_text_memory, sample_memory_rows
from tests.tiny_models import CAPTIONS, run_in_fresh_process, tiny_model

GENERATE = {"max_new_tokens": 6}


@pytest.fixture(scope="module")
def memory_model(processor):
    model = tiny_model(processor, seed=3)
    generator = torch.Generator().manual_seed(0)
    model.set_text_memory(torch.randn(9, model.config.clip_projection_dim, generator=generator))
    return model


@pytest.fixture(scope="module")
def memory_dir(tmp_path_factory, memory_model, processor):
    path = tmp_path_factory.mktemp("capdec_memory")
    memory_model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_set_text_memory_stores_normalised_rows_and_the_size(memory_model):
    assert memory_model.config.text_memory_size == 9
    assert memory_model.text_memory.shape == (9, memory_model.config.clip_projection_dim)
    torch.testing.assert_close(memory_model.text_memory.norm(dim=-1), torch.ones(9))


def test_small_temperature_gives_the_nearest_row_and_large_the_memory_mean(memory_model):
    queries = torch.randn(
        5, memory_model.config.clip_projection_dim, generator=torch.Generator().manual_seed(1)
    )
    memory = memory_model.text_memory
    nearest = memory[(F.normalize(queries, dim=-1) @ memory.T).argmax(dim=-1)]
    torch.testing.assert_close(memory_model.project_to_text_memory(queries, temperature=1e-6), nearest)
    mean = F.normalize(memory.mean(dim=0), dim=0).expand(5, -1)
    torch.testing.assert_close(memory_model.project_to_text_memory(queries, temperature=1e9), mean)
    # In between: the softmax-weighted sum of the rows, normalised (DeCap's formula), written out by hand.
    weights = torch.softmax(F.normalize(queries, dim=-1) @ memory.T / 0.1, dim=-1)
    torch.testing.assert_close(
        memory_model.project_to_text_memory(queries, temperature=0.1), F.normalize(weights @ memory, dim=-1)
    )


def test_generate_projects_only_when_asked(memory_model, processor, images):
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    plain = memory_model.generate(pixel_values=pixel_values, **GENERATE)
    projected = memory_model.generate(
        pixel_values=pixel_values, project_to_memory=True, memory_temperature=0.05, **GENERATE
    )
    by_hand = memory_model.project_to_text_memory(memory_model.get_image_embeds(pixel_values), 0.05)
    assert torch.equal(projected, memory_model.generate(clip_embeds=by_hand, **GENERATE))
    assert not torch.equal(plain, projected)  # the option is not a no-op on these images


def test_projection_errors_are_clear(model, memory_model, processor, images):
    pixel_values = processor(images=images[:1], return_tensors="pt")["pixel_values"]
    with pytest.raises(ValueError, match="has no text memory to project onto.*--text_memory_size"):
        model.generate(pixel_values=pixel_values, project_to_memory=True)
    with pytest.raises(ValueError, match="memory_temperature is used only with project_to_memory=True"):
        memory_model.generate(pixel_values=pixel_values, memory_temperature=0.1)
    with pytest.raises(ValueError, match="memory_temperature must be a number > 0, got 0"):
        memory_model.generate(pixel_values=pixel_values, project_to_memory=True, memory_temperature=0)
    with pytest.raises(ValueError, match=r"text memory must have shape \(rows >= 1, 16\), got \(3, 5\)"):
        memory_model.set_text_memory(torch.ones(3, 5))
    with pytest.raises(ValueError, match="row that is zero or not finite"):
        memory_model.set_text_memory(torch.zeros(2, 16))


def test_a_folder_without_memory_loads_without_one(saved_dir):
    model = CapDecForConditionalGeneration.from_pretrained(saved_dir)
    assert model.text_memory is None and model.config.text_memory_size == 0


def test_memory_is_saved_in_safetensors_and_reloads_bit_exact(memory_model, memory_dir):
    assert torch.equal(load_file(memory_dir / "model.safetensors")["text_memory"], memory_model.text_memory)
    reloaded = CapDecForConditionalGeneration.from_pretrained(memory_dir)
    assert torch.equal(reloaded.text_memory, memory_model.text_memory)
    assert json.loads((memory_dir / "config.json").read_text())["text_memory_size"] == 9


# A fresh interpreter in which `import modeling_capdec` fails: only the saved folder's code is there.
REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys

    class BlockCapdec:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "modeling_capdec":
                raise ImportError("modeling_capdec is blocked in this process")

    sys.meta_path.insert(0, BlockCapdec())
    from safetensors.torch import save_file
    from transformers import pipeline

    folder, images, memory_file = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    captioner = pipeline("image-to-text", model=folder, trust_remote_code=True)
    save_file({"text_memory": captioner.model.text_memory.contiguous()}, memory_file)
    projected = captioner(images, max_new_tokens=6, project_to_memory=True, memory_temperature=0.05)
    print(json.dumps({"module": type(captioner.model).__module__,
                      "projected": [out[0]["generated_text"] for out in projected]}))
    """
)


def test_memory_round_trips_through_the_remote_code_pipeline(
    memory_model, memory_dir, processor, image_files, tmp_path
):
    memory_file = tmp_path / "remote_memory.safetensors"
    report = run_in_fresh_process(
        REMOTE_SCRIPT, [str(memory_dir), json.dumps(image_files), str(memory_file)], tmp_path
    )
    assert report["module"].startswith("transformers_modules.")
    assert torch.equal(load_file(memory_file)["text_memory"], memory_model.text_memory)
    inputs = processor(images=image_files, return_tensors="pt")
    expected = processor.batch_decode(
        memory_model.generate(**inputs, project_to_memory=True, memory_temperature=0.05, **GENERATE)
    )
    assert report["projected"] == expected


def test_attach_text_memory_to_a_saved_folder(saved_dir, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(saved_dir, folder)
    model = attach_text_memory(folder, CAPTIONS, size=4, seed=0)  # 10 distinct captions, 4 sampled
    assert model.config.text_memory_size == 4
    reloaded = CapDecForConditionalGeneration.from_pretrained(folder)
    assert torch.equal(reloaded.text_memory, model.text_memory)
    all_distinct = attach_text_memory(folder, CAPTIONS, size=100, output_dir=tmp_path / "all")
    assert all_distinct.config.text_memory_size == 10  # CAPTIONS repeats 10 captions three times


def test_memory_rows_are_a_seeded_sample():
    assert sample_memory_rows(5, 10) == [0, 1, 2, 3, 4]
    rows = sample_memory_rows(1000, 20, seed=3)
    assert rows == sample_memory_rows(1000, 20, seed=3) != sample_memory_rows(1000, 20, seed=4)
    assert len(set(rows)) == 20 and rows == sorted(rows)


def test_a_run_continued_from_a_folder_drops_its_memory_and_says_so(memory_dir, caplog):
    # The folder's memory holds its own corpus; a run on another corpus must not keep projecting onto it.
    from modeling_capdec.training.trainer import load_capdec_for_training

    with caplog.at_level("WARNING", logger="modeling_capdec.training.trainer"):
        model, _ = load_capdec_for_training(init_from=str(memory_dir))
    assert model.text_memory is None and model.config.text_memory_size == 0
    assert (
        f"init_from={str(memory_dir)!r} holds a text memory of 9 rows from its own training corpus"
        in caplog.text
    )
    assert "--text_memory_size N" in caplog.text
    with pytest.raises(ValueError, match="has no text memory to project onto"):
        model.project_to_text_memory(torch.randn(1, model.config.clip_projection_dim))
