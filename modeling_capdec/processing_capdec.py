"""CapDecProcessor: CLIP image processor + decoder tokenizer + CLIP tokenizer, and robust image loading."""

import base64
import binascii
import io
import json
import os
import urllib.request
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from transformers import AutoImageProcessor, AutoTokenizer
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin


class ImageLoadError(ValueError):
    """An image in a batch could not be read; the message names its index and source."""


# Any one of these makes a folder loadable as a tokenizer (tokenizer_config.json alone does not).
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "tekken.json",
)
# The image processor's settings: in processor_config.json (transformers 5) or preprocessor_config.json (older).
IMAGE_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
# ProcessorMixin saves the second tokenizer in a subfolder named after its attribute.
CLIP_TOKENIZER_FOLDER = "clip_tokenizer"


def _check_saved_processor_folder(folder: str) -> None:
    """A local processor folder holds the image processor settings and both tokenizers, and its JSON files parse:
    transformers would otherwise fall back to the root's (decoder) tokenizer for a missing or unreadable
    `clip_tokenizer/`, or fail with a message about sentencepiece/tiktoken or a JSON error without a path."""
    if not any(os.path.isfile(os.path.join(folder, name)) for name in IMAGE_PROCESSOR_FILES):
        raise FileNotFoundError(
            f"Cannot load the CapDec processor from {folder}: no {' or '.join(IMAGE_PROCESSOR_FILES)} (the image "
            "processor's settings); save the processor with CapDecProcessor.save_pretrained."
        )
    for where in (folder, os.path.join(folder, CLIP_TOKENIZER_FOLDER)):
        for name in sorted(os.listdir(where)) if os.path.isdir(where) else []:
            if not name.endswith(".json") or not os.path.isfile(os.path.join(where, name)):
                continue
            try:
                with open(os.path.join(where, name), encoding="utf-8") as handle:
                    json.load(handle)
            except (ValueError, UnicodeDecodeError) as error:
                raise ValueError(
                    f"Cannot load the CapDec processor from {folder}: {os.path.join(where, name)} is not valid JSON "
                    f"(truncated or overwritten?): {error}"
                ) from None
    for where, role in ((folder, "decoder"), (os.path.join(folder, CLIP_TOKENIZER_FOLDER), "CLIP")):
        if not os.path.isdir(where):
            raise FileNotFoundError(
                f"Cannot load the CapDec processor from {folder}: the {role} tokenizer folder {where} is missing "
                "(save the processor with CapDecProcessor.save_pretrained, or copy the tokenizer files there)."
            )
        if not any(os.path.isfile(os.path.join(where, name)) for name in TOKENIZER_FILES):
            raise FileNotFoundError(
                f"Cannot load the CapDec processor from {folder}: the {role} tokenizer folder {where} holds no "
                f"tokenizer files (one of {', '.join(TOKENIZER_FILES)})."
            )


def _vocabulary_rows(module: Any, config: Any) -> int | None:
    """Rows of a model's input embedding table (the ids it can look up), or the config's vocab_size."""
    try:
        return int(module.get_input_embeddings().num_embeddings)
    except (AttributeError, NotImplementedError, TypeError):
        return getattr(config, "vocab_size", None)


def check_processor_matches_model(processor: "CapDecProcessor", model: Any) -> None:
    """Refuse tokenizers that do not fit the model: a mismatch either crashes deep in a forward (an id past the
    embedding table) or, worse, trains and captions with the wrong token meanings without a word.

    - the decoder tokenizer has no more tokens than the decoder's embedding rows (fewer is fine: embeddings are
      often padded), and its eos is the decoder's eos (training teaches this token; generation stops at that one);
    - the CLIP tokenizer has exactly as many tokens as CLIP's text embeddings, and its eos is CLIP's (CLIP pools
      the text at the eos position; configs with the legacy eos id 2 find it by argmax and are not compared).

    Example:

    ```python
    >>> check_processor_matches_model(processor, model)  # doctest: +SKIP
    ```
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(
        config, "clip_config"
    ):  # not a CapDec model (a stand-in with generate())
        return
    problems = []
    decoder_config = config.text_config.get_text_config()
    decoder_rows = _vocabulary_rows(getattr(model, "decoder", None), decoder_config)
    tokenizer = processor.tokenizer
    if decoder_rows is not None and len(tokenizer) > decoder_rows:
        problems.append(
            f"the decoder tokenizer has {len(tokenizer)} tokens but the decoder embeds only {decoder_rows} "
            f"(ids {decoder_rows}..{len(tokenizer) - 1} would fail in the forward)"
        )
    decoder_eos = decoder_config.eos_token_id
    decoder_eos = decoder_eos if isinstance(decoder_eos, list) else [decoder_eos]
    if decoder_eos != [None] and tokenizer.eos_token_id not in decoder_eos:
        problems.append(
            f"the decoder tokenizer's eos id is {tokenizer.eos_token_id} but the decoder's is "
            f"{decoder_eos[0] if len(decoder_eos) == 1 else decoder_eos} (captions would never stop)"
        )
    clip_text_config = config.clip_config.text_config
    clip_text_model = getattr(getattr(model, "clip", None), "text_model", None)
    try:
        clip_rows = clip_text_model.embeddings.token_embedding.num_embeddings
    except AttributeError:  # not a CLIP-like text tower: trust the config
        clip_rows = getattr(clip_text_config, "vocab_size", None)
    clip_tokenizer = processor.clip_tokenizer
    if clip_rows is not None and len(clip_tokenizer) != clip_rows:
        problems.append(
            f"the CLIP tokenizer has {len(clip_tokenizer)} tokens but CLIP's text model embeds {clip_rows} (it is "
            "not this CLIP's tokenizer)"
        )
    clip_eos = clip_text_config.eos_token_id
    if clip_eos not in (None, 2) and clip_tokenizer.eos_token_id != clip_eos:
        problems.append(
            f"the CLIP tokenizer's eos id is {clip_tokenizer.eos_token_id} but CLIP's text model pools at id "
            f"{clip_eos}"
        )
    if problems:
        raise ValueError(
            "The processor's tokenizers do not match the model: " + "; ".join(problems) + ". Use the "
            "tokenizers saved with this model (or of the CLIP and decoder checkpoints it was built from)."
        )


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        # A base64 image is megabytes of text: name it by its start and length, not in full.
        return repr(text) if len(text) <= 200 else f"{text[:40]!r}... ({len(text)} characters)"
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<ndarray {source.dtype} {source.shape}>"
    return f"<{type(source).__name__}>"


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB: grayscale, 16/32-bit and float grayscale (rescaled, not clipped),
    palette and alpha images (composited on white), CMYK, and EXIF-rotated photos."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # PIL's convert("RGB") clips values above 255 to white: rescale the range to 8 bits instead.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        image = Image.fromarray(((array - low) * scale).round().astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def _decode_base64(text: str) -> bytes | None:
    """The bytes of a base64 image string (optionally a `data:image/...;base64,` URI), or None if it is not one."""
    if text.startswith("data:image/"):
        text = text.partition(",")[2]
    # Strict decoding: a path such as "photos/cat.jpg" is not valid base64 (the dot), so it is never misread.
    try:
        return base64.b64decode("".join(text.split()), validate=True) or None
    except (binascii.Error, ValueError):
        return None


def _array_to_image(array: np.ndarray) -> Image.Image:
    # Image.fromarray turns a 1-D array into a 1×N image without a word: only (H, W) and (H, W, C) are images.
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageLoadError(
            f"expected an array of shape (height, width) or (height, width, 3 or 4 channels), got shape "
            f"{array.shape}"
        )
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ImageLoadError("the array holds NaN or infinite values")
    if array.ndim == 3 and array.dtype != np.uint8:
        # PIL stores colour only as 8 bits per channel; guessing a float range (0..1 or 0..255) could be wrong.
        raise ImageLoadError(
            f"a colour array must hold uint8 values (0..255), got {array.dtype}: scale and cast it first"
        )
    return Image.fromarray(array)


def _open(source: Any, timeout: float) -> Image.Image:
    """Open one source as a PIL image; raises `ImageLoadError` (a reason only, without the index) or PIL's errors.

    Not `transformers.image_utils.load_image`, though it reads the same URLs, paths and base64 strings: it converts
    to RGB at once (16-bit grayscale clipped to white; transparent pixels keep their hidden colour, often black,
    where `to_rgb` composites on white), decodes base64 leniently (a missing path is tried as base64 and fails
    with an error quoting the whole string), takes no bytes or arrays, and names no index. Its other gains, URL
    timeout and EXIF rotation, are here too (`timeout`, `to_rgb`).
    """
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _array_to_image(source)
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageLoadError("the bytes are empty")
        return Image.open(io.BytesIO(source))
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        if text.startswith(("http://", "https://")):
            with urllib.request.urlopen(text, timeout=timeout) as response:
                return Image.open(io.BytesIO(response.read()))
        if os.path.isfile(text):
            return Image.open(text)
        if os.path.isdir(text):
            raise ImageLoadError("it is a folder, not an image file")
        data = _decode_base64(text) if isinstance(source, str) else None
        if data is None:
            raise ImageLoadError("no such file (nor a URL or a base64-encoded image)")
        return Image.open(io.BytesIO(data))
    raise ImageLoadError(
        f"expected a path, URL, base64 string, bytes, numpy array or PIL image, got {type(source).__name__}"
    )


def load_image(source: Any, index: int | None = None, timeout: float = 10.0) -> Image.Image:
    """Load one image as RGB from a path, URL, base64 string (or `data:image/` URI), bytes, numpy array
    (`(H, W)` or `(H, W, 3|4)`) or PIL image.

    This is the one validation of an image: `ImageLoadError` names the batch `index`, the source and the reason
    when the file is missing, truncated or not an image, the URL cannot be fetched, the array is not 2-D or 3-D
    with 3 or 4 channels, or the image has no pixels (a width or height of 0).

    Example:

    ```python
    >>> from modeling_capdec.processing_capdec import load_image
    >>> load_image("cat.png").mode  # doctest: +SKIP
    'RGB'
    ```
    """
    where = f"image {index} ({_describe(source)})" if index is not None else f"image {_describe(source)}"
    try:
        image = _open(source, timeout)
        image.load()  # decode now, so a truncated file fails here with its index
        if image.width == 0 or image.height == 0:
            raise ImageLoadError(f"it has no pixels (size {image.width}×{image.height})")
        return to_rgb(image)
    except ImageLoadError as error:
        raise ImageLoadError(f"Cannot load {where}: {error}.") from None
    except Exception as error:  # PIL's UnidentifiedImageError/OSError, URL errors, decoder errors
        raise ImageLoadError(f"Cannot load {where}: {type(error).__name__}: {error}") from error


def load_images(sources: Any) -> list[Image.Image]:
    """Load a batch (or one image) as RGB, reporting a bad entry by its index; an empty batch raises."""
    if isinstance(sources, (str, bytes, bytearray, os.PathLike, Image.Image, np.ndarray)):
        sources = [sources]
    sources = list(sources)
    if not sources:
        raise ImageLoadError("No images given: the list of images is empty.")
    return [load_image(source, index) for index, source in enumerate(sources)]


class CapDecProcessor(ProcessorMixin):
    r"""
    Joins a CLIP image processor, the decoder's tokenizer and the CLIP tokenizer.

    - `images=` → `pixel_values` for captioning (any PIL mode, paths or URLs; converted to RGB).
    - `text=` → `input_ids`, `attention_mask` in the decoder vocabulary (captions for training with
      `add_eos=True`, or a prompt to continue).
    - `clip_text=` → `clip_input_ids`, `clip_attention_mask` (the CLIP text input of text-only training).

    Example:

    ```python
    >>> from modeling_capdec import CapDecProcessor
    >>> processor = CapDecProcessor.from_clip_decoder_pretrained("openai/clip-vit-base-patch32", "gpt2")
    >>> batch = processor(images=["a.jpg", "b.png"], return_tensors="pt")
    >>> batch["pixel_values"].shape
    torch.Size([2, 3, 224, 224])
    >>> processor.batch_decode(model.generate(**batch))
    ```
    """

    _auto_class = "AutoProcessor"  # saving copies this file and writes auto_map (as register_for_auto_class)

    def __init__(self, image_processor=None, tokenizer=None, clip_tokenizer=None, **kwargs):
        if tokenizer is not None and tokenizer.pad_token is None:
            # Decoder-only LMs (GPT-2) have no pad token; batches pad with eos, masked out.
            tokenizer.pad_token = tokenizer.eos_token
        super().__init__(image_processor, tokenizer, clip_tokenizer, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "CapDecProcessor":
        """Load a saved processor (a folder or Hub id); a local folder must hold both tokenizers, and a CLIP
        tokenizer that turns out to be the decoder's (transformers' fallback for a missing `clip_tokenizer/`)
        raises instead of silently embedding captions with the wrong vocabulary."""
        folder = str(pretrained_model_name_or_path)
        if os.path.isdir(folder):
            if not kwargs.get("subfolder"):
                _check_saved_processor_folder(folder)
        elif folder.startswith((".", "/", "~")) or folder.count("/") > 1:  # a path, not a Hub id
            raise FileNotFoundError(f"Cannot load the CapDec processor: no folder {folder}.")
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        clip_tokenizer, tokenizer = processor.clip_tokenizer, processor.tokenizer
        if type(clip_tokenizer) is type(tokenizer) and clip_tokenizer.get_vocab() == tokenizer.get_vocab():
            raise ValueError(
                f"The CLIP tokenizer loaded from {folder} is the decoder's tokenizer: its "
                f"{CLIP_TOKENIZER_FOLDER}/ is missing or could not be read, and CapDec never uses a tokenizer of "
                "the other model."
            )
        return processor

    @classmethod
    def from_clip_decoder_pretrained(
        cls, clip_pretrained_model_name_or_path: str, decoder_pretrained_model_name_or_path: str, **kwargs
    ) -> "CapDecProcessor":
        """Build the processor from a CLIP checkpoint (image processor + tokenizer) and a decoder checkpoint
        (tokenizer), Hub names or local dirs. `kwargs` go to every `from_pretrained`."""
        return cls(
            image_processor=AutoImageProcessor.from_pretrained(clip_pretrained_model_name_or_path, **kwargs),
            tokenizer=AutoTokenizer.from_pretrained(decoder_pretrained_model_name_or_path, **kwargs),
            clip_tokenizer=AutoTokenizer.from_pretrained(clip_pretrained_model_name_or_path, **kwargs),
        )

    def __call__(
        self,
        images: Any = None,
        text: str | Sequence[str] | None = None,
        clip_text: str | Sequence[str] | None = None,
        return_tensors: str | None = "pt",
        add_eos: bool = False,
        padding: bool | str = True,
        **kwargs,
    ) -> BatchFeature:
        """Process images, decoder text and/or CLIP text into one `BatchFeature`.

        Args:
            images: one image or a list (PIL images, paths, URLs, bytes or arrays).
            text: decoder-side text (a prompt, or training captions with `add_eos=True`).
            clip_text: captions for the CLIP text encoder; truncated to CLIP's context length.
            return_tensors: "pt" (default), "np" or None.
            add_eos: append the decoder's eos token to each `text` (training targets end with it, so the
                model learns where to stop).
        """
        if images is None and text is None and clip_text is None:
            raise ValueError("CapDecProcessor needs images=, text= or clip_text=.")
        data: dict[str, Any] = {}
        if images is not None:
            data.update(self.image_processor(load_images(images), return_tensors=return_tensors))
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if add_eos:
                texts = [t + self.tokenizer.eos_token for t in texts]
            encoded = self.tokenizer(texts, padding=padding, return_tensors=return_tensors, **kwargs)
            data["input_ids"] = encoded["input_ids"]
            data["attention_mask"] = encoded["attention_mask"]
        if clip_text is not None:
            clip_texts = [clip_text] if isinstance(clip_text, str) else list(clip_text)
            encoded = self.clip_tokenizer(
                clip_texts,
                padding=padding,
                truncation=True,
                max_length=self.clip_max_length,
                return_tensors=return_tensors,
            )
            data["clip_input_ids"] = encoded["input_ids"]
            data["clip_attention_mask"] = encoded["attention_mask"]
        return BatchFeature(data, tensor_type=return_tensors)

    @property
    def clip_max_length(self) -> int:
        """CLIP's text context length (77 for OpenAI CLIP)."""
        length = self.clip_tokenizer.model_max_length
        return length if length and length < 10_000 else 77

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Decode generated caption ids to clean strings (special and pad tokens removed, stripped)."""
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)
        return [" ".join(t.split()) for t in texts]

    def decode(self, token_ids, skip_special_tokens: bool = True, **kwargs) -> str:
        return " ".join(
            self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs).split()
        )

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens: bool = True, **kwargs):
        """Used by the `image-text-to-text` pipeline."""
        return self.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask", "clip_input_ids", "clip_attention_mask"]


__all__ = [
    "CapDecProcessor",
    "ImageLoadError",
    "check_processor_matches_model",
    "load_image",
    "load_images",
    "to_rgb",
]
