# The fetched open_clip modules are reference code, not tests: tests/test_clip_resnet.py loads them by path.
collect_ignore_glob = ["*.py"]
