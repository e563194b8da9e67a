"""The `image-to-text` pipeline for CapDec, saved beside the model so the Hub copy works with remote code."""

from typing import Any

import torch
from transformers import Pipeline

from .processing_capdec import load_image


class CapDecImageToTextPipeline(Pipeline):
    """Caption images with a CapDec model, in batches.

    Inputs are paths, URLs, bytes, numpy arrays or PIL images of any mode (converted to RGB); a bad entry raises
    an error that names its index in the call. Keyword arguments not listed below go to `model.generate`
    (`num_beams`, `do_sample`, `top_p`, ...).

    Example:

    ```python
    >>> from transformers import pipeline
    >>> captioner = pipeline("image-to-text", model="path/or/hub-id", trust_remote_code=True)
    >>> captioner(["a.jpg", "b.png"], batch_size=8, max_new_tokens=30, num_beams=5)
    [[{'generated_text': 'a dog running on the beach'}], [{'generated_text': 'a cat on a sofa'}]]
    ```
    """

    _load_processor = True
    _load_image_processor = False
    _load_tokenizer = False
    _load_feature_extractor = False
    _pipeline_calls_generate = True

    def _sanitize_parameters(
        self,
        max_new_tokens: int | None = None,
        generate_kwargs: dict | None = None,
        prompt: str | None = None,
        timeout: float | None = None,
        **extra_generate_kwargs,
    ):
        preprocess_params: dict[str, Any] = {}
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
        return preprocess_params, {"generate_kwargs": generate_kwargs}, {}

    def __call__(self, images: Any, **kwargs):
        """Caption one image (returns `[{"generated_text": ...}]`) or a list (returns one such list per image)."""
        if isinstance(images, (list, tuple)):
            # Carry each entry's index so a bad image is reported by its position in the call.
            indexed = [{"image": image, "index": index} for index, image in enumerate(images)]
            return super().__call__(indexed, **kwargs)
        return super().__call__({"image": images, "index": None}, **kwargs)

    def preprocess(self, inputs: dict, prompt: str | None = None, timeout: float | None = None) -> dict:
        image = load_image(inputs["image"], inputs["index"], timeout=timeout or 10.0)
        model_inputs = self.processor.image_processor([image], return_tensors="pt")
        model_inputs = {"pixel_values": model_inputs["pixel_values"].to(self.dtype)}
        if prompt is not None:
            encoded = self.processor.tokenizer([prompt], return_tensors="pt")
            model_inputs["input_ids"] = encoded["input_ids"]
            model_inputs["attention_mask"] = encoded["attention_mask"]
        return model_inputs

    def _forward(self, model_inputs: dict, generate_kwargs: dict | None = None) -> dict:
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs or {}, return_dict_in_generate=False)
        with torch.no_grad():
            return {"generated_ids": self.model.generate(**model_inputs, **generate_kwargs)}

    def postprocess(self, model_outputs: dict) -> list[dict[str, str]]:
        texts = self.processor.batch_decode(model_outputs["generated_ids"])
        return [{"generated_text": text} for text in texts]


__all__ = ["CapDecImageToTextPipeline"]
