"""What the console commands (`capdec-train` = `train_capdec.py`, `capdec-evaluate` = `evaluate_capdec.py`)
share: `recipes.parse_recipe_and_args`, one parser for a recipe file plus command-line overrides."""
