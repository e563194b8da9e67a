"""Trains the tiny CLIP of the offline shapes-world demo and saves it with its processor.

    python -m demo.train_tiny_clip --output_dir demo/tiny_clip

builds the shapes world (seed 0, the demo's world) in memory, trains a BPE tokenizer on its captions,
trains a CLIP contrastively on its `clip_pairs` (image-caption pairs over every colour+shape pair, the
held-out ones included, as web-scale CLIP has seen them; `--clip_sees_heldout false` trains on the
captioner's `train_pairs` instead) for a fixed number of steps with the logit scale pinned at 100, evaluates it on `test_seen` and `test_heldout`, and writes the checkpoint and
`training_report.json` to `--output_dir`. Same arguments and thread count, same bytes.

The image tower is a tiny OpenAI CLIP ResNet (`--image_tower resnet`, the default: the paper's RN50x4
design at width 8, one bottleneck per stage, `modeling_capdec.CLIPResNetModel`) or a tiny ViT
(`--image_tower vit`, transformers' `CLIPModel`). Measured on 2 cores at 500 steps, the ResNet tells
shapes apart far better for the same time per step (seen scenes: 0.99 against the ViT's 0.82): a
convolution sees a shape the same wherever it lands, while the ViT's 8-pixel patches cut a 6-pixel
shape differently at every position.

The aim is real CLIP's geometry, not only its accuracy, because CapDec's noise is sized by it: real
CLIP ViT-B/32 gives an image and its own caption a cosine of about 0.3 in 512 dimensions, and one
direction tells every image embedding from every caption embedding (the modality gap). Hence:

- 512-dimensional embeddings, as ViT-B/32's. CapDec's noise variance moves a text embedding by about
  sqrt(d * eps), so the same eps means the same thing only at the same width.
- The temperature pinned at 100 (real CLIP's final value); learnt, it ends near 19 after a short run.
- A penalty on the mean image-caption cosine above `gap_cosine` (0.3). In real CLIP the gap comes
  from the two encoders' different initial cones, and contrastive training at low temperature keeps
  it (Liang et al. 2022, "Mind the Gap"); a small world trained for many epochs closes it anyway
  (without the penalty the former 64-d CLIP ended at cosine 0.94, and a 512-d run with hard negatives
  stood at 0.51, still rising, after 200 of 1200 steps). The contrastive loss scores captions against
  each other, so it hardly sees a common offset of all caption embeddings: the penalty keeps one
  while the ranking is learnt.
- Hard-negative captions and mirrored images (see `train`), for shapes and two-object relations.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    CLIPModel,
    CLIPTokenizer,
    HfArgumentParser,
    PreTrainedModel,
    get_cosine_schedule_with_warmup,
    set_seed,
)

from demo.bpe_tokenizers import train_clip_tokenizer
from demo.shapes_world import (
    HELDOUT_COMBINATIONS,
    SHAPES,
    Scene,
    build_shapes_world,
    caption_scene,
    num_paraphrases,
)
from demo.tiny_clip_model import (
    evaluate_tiny_clip,
    hard_negative_scene,
    mirror_scene,
    scene_id_lookup,
    soft_clip_loss,
    tiny_clip_config,
    tiny_clip_processor,
    tiny_clip_resnet_config,
)
from modeling_capdec.modeling_capdec import CLIPResNetModel


@dataclass
class TinyClipArguments:
    output_dir: str = field(default="demo/tiny_clip", metadata={"help": "Where to save the CLIP and report."})
    seed: int = field(default=0, metadata={"help": "Seed of the model's initialisation and the batches."})
    world_seed: int = field(default=0, metadata={"help": "Seed of the shapes world (the demo uses 0)."})
    num_train_texts: int = field(
        default=20_000, metadata={"help": "Text-only captions of the world (tokenizer)."}
    )
    num_train_pairs: int = field(default=8_000, metadata={"help": "Image-caption pairs to train on."})
    clip_sees_heldout: bool = field(
        default=True,
        metadata={
            "help": "Train on the world's clip_pairs, which include the held-out colour+shape pairs (as real CLIP "
            "has seen them); false: on train_pairs, which the captioners also train on and which exclude them."
        },
    )
    num_test: int = field(
        default=1000,
        metadata={
            "help": "Images per test split for the report; the demo's 300 per split are the first 300."
        },
    )
    image_size: int = field(default=48, metadata={"help": "Side of the world's images, in pixels."})
    image_tower: str = field(
        default="resnet",
        metadata={
            "help": "`resnet` (a tiny OpenAI CLIP ResNet) or `vit` (transformers' CLIP ViT).",
            "choices": ["resnet", "vit"],
        },
    )
    resnet_width: int = field(
        default=8, metadata={"help": "ResNet stem width (stage i has width * 2**i * 4)."}
    )
    resnet_layers: list[int] = field(
        default_factory=lambda: [1, 1, 1, 1],
        metadata={"help": "ResNet bottlenecks per stage (four numbers)."},
    )
    resnet_input_size: int = field(
        default=64,
        metadata={"help": "Side the processor resizes images to for the ResNet (a multiple of 32)."},
    )
    patch_size: int = field(
        default=8, metadata={"help": "ViT patch side; smaller sees shapes better, costs more."}
    )
    hidden_size: int = field(default=96, metadata={"help": "Width of the text tower (and of the ViT)."})
    num_layers: int = field(
        default=2, metadata={"help": "Transformer layers of the text tower (and of the ViT)."}
    )
    projection_dim: int = field(default=512, metadata={"help": "Size of the joint embedding space."})
    logit_scale: float = field(default=100.0, metadata={"help": "Fixed inverse temperature (not learnt)."})
    max_steps: int = field(default=700, metadata={"help": "Optimisation steps."})
    batch_size: int = field(default=128, metadata={"help": "Pairs per step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay of matrices."})
    warmup_steps: int = field(default=60, metadata={"help": "Linear warm-up before the cosine decay."})
    gap_cosine: float = field(
        default=0.3,
        metadata={"help": "Mean image-caption cosine above which training is penalised (0: no penalty)."},
    )
    gap_weight: float = field(default=100.0, metadata={"help": "Weight of that squared-hinge penalty."})
    hard_negatives: bool = field(
        default=True, metadata={"help": "Add each caption with its objects swapped or shape changed."}
    )
    flip_augmentation: bool = field(
        default=True, metadata={"help": "Mirror half the images left-right, and their captions."}
    )
    num_threads: int = field(
        default=2,
        metadata={"help": "torch CPU threads (2-core machine alone: 0.39 s a step with 2, 0.55 s with 1)."},
    )
    log_every: int = field(default=100, metadata={"help": "Steps between loss lines."})
    eval_every: int = field(
        default=0, metadata={"help": "Steps between evaluations on test_seen (0: only at the end)."}
    )


def processor_image_size(args: TinyClipArguments) -> int:
    """The side the image tower takes: the world's own for the ViT, `resnet_input_size` for the ResNet."""
    return args.resnet_input_size if args.image_tower == "resnet" else args.image_size


def build_model(args: TinyClipArguments, tokenizer) -> tuple[PreTrainedModel, torch.optim.Optimizer, Any]:
    """The CLIP (temperature pinned), AdamW without decay on biases and norms, and the cosine schedule."""
    if args.image_tower == "resnet":
        config = tiny_clip_resnet_config(
            tokenizer,
            input_size=args.resnet_input_size,
            width=args.resnet_width,
            layers=args.resnet_layers,
            text_hidden_size=args.hidden_size,
            text_layers=args.num_layers,
            projection_dim=args.projection_dim,
            logit_scale=args.logit_scale,
        )
        model = CLIPResNetModel(config)
    elif args.image_tower == "vit":
        config = tiny_clip_config(
            tokenizer,
            image_size=args.image_size,
            patch_size=args.patch_size,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            projection_dim=args.projection_dim,
            logit_scale=args.logit_scale,
        )
        model = CLIPModel(config)
    else:
        raise ValueError(f"--image_tower must be `resnet` or `vit`, got {args.image_tower!r}.")
    model.logit_scale.requires_grad_(False)
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    return model, optimizer, get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)


def train(
    args: TinyClipArguments,
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    tokenizer: CLIPTokenizer,
    pixel_values: torch.Tensor,
    scenes: list[Scene],
    evaluate_seen: Callable[[], dict],
) -> list[float]:
    """The contrastive training loop; returns the loss of every step.

    Each step gives each image a random paraphrase of its scene (so no template is tied to an image),
    mirrors half the images with their scenes (`flip_augmentation`), and adds one hard-negative
    caption per image (`hard_negatives`): the image's own caption with its two objects swapped, or
    with its lone object's shape changed. In-batch negatives almost never differ from the positive
    by the order of two objects alone, so without them relations stay at chance.
    """
    generator = torch.Generator().manual_seed(args.seed)
    excluded = () if args.clip_sees_heldout else HELDOUT_COMBINATIONS
    order = torch.randperm(len(scenes), generator=generator)
    cursor = 0
    model.train()
    started = time.perf_counter()
    losses = []
    for step in range(1, args.max_steps + 1):
        if cursor + args.batch_size > len(order):
            order, cursor = torch.randperm(len(scenes), generator=generator), 0
        batch = order[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        draws = torch.rand(3, len(batch), generator=generator)
        flips = (draws[0] < 0.5) & args.flip_augmentation
        pixels = torch.where(flips[:, None, None, None], pixel_values[batch].flip(-1), pixel_values[batch])
        batch_scenes = [
            mirror_scene(scenes[i]) if flip else scenes[i]
            for i, flip in zip(batch.tolist(), flips.tolist(), strict=True)
        ]
        templates = [
            int(u * num_paraphrases(scene)) for u, scene in zip(draws[1].tolist(), batch_scenes, strict=True)
        ]
        text_scenes = list(batch_scenes)
        if args.hard_negatives:
            # The same template as the positive, so that only the objects' order or a shape differs.
            offsets = (draws[2] * (len(SHAPES) - 1)).long() + 1
            text_scenes += [
                hard_negative_scene(s, int(k), exclude=excluded)
                for s, k in zip(batch_scenes, offsets, strict=True)
            ]
            templates += templates
        captions = [caption_scene(scene, t) for scene, t in zip(text_scenes, templates, strict=True)]
        # Padding is <|endoftext|> and the text model pools at the first one; causal attention keeps
        # the padding after it out of the pooled state, so no attention mask is needed.
        input_ids = tokenizer(captions, padding=True, return_tensors="pt")["input_ids"]
        outputs = model(input_ids=input_ids, pixel_values=pixels)
        scene_ids = scene_id_lookup(text_scenes)
        loss = soft_clip_loss(outputs.logits_per_image, scene_ids[: len(batch)], scene_ids)
        if args.gap_cosine > 0:
            # The contrastive loss barely sees a common offset of one modality, so this penalty holds
            # the image-caption cosine near real CLIP's (see the module docstring).
            own = outputs.logits_per_image[:, : len(batch)].diagonal() / args.logit_scale
            loss = loss + args.gap_weight * torch.relu(own.mean() - args.gap_cosine) ** 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % args.log_every == 0 or step == args.max_steps:
            elapsed = time.perf_counter() - started
            print(
                f"step {step:5d}  loss {np.mean(losses[-args.log_every :]):.4f}  {elapsed:6.1f}s", flush=True
            )
        if args.eval_every and step % args.eval_every == 0 and step < args.max_steps:
            metrics = evaluate_seen()
            shown = {
                k: v for k, v in metrics.items() if k.startswith(("recall", "zero", "cent", "cos_image_c"))
            }
            print("  " + "  ".join(f"{k} {v:.3f}" for k, v in shown.items()), flush=True)
            model.train()
    return losses


def main(args: TinyClipArguments) -> dict:
    started = time.perf_counter()
    torch.set_num_threads(args.num_threads)
    set_seed(args.seed)

    world = build_shapes_world(
        seed=args.world_seed,
        num_train_texts=args.num_train_texts,
        num_train_pairs=0 if args.clip_sees_heldout else args.num_train_pairs,
        num_clip_pairs=args.num_train_pairs if args.clip_sees_heldout else 0,
        num_test=args.num_test,
        image_size=args.image_size,
    )
    pairs = world["clip_pairs" if args.clip_sees_heldout else "train_pairs"]
    scenes = [Scene.from_records(objects) for objects in pairs["objects"]]

    tokenizer = train_clip_tokenizer(list(world["train_text"]["caption"]) + list(pairs["caption"]))
    processor = tiny_clip_processor(tokenizer, processor_image_size(args))
    pixel_values = processor(images=list(pairs["image"]), return_tensors="pt")["pixel_values"]
    test_scenes = {
        split: [Scene.from_records(objects) for objects in world[split]["objects"]]
        for split in ("test_seen", "test_heldout")
    }

    model, optimizer, schedule = build_model(args, tokenizer)
    num_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"tiny CLIP: {num_parameters / 1e6:.3f}M trainable parameters, {len(tokenizer)} tokens")
    train_started = time.perf_counter()
    losses = train(
        args,
        model,
        optimizer,
        schedule,
        tokenizer,
        pixel_values,
        scenes,
        lambda: evaluate_tiny_clip(
            model, processor, list(world["test_seen"]["image"]), test_scenes["test_seen"]
        ),
    )
    train_seconds = time.perf_counter() - train_started

    report = {"arguments": asdict(args), "num_parameters": num_parameters, "train_seconds": train_seconds}
    # Wall times on a shared machine mean little without its load (1-minute average, at the end).
    report["load_average"] = os.getloadavg()[0]
    report["final_loss"] = float(np.mean(losses[-args.log_every :]))
    for split in ("test_seen", "test_heldout"):
        report[split] = evaluate_tiny_clip(model, processor, list(world[split]["image"]), test_scenes[split])
    report["total_seconds"] = time.perf_counter() - started

    output_dir = Path(args.output_dir)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    (output_dir / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({key: report[key] for key in ("test_seen", "test_heldout")}, indent=2))
    print(f"saved to {output_dir} after {report['total_seconds']:.0f}s ({train_seconds:.0f}s training)")
    return report


if __name__ == "__main__":
    main(HfArgumentParser(TinyClipArguments).parse_args_into_dataclasses()[0])
