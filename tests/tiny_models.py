"""Tiny random CLIP / GPT-2 / tokenizers built offline in about a second, for tests and quick checks."""

import json
import os
import subprocess
import sys
from pathlib import Path

from transformers import CLIPConfig, CLIPTokenizer, GPT2Config, GPT2Tokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from demo.bpe_tokenizers import train_clip_tokenizer, train_gpt2_tokenizer
from modeling_capdec import CapDecConfig, CapDecForConditionalGeneration, CapDecProcessor

CAPTIONS = [
    "a dog running on the beach",
    "a cat sleeping on a red sofa",
    "two people riding horses in a field",
    "a man holding a surfboard near the ocean",
    "a plate of food with broccoli and rice",
    "a small boat on a calm lake",
    "a woman playing tennis on a court",
    "a bus parked on the side of a street",
    "a group of children playing soccer",
    "a bowl of fruit on a wooden table",
] * 3

IMAGE_SIZE = 32


def tiny_tokenizers(texts: list[str] = CAPTIONS) -> tuple[GPT2Tokenizer, CLIPTokenizer]:
    """Byte-level BPE tokenizers trained on `texts`: GPT-2 style for the decoder, CLIP style for CLIP."""
    return train_gpt2_tokenizer(texts, vocab_size=300), train_clip_tokenizer(texts, vocab_size=300)


def random_clip_config(vocab_size: int = 300) -> CLIPConfig:
    return CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=32,
            eos_token_id=1,
            bos_token_id=0,
            pad_token_id=1,
        ),
        vision_config=dict(
            image_size=IMAGE_SIZE,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        projection_dim=16,
    )


def tiny_gpt2_config(vocab_size: int = 300, eos_token_id: int = 0) -> GPT2Config:
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        # A wide initialisation, so that random models give input-dependent, varied captions to compare.
        initializer_range=0.5,
    )


def tiny_processor() -> CapDecProcessor:
    decoder_tokenizer, clip_tokenizer = tiny_tokenizers()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return CapDecProcessor(
        image_processor=image_processor, tokenizer=decoder_tokenizer, clip_tokenizer=clip_tokenizer
    )


def tiny_model(
    processor: CapDecProcessor | None = None,
    mapping_type: str = "transformer",
    seed: int = 0,
    **config_kwargs,
) -> CapDecForConditionalGeneration:
    import torch

    processor = processor or tiny_processor()
    clip_tok = processor.clip_tokenizer
    clip_config = random_clip_config(len(clip_tok))
    clip_config.text_config.eos_token_id = clip_tok.eos_token_id
    clip_config.text_config.bos_token_id = clip_tok.bos_token_id
    clip_config.text_config.pad_token_id = clip_tok.pad_token_id
    eos = processor.tokenizer.eos_token_id
    config = CapDecConfig(
        clip_config=clip_config,
        text_config=tiny_gpt2_config(len(processor.tokenizer), eos),
        mapping_type=mapping_type,
        **{
            "prefix_length": 4,
            "clip_length": 4,
            "num_mapping_layers": 2,
            "num_mapping_heads": 4,
            **config_kwargs,
        },
    )
    torch.manual_seed(seed)
    return CapDecForConditionalGeneration(config).eval()


def run_in_fresh_process(script: str, arguments: list[str], tmp_path: Path) -> dict:
    """Run `script` in a new interpreter with no PYTHONPATH, offline, and a modules cache of its own (the way a
    user who never installed this package loads a saved folder with `trust_remote_code`); returns the JSON
    object its last output line prints."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
