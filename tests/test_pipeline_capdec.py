"""The saved folder as a user meets it: Auto classes and pipelines, in-process and where the package is absent."""

import json
import textwrap

import numpy as np
import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from modeling_capdec import CapDecForConditionalGeneration, CapDecImageToTextPipeline
from tests.tiny_models import run_in_fresh_process

GENERATE = {"max_new_tokens": 6, "num_beams": 2}

# Runs in a fresh interpreter in which `import modeling_capdec` fails: only the saved folder's code is there.
FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys

    class BlockCapdec:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "modeling_capdec":
                raise ImportError("modeling_capdec is blocked in this process")

    sys.meta_path.insert(0, BlockCapdec())
    try:
        import modeling_capdec  # noqa: F401
        raise SystemExit("modeling_capdec should not be importable here")
    except ImportError:
        pass

    from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

    folder, images, generate = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor(images=images, return_tensors="pt")
    direct = processor.batch_decode(model.generate(**inputs, **generate))
    captioner = pipeline("image-to-text", model=folder, trust_remote_code=True)
    piped = [out[0]["generated_text"] for out in captioner(images, batch_size=3, **generate)]
    inferred = pipeline(model=folder, trust_remote_code=True)
    frozen = not any(p.requires_grad for p in model.clip.parameters())
    print(json.dumps({"direct": direct, "pipeline": piped, "model_class": type(model).__name__,
                      "pipeline_class": type(inferred).__name__, "clip_frozen": frozen,
                      "module": type(model).__module__}))
    """
)


@pytest.fixture(scope="module")
def expected_captions(saved_dir, image_files):
    model = CapDecForConditionalGeneration.from_pretrained(saved_dir)
    processor = AutoProcessor.from_pretrained(saved_dir)
    return processor.batch_decode(model.generate(**processor(images=image_files), **GENERATE))


def test_loads_and_captions_where_the_package_is_not_installed(
    saved_dir, image_files, expected_captions, tmp_path
):
    report = run_in_fresh_process(
        FRESH_PROCESS_SCRIPT, [str(saved_dir), json.dumps(image_files), json.dumps(GENERATE)], tmp_path
    )
    assert report["module"].startswith("transformers_modules.")  # the folder's copy of the code
    assert report["model_class"] == "CapDecForConditionalGeneration"
    assert report["pipeline_class"] == "CapDecImageToTextPipeline"  # the task is inferred from the config
    assert report["clip_frozen"]
    assert report["direct"] == expected_captions
    assert report["pipeline"] == expected_captions


def test_image_to_text_pipeline_in_process(saved_dir, image_files, expected_captions, images):
    captioner = pipeline("image-to-text", model=str(saved_dir), trust_remote_code=True)
    batched = captioner(image_files, batch_size=3, **GENERATE)
    assert [out[0]["generated_text"] for out in batched] == expected_captions
    one = captioner(image_files[0], **GENERATE)
    assert one == [{"generated_text": expected_captions[0]}]
    # PIL images in other modes are converted and captioned
    gray = captioner([images[0].convert("L"), images[1].convert("RGBA")], max_new_tokens=3)
    assert len(gray) == 2 and all(isinstance(out[0]["generated_text"], str) for out in gray)


def test_pipeline_reports_a_bad_image_by_index(saved_dir, image_files, tmp_path):
    captioner = pipeline("image-to-text", model=str(saved_dir), trust_remote_code=True)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    # The remote copy raises its own ImageLoadError class (a ValueError), so match by message.
    with pytest.raises(ValueError, match=r"Cannot load image 2 \('.*broken\.jpg'\)"):
        captioner([image_files[0], image_files[1], str(broken)], batch_size=2, max_new_tokens=3)


def test_pipeline_class_argument(saved_dir, image_files, expected_captions):
    captioner = pipeline("image-to-text", model=str(saved_dir), pipeline_class=CapDecImageToTextPipeline)
    assert [o[0]["generated_text"] for o in captioner(image_files, **GENERATE)] == expected_captions


def test_builtin_image_text_to_text_pipeline_without_remote_code(saved_dir, image_files, expected_captions):
    model = AutoModelForImageTextToText.from_pretrained(saved_dir)  # registered by importing modeling_capdec
    assert type(model) is CapDecForConditionalGeneration
    captioner = pipeline("image-text-to-text", model=str(saved_dir))
    # This built-in pipeline routes loose keywords to the processor: generation options go in generate_kwargs.
    outputs = captioner(images=image_files[:2], text="", generate_kwargs=GENERATE)
    assert [out["generated_text"] for out in outputs] == expected_captions[:2]


@pytest.mark.parametrize("batch_size", [None, 1, 2, 3])
@pytest.mark.parametrize("num_return_sequences", [1, 3])
def test_each_image_gets_its_own_captions_at_any_batch_size(
    model, processor, images, batch_size, num_return_sequences
):
    captioner = CapDecImageToTextPipeline(model=model, processor=processor)
    generate = {"max_new_tokens": 5, "num_beams": 3, "num_return_sequences": num_return_sequences}
    alone = [captioner(image, **generate) for image in images]
    assert len({out[0]["generated_text"] for out in alone}) > 1  # else the comparison proves little
    batching = {} if batch_size is None else {"batch_size": batch_size}
    together = captioner(images, **batching, **generate)
    assert [len(out) for out in together] == [num_return_sequences] * len(images)
    assert together == alone


def test_pipeline_refuses_an_empty_list(model, processor):
    captioner = CapDecImageToTextPipeline(model=model, processor=processor)
    with pytest.raises(ValueError, match="No images given"):
        captioner([])


def test_pipeline_can_skip_bad_images_and_report_them(model, processor, images, tmp_path):
    captioner = CapDecImageToTextPipeline(model=model, processor=processor)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    batch = [images[0], str(broken), images[1], np.zeros((0, 0, 3), dtype=np.uint8)]
    with pytest.raises(ValueError, match=r"Cannot load image 1 \('.*broken\.png'\)"):
        captioner(batch, batch_size=2, max_new_tokens=4)
    outputs = captioner(batch, batch_size=2, max_new_tokens=4, on_bad_image="skip")
    assert outputs[0] == captioner(images[0], max_new_tokens=4)
    assert outputs[2] == captioner(images[1], max_new_tokens=4)
    assert outputs[1][0]["generated_text"] is None and "image 1" in outputs[1][0]["error"]
    assert outputs[3][0]["generated_text"] is None and "image 3" in outputs[3][0]["error"]
    assert "no pixels" in outputs[3][0]["error"]
    with pytest.raises(ValueError, match="on_bad_image must be one of"):
        captioner(images, on_bad_image="ignore")
