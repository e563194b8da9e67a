"""A hand-made mutation audit of the modules mutmut's run does not cover (model, pipeline, data, metrics,
processing, trainer): apply one behaviour-changing mutation, run the tests that should notice it, restore the file.
Prints one line per mutation, `killed` or `SURVIVED`. Not part of the suite (pytest does not collect it):

    .venv/bin/python tests/mutation_audit.py        # ~10 minutes on 2 cores; do not run other tests meanwhile
"""

import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
M = [
    (
        "modeling_capdec/modeling_capdec.py",
        "return F.normalize(embeds, dim=-1) if normalize else embeds",
        "return embeds",
        "image embeds not normalised",
        ["tests/test_user_behaviours.py"],
    ),
    (
        "modeling_capdec/modeling_capdec.py",
        "position_ids = torch.cat([prefix_positions, position_ids + prefix_length], dim=-1)",
        "position_ids = torch.cat([prefix_positions, position_ids], dim=-1)",
        "caption positions not shifted past the prefix (forward)",
        ["tests/test_model_behaviour.py"],
    ),
    (
        "modeling_capdec/modeling_capdec.py",
        "logits = logits[:, :-1]",
        "logits = logits[:, 1:]",
        "logits misaligned with labels",
        ["tests/test_modeling_capdec.py"],
    ),
    (
        "modeling_capdec/modeling_capdec.py",
        "num_items_in_batch = (labels != -100).sum().clamp(min=1)",
        "num_items_in_batch = labels.numel()",
        "loss divided by padded count",
        ["tests/test_modeling_capdec.py"],
    ),
    (
        "modeling_capdec/modeling_capdec.py",
        "input_ids.repeat_interleave(repeat, dim=0)",
        "input_ids.repeat(repeat, 1)",
        "prompt rows paired with the wrong image",
        ["tests/test_user_behaviours.py"],
    ),
    (
        "modeling_capdec/modeling_capdec.py",
        "self.clip.eval()  # frozen CLIP",
        "pass  # frozen CLIP",
        "CLIP dropout on in training",
        ["tests/test_modeling_capdec.py"],
    ),
    (
        "modeling_capdec/modeling_capdec.py",
        "        self.clip.requires_grad_(False)",
        "        pass",
        "CLIP not frozen",
        ["tests/test_user_behaviours.py"],
    ),
    (
        "modeling_capdec/pipeline_capdec.py",
        "generated = generated.reshape(batch_size, generated.shape[0] // batch_size, generated.shape[-1])",
        "generated = generated.reshape(generated.shape[0] // batch_size, batch_size, generated.shape[-1]).transpose(0, 1)",
        "pipeline groups N captions across images",
        ["tests/test_pipeline_capdec.py"],
    ),
    (
        "modeling_capdec/training/data.py",
        "ids = ids[:max_caption_tokens]",
        "ids = ids[: max_caption_tokens - 1]",
        "truncation one token short",
        ["tests/test_training_data.py", "tests/test_user_behaviours.py"],
    ),
    (
        "modeling_capdec/training/data.py",
        'output["input_ids"][position] = list(ids) + [tokenizer.eos_token_id]',
        'output["input_ids"][position] = list(ids)',
        "no eos target after captions",
        ["tests/test_training_data.py", "tests/test_user_behaviours.py"],
    ),
    (
        "modeling_capdec/training/data.py",
        'caption = " ".join(caption.split())',
        "caption = caption.strip()",
        "inner whitespace not normalised",
        ["tests/test_training_data.py"],
    ),
    (
        "modeling_capdec/training/data.py",
        "embeds[rows] = batch.float().cpu()",
        "embeds[start : start + len(rows)] = batch.float().cpu()",
        "embeddings written in length order, not corpus order",
        ["tests/test_training_data.py", "tests/test_benchmarks.py", "tests/test_user_behaviours.py"],
    ),
    (
        "modeling_capdec/evaluation/metrics.py",
        'scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])',
        'scores["CIDEr"] = float(Cider().compute_score(gts, res)[0]) / 10',
        "CIDEr on another scale",
        ["tests/test_evaluation_metrics.py"],
    ),
    (
        "modeling_capdec/evaluation/metrics.py",
        'return "".join(" " if unicodedata.category(char) in ("Cc", "Zl", "Zp") else char for char in caption)',
        "return caption",
        "line separators shift captions between images",
        ["tests/test_evaluation_metrics.py"],
    ),
    (
        "modeling_capdec/processing_capdec.py",
        'background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))',
        'background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))',
        "transparency composited on black",
        ["tests/test_processing_capdec.py"],
    ),
    (
        "modeling_capdec/training/trainer.py",
        "self.collator.set_epoch(math.floor(state.epoch + 1e-6) if state.epoch else 0)",
        "self.collator.set_epoch(0)",
        "noise stuck at epoch 0",
        ["tests/test_user_behaviours.py"],
    ),
    (
        "modeling_capdec/training/streaming.py",
        "stream.shuffle(seed=seed, buffer_size=shuffle_buffer)",
        "stream.shuffle(seed=None, buffer_size=shuffle_buffer)",
        "streaming shuffle not seeded (resume not exact)",
        ["tests/test_training_streaming.py::test_resumed_streamed_run_matches_the_uninterrupted_one"],
    ),
    (
        "modeling_capdec/training/streaming.py",
        "self.stream.set_epoch(pass_index)",
        "self.stream.set_epoch(0)",
        "every pass over the stream in the same order",
        [
            "tests/test_training_streaming.py::test_streamed_sources_and_a_seeded_shuffle_that_changes_each_pass"
        ],
    ),
    (
        "modeling_capdec/training/streaming.py",
        'report.dropped_not_text += reason == "not text"',
        'report.dropped_empty += reason == "not text"',
        "streamed cleaning counts non-text captions as empty",
        [
            "tests/test_training_streaming.py::test_stream_cleans_like_the_non_streaming_path_and_counts_as_it_reads"
        ],
    ),
    (
        "modeling_capdec/training/streaming.py",
        "training_args.accelerator_config.dispatch_batches = False",
        "pass",
        "streamed batches dispatched by process 0 (fails for batches of different lengths)",
        [
            "tests/test_training_streaming.py::test_two_processes_read_the_stream_and_train_on_disjoint_batches"
        ],
    ),
]
for path, old, new, what, tests in M:
    f = REPO / path
    text = f.read_text()
    if text.count(old) != 1:
        print(f"NOT APPLIED ({text.count(old)} matches): {what}")
        continue
    f.write_text(text.replace(old, new))
    try:
        r = subprocess.run(
            [str(REPO / ".venv/bin/python"), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        f.write_text(text)
    print(("killed  " if r.returncode != 0 else "SURVIVED") + f"  {what}  ({path})", flush=True)
