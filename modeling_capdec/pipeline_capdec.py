"""The `image-to-text` pipeline for CapDec, saved beside the model so the Hub copy works with remote code."""

import logging
from typing import Any

import torch
from PIL import Image
from transformers import Pipeline

from .processing_capdec import ImageLoadError, check_processor_matches_model, load_image

logger = logging.getLogger(__name__)
ON_BAD_IMAGE = ("raise", "skip")


class CapDecImageToTextPipeline(Pipeline):
    """Caption images with a CapDec model, in batches.

    Inputs are paths, URLs, base64 strings, bytes, numpy arrays or PIL images of any mode (converted to RGB).
    A bad entry (missing, truncated, not an image, no pixels, ...) raises `ImageLoadError` naming its index in
    the call and the reason, and nothing is captioned. With `on_bad_image="skip"` the good images are captioned
    and each bad one gets `[{"generated_text": None, "error": "Cannot load image 3 (...): ..."}]` in its place
    (and a warning), so one broken file does not cost a large batch.

    Each image gets its own list of `num_return_sequences` captions (default 1), whatever the `batch_size`.
    Keyword arguments not listed below go to `model.generate` (`num_beams`, `do_sample`, `top_p`, ...; also
    `project_to_memory=True` and `memory_temperature` for a model with a text memory).

    `clip_rerank=K` (off by default) decodes K candidates per image (beam search with `num_beams=K` unless
    `num_beams` or `do_sample=True` is given) and keeps the `num_return_sequences` that CLIP finds closest to
    the image (cosine of the CLIP image and text embeddings, highest first; each result carries it as
    `clip_score`). The image embedding is the image's own, also with `project_to_memory=True`.
    `clip_rerank_tolerance=δ` (default 0) puts first, in the decoder's order (beam search: most probable first),
    the candidates within δ of the best CLIP score: CLIP tells the content apart but hardly the wording of
    paraphrases, which the decoder's ranking keeps fluent.

    Example:

    ```python
    >>> from transformers import pipeline
    >>> captioner = pipeline("image-to-text", model="path/or/hub-id", trust_remote_code=True)
    >>> captioner(["a.jpg", "b.png"], batch_size=8, max_new_tokens=30, num_beams=5)
    [[{'generated_text': 'a dog running on the beach'}], [{'generated_text': 'a cat on a sofa'}]]
    >>> captioner("a.jpg", clip_rerank=5)
    [{'generated_text': 'a brown dog running on the beach', 'clip_score': 0.3117}]
    ```
    """

    _load_processor = True
    _load_image_processor = False
    _load_tokenizer = False
    _load_feature_extractor = False
    _pipeline_calls_generate = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A processor of another model would caption with wrong token meanings: refuse it when the pipeline is built.
        if self.processor is not None:
            check_processor_matches_model(self.processor, self.model)

    def _sanitize_parameters(
        self,
        max_new_tokens: int | None = None,
        generate_kwargs: dict | None = None,
        prompt: str | None = None,
        timeout: float | None = None,
        on_bad_image: str | None = None,
        clip_rerank: int | None = None,
        clip_rerank_tolerance: float | None = None,
        **extra_generate_kwargs,
    ):
        preprocess_params: dict[str, Any] = {}
        if on_bad_image is not None:
            if on_bad_image not in ON_BAD_IMAGE:
                raise ValueError(f"on_bad_image must be one of {list(ON_BAD_IMAGE)}, got {on_bad_image!r}.")
            preprocess_params["on_bad_image"] = on_bad_image
        if prompt is not None:
            preprocess_params["prompt"] = prompt
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        generate_kwargs = dict(generate_kwargs or {})
        for key, value in extra_generate_kwargs.items():
            if key in generate_kwargs:
                raise ValueError(f"{key!r} is given twice: as a keyword and in generate_kwargs.")
            generate_kwargs[key] = value
        if max_new_tokens is not None:
            if "max_new_tokens" in generate_kwargs:
                raise ValueError("'max_new_tokens' is given twice: as a keyword and in generate_kwargs.")
            generate_kwargs["max_new_tokens"] = max_new_tokens
        forward_params: dict[str, Any] = {"generate_kwargs": generate_kwargs}
        if clip_rerank is not None:  # how many of the candidates to keep: reranking is on
            forward_params["keep"] = candidate_generate_kwargs(generate_kwargs, clip_rerank)
        if clip_rerank_tolerance is not None:
            check_rerank_tolerance(clip_rerank_tolerance, clip_rerank)
            forward_params["tolerance"] = clip_rerank_tolerance
        return preprocess_params, forward_params, {}

    def __call__(self, images: Any, **kwargs):
        """Caption one image (returns `[{"generated_text": ...}]`) or a list (returns one such list per image)."""
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("No images given: the list of images is empty.")
            # Carry each entry's index so a bad image is reported by its position in the call.
            indexed = [{"image": image, "index": index} for index, image in enumerate(images)]
            return super().__call__(indexed, **kwargs)
        return super().__call__({"image": images, "index": None}, **kwargs)

    def preprocess(
        self,
        inputs: dict,
        prompt: str | None = None,
        timeout: float | None = None,
        on_bad_image: str = "raise",
    ) -> dict:
        error = ""
        try:
            image = load_image(inputs["image"], inputs["index"], timeout=timeout or 10.0)
        except ImageLoadError as load_error:
            if on_bad_image != "skip":
                raise
            # A blank stand-in keeps the batch's shapes; its caption is discarded in postprocess.
            error, image = str(load_error), Image.new("RGB", (8, 8))
        model_inputs = self.processor.image_processor([image], return_tensors="pt")
        model_inputs = {"pixel_values": model_inputs["pixel_values"].to(self.dtype)}
        if prompt is not None:
            encoded = self.processor.tokenizer([prompt], return_tensors="pt")
            model_inputs["input_ids"] = encoded["input_ids"]
            model_inputs["attention_mask"] = encoded["attention_mask"]
        # A list of strings survives Pipeline's batching and unbatching item by item.
        model_inputs["image_error"] = [error]
        return model_inputs

    def _forward(
        self,
        model_inputs: dict,
        generate_kwargs: dict | None = None,
        keep: int | None = None,
        tolerance: float = 0.0,
    ) -> dict:
        model_inputs = dict(model_inputs)
        image_errors = model_inputs.pop("image_error")
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs or {}, return_dict_in_generate=False)
        with torch.no_grad():
            generated = self.model.generate(**model_inputs, **generate_kwargs)
        # generate returns the N sequences of each image one after another, (batch * N, length). Pipeline
        # unbatches along the first dimension, so group them (batch, N, length): each image keeps its own N
        # captions instead of the next image taking its second one.
        batch_size = model_inputs["pixel_values"].shape[0]
        generated = generated.reshape(batch_size, generated.shape[0] // batch_size, generated.shape[-1])
        outputs = {"generated_ids": generated, "image_error": image_errors}
        if keep is not None:  # clip_rerank: generate returned the candidates
            scores = self._clip_scores(model_inputs["pixel_values"], generated)
            order = clip_rerank_order(scores, tolerance)[:, :keep]
            outputs["generated_ids"] = generated.gather(
                1, order[:, :, None].expand(-1, -1, generated.shape[-1]).to(generated.device)
            )
            outputs["clip_scores"] = scores.gather(1, order)
        return outputs

    def _clip_scores(self, pixel_values: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        texts = self.processor.batch_decode(generated.reshape(-1, generated.shape[-1]))
        return clip_scores_of_captions(self.model, self.processor, pixel_values, texts).cpu()

    def postprocess(self, model_outputs: dict) -> list[dict[str, str | None]]:
        # Unbatched, the preprocess list itself arrives; batched, Pipeline hands over this image's item.
        error = model_outputs["image_error"]
        error = error[0] if isinstance(error, list) else error
        generated = model_outputs["generated_ids"]
        sequences = generated.reshape(-1, generated.shape[-1])  # (1, N, length) -> (N, length)
        if error:
            logger.warning("Skipped a bad image: %s", error)
            return [{"generated_text": None, "error": error}]
        results = [{"generated_text": text} for text in self.processor.batch_decode(sequences)]
        if "clip_scores" in model_outputs:
            for result, score in zip(results, model_outputs["clip_scores"].reshape(-1).tolist(), strict=True):
                result["clip_score"] = score
        return results


def clip_scores_of_captions(
    model: Any, processor: Any, pixel_values: torch.Tensor, captions: list[str]
) -> torch.Tensor:
    """CLIP's cosine between each image and each of its candidate captions (one image's after another), `(batch,
    candidates)`: the captions CLIP-tokenised by the processor, scored by `model.clip_scores`."""
    clip_inputs = processor.clip_tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
    return model.clip_scores(
        clip_inputs["input_ids"].to(model.device),
        clip_inputs["attention_mask"].to(model.device),
        pixel_values=pixel_values,
    )


def clip_rerank_order(scores: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """The order in which `clip_rerank` keeps the candidates, `(batch, candidates)` indices into `scores` (CLIP's
    cosines, candidates in the decoder's order): first those within `tolerance` of the image's best score, in the
    decoder's order, then the rest by score. Tolerance 0 is plain CLIP order (ties to the decoder's earlier one).

    Example:
        >>> clip_rerank_order(torch.tensor([[0.30, 0.32, 0.20]]))
        tensor([[1, 0, 2]])
        >>> clip_rerank_order(torch.tensor([[0.30, 0.32, 0.20]]), tolerance=0.05)
        tensor([[0, 1, 2]])
    """
    by_score = scores.argsort(dim=-1, descending=True, stable=True)
    rank = by_score.argsort(dim=-1)  # each candidate's place in CLIP's order
    near = scores >= scores.max(dim=-1, keepdim=True).values - tolerance
    position = torch.arange(scores.shape[-1], device=scores.device).expand_as(rank)
    return torch.where(near, position, scores.shape[-1] + rank).argsort(dim=-1, stable=True)


def check_rerank_tolerance(tolerance: Any, clip_rerank: Any) -> None:
    """Raise `ValueError` for a `clip_rerank_tolerance` that is not a number >= 0, or one given without
    `clip_rerank` (it would silently do nothing)."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"clip_rerank_tolerance is a CLIP cosine margin, a number >= 0; got {tolerance!r}.")
    if tolerance and clip_rerank is None:
        raise ValueError("clip_rerank_tolerance applies to clip_rerank's candidates: give clip_rerank too.")


def candidate_generate_kwargs(generate_kwargs: dict, clip_rerank: Any) -> int:
    """Set `generate_kwargs` (in place) to decode `clip_rerank` candidates per image; returns how many of them to
    keep (the `num_return_sequences` asked for, default 1). Raises `ValueError` naming a setting that cannot give
    that many candidates."""
    if isinstance(clip_rerank, bool) or not isinstance(clip_rerank, int) or clip_rerank < 2:
        raise ValueError(
            f"clip_rerank is the number of candidates CLIP chooses from, an integer >= 2; got {clip_rerank!r}."
        )
    keep = generate_kwargs.get("num_return_sequences") or 1
    if keep > clip_rerank:
        raise ValueError(
            f"num_return_sequences={keep} asks for more captions than the {clip_rerank} candidates of "
            f"clip_rerank={clip_rerank}."
        )
    if not generate_kwargs.get("do_sample", False):
        num_beams = generate_kwargs.setdefault("num_beams", clip_rerank)
        if num_beams < clip_rerank:
            raise ValueError(
                f"clip_rerank={clip_rerank} needs {clip_rerank} candidates, but beam search with "
                f"num_beams={num_beams} returns at most {num_beams}: raise num_beams or lower clip_rerank."
            )
    generate_kwargs["num_return_sequences"] = clip_rerank
    return keep


__all__ = ["CapDecImageToTextPipeline"]
