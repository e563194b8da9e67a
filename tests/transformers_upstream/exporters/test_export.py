"""Stand-in for transformers' `tests/exporters/test_export.py`, which the 5.24.0 sdist does not ship.

capdec does not run the torch.export tests: `ModelTesterMixin` only needs the base class to exist.
"""


class ExportTesterMixin:
    pass
