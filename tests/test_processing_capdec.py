"""CapDecProcessor and image loading: RGB conversion, bad inputs named by index, round trips."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_capdec import CapDecProcessor, ImageLoadError, load_image, load_images


def _mode_images() -> dict[str, Image.Image]:
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[:, :15] = (200, 30, 30)
    base = Image.fromarray(rgb)
    rgba = base.convert("RGBA")
    alpha = np.full((20, 30), 255, dtype=np.uint8)
    alpha[:, 20:] = 0  # fully transparent part -> white
    rgba.putalpha(Image.fromarray(alpha))
    sixteen = Image.fromarray((np.linspace(0, 65535, 600).reshape(20, 30)).astype(np.uint16))
    return {
        "L": base.convert("L"),
        "RGBA": rgba,
        "CMYK": base.convert("CMYK"),
        "P": base.convert("P"),
        "I;16": sixteen,
        "1": base.convert("1"),
        "LA": base.convert("LA"),
    }


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16", "1", "LA"])
def test_every_mode_becomes_rgb(mode):
    image = _mode_images()[mode]
    converted = load_image(image)
    assert converted.mode == "RGB" and converted.size == (30, 20)
    if mode not in ("RGBA", "I;16"):  # (those two have their own rules, below) PIL's own conversion is right
        assert np.array_equal(np.asarray(converted), np.asarray(image.convert("RGB")))
    assert converted.getpixel((5, 5)) != converted.getpixel((25, 5)) or mode == "1"  # the content survives


def test_conversions_keep_the_content():
    images = _mode_images()
    assert load_image(images["RGBA"]).getpixel((25, 5)) == (255, 255, 255)  # transparent -> white
    assert load_image(images["RGBA"]).getpixel((5, 5)) == (200, 30, 30)
    sixteen = np.asarray(load_image(images["I;16"]))[..., 0]
    # 16-bit values are rescaled to 0..255, not clipped to white
    assert sixteen.min() == 0 and sixteen.max() == 255 and len(np.unique(sixteen)) > 100
    assert load_image(images["CMYK"]).getpixel((5, 5))[0] > 150


def test_files_bytes_arrays_and_modes_are_processed(processor, tmp_path):
    paths = []
    for index, (mode, image) in enumerate(_mode_images().items()):
        path = tmp_path / f"{index}.png" if mode != "CMYK" else tmp_path / f"{index}.jpg"
        image.save(path)
        paths.append(str(path))
    batch = processor(images=paths + [np.zeros((10, 10, 3), dtype=np.uint8), open(paths[0], "rb").read()])
    assert batch["pixel_values"].shape == (len(paths) + 2, 3, 32, 32)
    # A file, its bytes and the image in memory give the same pixels; a black array gives normalised black.
    in_memory = processor(images=[load_image(Image.open(path)) for path in paths])["pixel_values"]
    torch.testing.assert_close(batch["pixel_values"][: len(paths)], in_memory)
    torch.testing.assert_close(batch["pixel_values"][-1], batch["pixel_values"][0])
    image_processor = processor.image_processor
    black = torch.tensor(
        [(0 - m) / s for m, s in zip(image_processor.image_mean, image_processor.image_std, strict=True)]
    )
    torch.testing.assert_close(batch["pixel_values"][-2], black[:, None, None].expand(3, 32, 32))


def test_bad_images_are_reported_by_index_and_source(tmp_path, images):
    good = tmp_path / "good.png"
    images[0].save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    cases = {
        str(tmp_path / "missing.jpg"): "no such file",
        str(truncated): "truncated.png",
        str(text): "notes.txt",
        "http://127.0.0.1:9/cat.png": "http://127.0.0.1:9/cat.png",
        42: "int",
    }
    for source, detail in cases.items():
        with pytest.raises(ImageLoadError, match=rf"image 2 .*{detail}") as error:
            load_images([str(good), str(good), source])
        assert "image 2" in str(error.value)


def test_batch_error_in_processor_names_index(processor, images, tmp_path):
    with pytest.raises(ImageLoadError, match=r"image 1 \('.*nope\.png'\): no such file"):
        processor(images=[images[0], str(tmp_path / "nope.png")])


def test_text_and_clip_text(processor):
    batch = processor(text=["a dog", "a cat on a red sofa"], clip_text=["a dog", "a cat"], add_eos=True)
    eos = processor.tokenizer.eos_token_id
    assert set(batch) == {"input_ids", "attention_mask", "clip_input_ids", "clip_attention_mask"}
    lengths = batch["attention_mask"].sum(1)
    for row, length in zip(batch["input_ids"], lengths, strict=True):
        assert row[length - 1].item() == eos  # captions end with eos: the model learns to stop
    assert batch["clip_input_ids"].shape[1] <= processor.clip_max_length
    with pytest.raises(ValueError, match="needs images=, text= or clip_text="):
        processor()


def test_batch_decode_strips_cleanly(processor):
    eos = processor.tokenizer.eos_token_id
    ids = processor.tokenizer(["a dog running on the beach"])["input_ids"][0]
    padded = torch.tensor([ids + [eos, eos, eos]])
    assert processor.batch_decode(padded) == ["a dog running on the beach"]


def test_processor_round_trip(processor, tmp_path, images):
    processor.save_pretrained(tmp_path)
    loaded = CapDecProcessor.from_pretrained(tmp_path)
    assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert loaded.clip_tokenizer.get_vocab() == processor.clip_tokenizer.get_vocab()
    a = processor(images=images[:2], text=["a dog"], clip_text=["a dog"])
    b = loaded(images=images[:2], text=["a dog"], clip_text=["a dog"])
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_load_image_from_bytes_io_buffer(images):
    buffer = io.BytesIO()
    images[1].save(buffer, format="PNG")
    assert load_image(buffer.getvalue()).size == images[1].size


@pytest.mark.parametrize(
    "source, reason",
    [
        (np.zeros(12, dtype=np.uint8), r"shape \(12,\)"),
        (np.zeros((4, 5, 2), dtype=np.uint8), r"shape \(4, 5, 2\)"),
        (np.zeros((0, 0, 3), dtype=np.uint8), "no pixels"),
        (np.zeros((2, 3, 4, 5), dtype=np.uint8), r"shape \(2, 3, 4, 5\)"),
        (b"", "bytes are empty"),
        (np.zeros((4, 5, 3), dtype=np.float64), "must hold uint8 values.*got float64"),
        (np.full((4, 5), np.nan, dtype=np.float32), "NaN or infinite"),
        ("not-a-file-nor-base64.png", "no such file"),
        (None, "got NoneType"),
    ],
)
def test_malformed_images_are_refused_with_index_and_reason(images, source, reason):
    with pytest.raises(ImageLoadError, match=rf"Cannot load image 1 .*{reason}"):
        load_images([images[0], source])


def test_zero_sized_image_file_names_its_index(tmp_path, images):
    with pytest.raises(ImageLoadError, match=r"image 0 .*no pixels \(size 0×0\)"):
        load_images([Image.new("RGB", (0, 0))])


def test_empty_image_list_is_refused(processor):
    with pytest.raises(ImageLoadError, match="No images given"):
        processor(images=[])


def test_base64_strings_and_data_uris_are_images(images):
    buffer = io.BytesIO()
    images[0].save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    expected = np.asarray(load_image(images[0]))
    assert np.array_equal(np.asarray(load_image(encoded)), expected)
    assert np.array_equal(np.asarray(load_image("data:image/png;base64," + encoded)), expected)
    # Valid base64 that is not an image is reported by index, and the message shows only its start.
    garbage = base64.b64encode(b"hello" * 100).decode()
    with pytest.raises(ImageLoadError, match=r"image 0 .*\.\.\. \(\d+ characters\)") as error:
        load_images([garbage])
    assert garbage not in str(error.value)


def test_grayscale_arrays_with_a_channel_axis_are_accepted():
    assert load_image(np.zeros((6, 7, 1), dtype=np.uint8)).size == (7, 6)
    assert load_image(np.ones((6, 7), dtype=bool)).getpixel((0, 0)) == (255, 255, 255)


def _copy_saved(saved_dir, tmp_path):
    import shutil

    folder = tmp_path / "saved"
    shutil.copytree(saved_dir, folder)
    return folder


def test_missing_clip_tokenizer_folder_never_falls_back_to_the_decoder_tokenizer(saved_dir, tmp_path):
    import shutil

    folder = _copy_saved(saved_dir, tmp_path)
    shutil.rmtree(folder / "clip_tokenizer")
    with pytest.raises(FileNotFoundError, match=r"CLIP tokenizer folder .*clip_tokenizer is missing"):
        CapDecProcessor.from_pretrained(folder)
    (folder / "clip_tokenizer").mkdir()
    with pytest.raises(FileNotFoundError, match=r"CLIP tokenizer folder .*clip_tokenizer holds no tokenizer"):
        CapDecProcessor.from_pretrained(folder)
    # Where the folder check cannot run (a Hub copy), transformers' fallback is caught after loading.
    shutil.copytree(saved_dir / "clip_tokenizer", folder / "clip_tokenizer", dirs_exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(folder / name, folder / "clip_tokenizer" / name)
    with pytest.raises(ValueError, match=r"CLIP tokenizer loaded from .* is the decoder's tokenizer"):
        CapDecProcessor.from_pretrained(folder)


def test_missing_decoder_tokenizer_files_name_the_folder(saved_dir, tmp_path):
    folder = _copy_saved(saved_dir, tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(
        FileNotFoundError, match=rf"decoder tokenizer folder {folder} holds no tokenizer files"
    ):
        CapDecProcessor.from_pretrained(folder)


def test_tokenizers_must_match_the_model(processor, model):
    import copy

    from modeling_capdec import check_processor_matches_model
    from tests.tiny_models import tiny_model, train_clip_tokenizer, train_gpt2_tokenizer

    check_processor_matches_model(processor, model)  # the fixtures agree
    # A CLIP tokenizer of another vocabulary size (trained on other text) than CLIP's text embeddings.
    other_clip = copy.copy(processor)
    other_clip.clip_tokenizer = train_clip_tokenizer(["zebra giraffe elephant"] * 5, vocab_size=280)
    with pytest.raises(
        ValueError, match=r"CLIP tokenizer has \d+ tokens but CLIP's text model embeds \d+ \(it is not"
    ):
        check_processor_matches_model(other_clip, model)
    # A decoder tokenizer larger than the decoder's vocabulary: ids past the embedding table.
    small_model = tiny_model(processor, seed=0)
    small_model.decoder.resize_token_embeddings(200)
    with pytest.raises(ValueError, match=r"decoder tokenizer has 300 tokens but the decoder embeds only 200"):
        check_processor_matches_model(processor, small_model)
    wrong_eos = copy.copy(processor)
    wrong_eos.tokenizer = train_gpt2_tokenizer(["a dog", "a cat"] * 5, vocab_size=260)
    wrong_eos.tokenizer.eos_token = wrong_eos.tokenizer.convert_ids_to_tokens(5)
    with pytest.raises(ValueError, match=r"decoder tokenizer's eos id is 5 but the decoder's is 0"):
        check_processor_matches_model(wrong_eos, model)


def test_pipeline_refuses_a_processor_of_another_model(processor, model):
    import copy

    from modeling_capdec import CapDecImageToTextPipeline
    from tests.tiny_models import train_clip_tokenizer

    other = copy.copy(processor)
    other.clip_tokenizer = train_clip_tokenizer(["zebra giraffe elephant"] * 5, vocab_size=280)
    with pytest.raises(ValueError, match="tokenizers do not match the model"):
        CapDecImageToTextPipeline(model=model, processor=other)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("rm processor_config.json", r"no processor_config\.json or preprocessor_config\.json"),
        ("cut processor_config.json", r"processor_config\.json is not valid JSON"),
        ("cut tokenizer.json", r"saved/tokenizer\.json is not valid JSON \(truncated"),
        ("cut clip_tokenizer/tokenizer.json", r"clip_tokenizer/tokenizer\.json is not valid JSON"),
        ("rm folder", r"no folder .*saved"),
    ],
)
def test_damaged_saved_processor_folders_name_the_file(saved_dir, tmp_path, damage, message):
    import shutil

    folder = _copy_saved(saved_dir, tmp_path)
    action, _, name = damage.partition(" ")
    if name == "folder":
        shutil.rmtree(folder)
    elif action == "rm":
        (folder / name).unlink()
    else:
        text = (folder / name).read_text()
        (folder / name).write_text(text[: len(text) // 2])
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        CapDecProcessor.from_pretrained(folder)


# -- URLs, EXIF rotation (issue 14: what transformers.image_utils.load_image offers, kept in our loader) ---------
def test_exif_rotated_photo_is_turned_upright(tmp_path):
    # A 30×20 photo stored sideways with EXIF orientation 6 ("rotate 90° clockwise to view") is 20×30 upright.
    array = np.zeros((20, 30, 3), dtype=np.uint8)
    array[:, :15] = (200, 30, 30)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    Image.fromarray(array).save(path, exif=exif)
    upright = load_image(str(path))
    assert upright.size == (20, 30)
    # The red left half of the stored image is the top half once turned clockwise.
    assert upright.getpixel((10, 2))[0] > 150 and upright.getpixel((10, 27))[0] < 80


def test_urls_are_fetched_and_failures_name_index_and_url(tmp_path):
    import functools
    import http.server
    import threading

    Image.new("RGB", (6, 4), (10, 200, 30)).save(tmp_path / "green.png")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # no request lines in the test output
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        image = load_image(f"{base}/green.png", timeout=5)
        assert (image.size, image.getpixel((0, 0))) == ((6, 4), (10, 200, 30))
        with pytest.raises(ImageLoadError, match=rf"Cannot load image 1 \('{base}/missing.png'\): .*404"):
            load_images([f"{base}/green.png", f"{base}/missing.png"])
    finally:
        server.shutdown()
        server.server_close()
