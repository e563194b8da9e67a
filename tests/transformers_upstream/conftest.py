# The vendored modules hold mixins and helpers, not tests of their own: tests/test_transformers_generic.py runs them.
collect_ignore_glob = ["*.py", "*/*.py"]
