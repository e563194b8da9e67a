"""The training layer (`pip install capdec[train]`): everything text-only training needs beyond the model.

- `noise`: CapDec's noise injection and the per-example noise streams;
- `collator`: `CapDecDataCollator`, the one place training noise is drawn;
- `data`: corpus loading, cleaning and cached CLIP embeddings (`prepare_training_dataset`);
- `streaming`: `--streaming`, the corpus cleaned, tokenised and counted as training reads it;
- `arguments`: `ModelArguments`, `DataArguments`, `CapDecTrainingArguments`;
- `trainer`: `CapDecTrainer`, `CapDecNoiseCallback`, `load_capdec_for_training`;
- `model_card`: the card a run writes.

Importing this package imports none of them.
"""
