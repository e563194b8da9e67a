"""Train CapDec with the Hugging Face Trainer: text-only (noise-injected CLIP text embeddings) or supervised.

    # a recipe (JSON or YAML), optionally followed by overrides (`capdec-train` is the same command, installed)
    capdec-train configuration/coco_text_only.json
    capdec-train configuration/coco_text_only.json --max_steps 100 --output_dir outputs/try
    # everything on the command line
    capdec-train --clip_model openai/clip-vit-base-patch32 --decoder_model gpt2 \\
        --train_file captions.jsonl --caption_column caption --noise_variance 0.016 \\
        --output_dir out --num_train_epochs 10 --per_device_train_batch_size 40 --bf16
    # a corpus read as training consumes it (no conversion or CLIP pass in advance; needs --max_steps)
    capdec-train --clip_model openai/clip-vit-base-patch32 --decoder_model gpt2 --output_dir out \\
        --train_file 'shards/*.jsonl.gz' --streaming --max_steps 100000
    # several GPUs, and resuming
    accelerate launch --num_processes 8 train_capdec.py configuration/coco_text_only.json
    capdec-train configuration/coco_text_only.json --resume_from_checkpoint last
    # LoRA adapters in the decoder (pip install "capdec[lora]"), and a merged plain folder in out/merged
    capdec-train configuration/coco_text_only.json --lora_r 16 --merge_lora --output_dir out

The output folder is Hub-ready: weights, config and code (loads with `trust_remote_code` where this package is
not installed), the processor, and a README.md model card filled from `model_card.md`.
"""

from transformers import set_seed

from modeling_capdec.commands.recipes import parse_recipe_and_args
from modeling_capdec.evaluation.eval_sets import load_eval_set
from modeling_capdec.training.arguments import CapDecTrainingArguments, DataArguments, ModelArguments
from modeling_capdec.training.data import load_dataset_source
from modeling_capdec.training.launch import warn_if_single_process_launch
from modeling_capdec.training.lora import lora_from_arguments, merge_after_run
from modeling_capdec.training.trainer import (
    CapDecNoiseCallback,
    CapDecTrainer,
    check_resumed_noise,
    check_run_arguments,
    checkpoint_to_resume,
    collator_for_run,
    estimate_noise_for_run,
    finish_run,
    load_capdec_for_training,
    setup_logging,
    training_corpus,
)

ARGUMENT_CLASSES = (ModelArguments, DataArguments, CapDecTrainingArguments)


def main(argv: list[str] | None = None) -> CapDecTrainer:
    model_args, data_args, training_args = parse_recipe_and_args(ARGUMENT_CLASSES, argv, description=__doc__)
    setup_logging(training_args)
    warn_if_single_process_launch(
        training_args.world_size
    )  # `accelerate launch --cpu --num_processes N`: one
    check_run_arguments(data_args, training_args, model_args)
    resume_from_checkpoint = checkpoint_to_resume(training_args)
    set_seed(training_args.seed)
    # An eval set that cannot be read fails now, not after the corpus is embedded.
    eval_set = (
        load_eval_set(data_args.eval_source, **data_args.eval_set_kwargs()) if data_args.eval_source else None
    )

    # 1. Model and processor; the corpus; the collator that draws the noise (--noise_variance auto: ε from the data).
    model, processor = load_capdec_for_training(
        model_args.clip_model,
        model_args.decoder_model,
        model_args.init_from,
        train_decoder=model_args.train_decoder,
        **model_args.architecture(),
    )
    corpus = load_dataset_source(data_args.train_source, **data_args.source_kwargs())
    noise_estimate = estimate_noise_for_run(model, processor, corpus, data_args, training_args)
    collator = collator_for_run(processor, model, data_args, training_args, noise_estimate)
    # A resumed run measures its noise again: the checkpoint's, or an error.
    check_resumed_noise(collator, noise_estimate, resume_from_checkpoint)

    # 2. Data: cleaned, tokenised and embedded once (cached on disk), or with --streaming as training reads it.
    train_dataset, cleaning = training_corpus(corpus, model, processor, data_args, training_args)
    if model_args.lora_r:  # adapters in the decoder; the adapter names the folder of the model it adapts
        model = lora_from_arguments(
            model, processor, model_args, training_args.output_dir, save=training_args.should_save
        )

    # 3. Train (or continue from a checkpoint), save the Hub-ready folder, evaluate, write the model card.
    trainer = CapDecTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_set,
        data_collator=collator,
        processing_class=processor,
        callbacks=[CapDecNoiseCallback(collator)],
    )
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    finish_run(trainer, result, model_args, data_args, cleaning, eval_set)
    if model_args.merge_lora and training_args.should_save:
        merge_after_run(trainer, processor, training_args.output_dir)
    # Under `accelerate launch`, close the process group: a gloo group left to interpreter shutdown can abort a
    # finished process (SIGABRT, "terminate called without an active exception"). A no-op in one process.
    trainer.end()
    return trainer


if __name__ == "__main__":
    main()
