"""Fetch transformers' own generic test mixins for the installed version from its source distribution on PyPI.

`make test` runs this once (it is a set-up step, like `pip install`): the wheel does not ship transformers'
`tests/`, and copying them into this repository would put code from elsewhere in it. The files land beside this
script and are git-ignored; `tests/test_transformers_generic.py` imports them.

    python tests/transformers_upstream/fetch.py          # no-op when the files of the installed version are here
"""

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

HERE = Path(__file__).resolve().parent
FILES = {"tests/test_modeling_common.py": "test_modeling_common.py",
         "tests/test_configuration_common.py": "test_configuration_common.py", "LICENSE": "LICENSE"}  # fmt: skip
VERSION_FILE = HERE / ".version"


def fetch(version: str = transformers.__version__) -> None:
    if (
        VERSION_FILE.exists()
        and VERSION_FILE.read_text() == version
        and all((HERE / f).exists() for f in FILES.values())
    ):
        return
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        command += ["--no-build-isolation", f"transformers=={version}", "-d", folder]
        result = subprocess.run(command, capture_output=True, text=True)
        archives = list(Path(folder).glob("transformers-*.tar.gz"))
        if result.returncode != 0 or not archives:
            raise SystemExit(
                f"Cannot download the transformers {version} source distribution:\n{result.stderr}"
            )
        with tarfile.open(archives[0]) as archive:
            root = archive.getnames()[0].split("/")[0]
            for inside, name in FILES.items():
                member = archive.extractfile(f"{root}/{inside}")
                if member is None:
                    raise SystemExit(f"transformers {version}'s source distribution has no {inside}.")
                (HERE / name).write_bytes(member.read())
    VERSION_FILE.write_text(version)
    print(f"fetched transformers {version}'s test mixins into {HERE}")


if __name__ == "__main__":
    fetch()
