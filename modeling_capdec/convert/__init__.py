"""Converters from other checkpoint layouts to CapDec's Hub-ready folders.

They stay outside the four Hub files (configuration, modeling, processing, pipeline), which must import only
torch, transformers, PIL and numpy. `original` reads the authors' CapDec / ClipCap `.pt` state dicts:

```python
>>> from modeling_capdec.convert.original import convert_original_checkpoint
>>> convert_original_checkpoint("coco_prefix-009.pt", "capdec-coco")  # doctest: +SKIP
```
"""
