"""Fetch open_clip's `ModifiedResNet` (the reference for CapDec's CLIP ResNet) from its wheel on PyPI.

`make test` runs this once (a set-up step, like `pip install`). open_clip itself is not a dependency: it imports
torchvision, which does not import with the CPU torch wheel used here. The test needs only two of its plain-torch
modules, `open_clip/modified_resnet.py` and the `open_clip/utils.py` it imports (with a stand-in for the one
torchvision class that one imports); they land beside this script, git-ignored, with open_clip's LICENSE.

    python tests/open_clip_upstream/fetch.py          # no-op when the files of the pinned version are here
"""

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSION = "3.3.0"  # pinned: the reference must not change under the test
FILES = {
    "open_clip/modified_resnet.py": "modified_resnet.py",
    "open_clip/utils.py": "utils.py",
    f"open_clip_torch-{VERSION}.dist-info/licenses/LICENSE": "LICENSE",
}
VERSION_FILE = HERE / ".version"
FETCH_COMMAND = "python tests/open_clip_upstream/fetch.py"


def fetch(version: str = VERSION) -> None:
    if (
        VERSION_FILE.exists()
        and VERSION_FILE.read_text() == version
        and all((HERE / name).exists() for name in FILES.values())
    ):
        return
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:"]
        command += [f"open_clip_torch=={version}", "-d", folder]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(folder).glob("open_clip_torch-*.whl"))
        if result.returncode != 0 or not wheels:
            raise SystemExit(f"Cannot download the open_clip_torch {version} wheel:\n{result.stderr}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for inside, name in FILES.items():
                try:
                    (HERE / name).write_bytes(wheel.read(inside))
                except KeyError:
                    raise SystemExit(f"open_clip_torch {version}'s wheel has no {inside}.") from None
    VERSION_FILE.write_text(version)
    print(f"fetched open_clip {version}'s ModifiedResNet into {HERE}")


if __name__ == "__main__":
    fetch()
