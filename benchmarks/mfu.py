"""Model FLOPs of a CapDec training step and model FLOPs utilisation (MFU) against the device's datasheet peak.

What is counted, per caption (`training_flops_per_caption`): the model's useful work, the same for every loop
however it pads, so that MFU compares loops by what they achieve, not by what they waste.

- A dense layer costs 2 FLOPs per weight per position it runs on (a multiply and an add), forward.
- Attention adds, per layer and forward, `2 * 2 * seq ** 2 * hidden` (the scores `Q K^T` and the weighted sum
  `A V`, counted over the full square, as PaLM's appendix B counts it, although GPT-2's causal half is masked).
- A trained part costs 3 × its forward (forward, gradient of the input, gradient of the weights); a frozen part that
  gradients flow through (the decoder under `--no_train_decoder`) costs 2 × (no weight gradient). CLIP costs 0:
  the embeddings are precomputed. Biases, LayerNorms, softmax, the embedding lookups, the loss and the optimizer
  are not counted (they are a few percent at most).
- Positions: the decoder runs `prefix_length` + the caption's real tokens (eos included; padding is not useful
  work); its LM head (768 × 50257 for GPT-2) runs only on the caption positions (the model asks the decoder for
  those logits only); the mapper's linear layer runs once per caption, its transformer on `clip_length +
  prefix_length` positions.

MFU = captions/s × FLOPs per caption / peak FLOP/s of the device for the dtype the matrix products run in.
"""

import torch

from modeling_capdec import CapDecForConditionalGeneration

# Dense (no sparsity) peak FLOP/s from NVIDIA's datasheets: the H100 and H200 datasheets print the tensor-core
# numbers "with sparsity" (BF16 1,979 TFLOP/s on H100 SXM and H200 SXM, 1,513 on H100 PCIe): dense is half. The
# A100 datasheet: BF16 312 TFLOP/s dense (624 sparse), FP32 19.5. FP32 is the non-tensor-core peak (67 TFLOP/s
# on H100 SXM and H200, 51 on H100 PCIe): PyTorch's float32 matmuls do not use TF32 unless
# `torch.backends.cuda.matmul.allow_tf32` (or `set_float32_matmul_precision`) says so.
# Keys are matched against `torch.cuda.get_device_name()` in order; the first match wins.
PEAK_TFLOPS: tuple[tuple[tuple[str, ...], dict[str, float]], ...] = (
    (("H200",), {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0}),
    (("H100", "PCIe"), {"bfloat16": 756.0, "float16": 756.0, "float32": 51.0}),
    (("H100", "HBM3"), {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0}),  # H100 SXM5
    (("A100",), {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5}),
)


def peak_flops(device: str, dtype: str) -> float | None:
    """Peak FLOP/s of this CUDA device for `dtype` from `PEAK_TFLOPS`, or None (a CPU, or a GPU not in the table:
    MFU is then reported as n/a rather than guessed)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for keys, peaks in PEAK_TFLOPS:
        if all(key in name for key in keys):
            return peaks[dtype] * 1e12 if dtype in peaks else None
    return None


def _dense_weights(module: torch.nn.Module) -> int:
    """Weight elements of the matrix products in `module` (Linear and GPT-2's Conv1D), biases left out."""
    total = 0
    for sub in module.modules():
        if isinstance(sub, torch.nn.Linear) or type(sub).__name__ == "Conv1D":
            total += sub.weight.numel()
    return total


def training_flops_per_caption(model: CapDecForConditionalGeneration, caption_tokens: float) -> float:
    """Model FLOPs of one training step per caption of `caption_tokens` real tokens (the module docstring says what
    is counted); supports the transformer mapper with a GPT-2 style decoder (`decoder.transformer.h` blocks)."""
    config = model.config
    hidden = config.decoder_hidden_size
    prefix, clip_length = config.prefix_length, config.clip_length
    decoder_positions = prefix + caption_tokens
    blocks = model.decoder.transformer.h
    decoder_forward = 2 * _dense_weights(blocks) * decoder_positions
    decoder_forward += 4 * len(blocks) * decoder_positions**2 * hidden
    decoder_forward += 2 * model.get_output_embeddings().weight.numel() * caption_tokens
    mapper = model.clip_project
    mapper_forward = 2 * mapper.linear.weight.numel()
    mapper_positions = clip_length + prefix
    mapper_forward += 2 * _dense_weights(mapper.transformer) * mapper_positions
    mapper_forward += 4 * len(mapper.transformer.layers) * mapper_positions**2 * hidden
    decoder_trained = any(param.requires_grad for param in model.decoder.parameters())
    return 3 * mapper_forward + (3 if decoder_trained else 2) * decoder_forward


def mfu(captions_per_s: float, flops_per_caption: float, peak: float | None) -> float | None:
    """Achieved model FLOP/s over the peak, or None without a peak."""
    return None if peak is None else captions_per_s * flops_per_caption / peak
