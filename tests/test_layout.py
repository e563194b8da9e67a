"""The package's boundaries as a user meets them: what `import modeling_capdec` loads, what `pip install .`
installs (commands, the packaged metric, the model-card template), and what a saved folder carries."""

import json
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("datasets", "pyarrow", "pycocoevalcap", "evaluate", "transformers.trainer")


def _run(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_importing_the_package_loads_no_training_or_evaluation_code():
    result = _run(
        f"""
        import json, sys
        import modeling_capdec
        heavy = {HEAVY_MODULES!r}
        loaded = sorted(m for m in sys.modules if m in heavy or m.split(".")[0] in heavy
                        or m.startswith(("modeling_capdec.training.", "modeling_capdec.evaluation.")))
        before = loaded
        collator = modeling_capdec.CapDecDataCollator  # a lazy name imports its layer on access
        print(json.dumps({{"loaded": before, "collator": collator.__module__,
                          "now": "modeling_capdec.training.collator" in sys.modules}}))
        """,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    assert report["collator"] == "modeling_capdec.training.collator" and report["now"]


def test_unknown_attribute_is_an_attribute_error():
    import modeling_capdec

    with pytest.raises(AttributeError, match="has no attribute 'CapDecTrainerz'"):
        modeling_capdec.CapDecTrainerz  # noqa: B018


def test_nothing_but_processing_tests_import_processing():
    """`processing/` is a set of corpus commands: the package, the tests' helpers and the demo do not use it."""
    offenders = []
    for path in [*REPO.glob("modeling_capdec/**/*.py"), *REPO.glob("tests/*.py"), *REPO.glob("demo/*.py")]:
        if path.name in ("test_processing.py", "test_layout.py"):
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.lstrip().startswith(("from processing", "import processing")):
                offenders.append(f"{path.relative_to(REPO)}: {line.strip()}")
    assert offenders == []


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """`pip install .` (no dependencies: the test environment has them) into a folder outside the checkout."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            ".",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(build)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return target


def _run_installed(installed: Path, command: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(installed / "bin" / command), "--help"],
        cwd=cwd,  # outside the checkout: only the installed copy can be imported
        env={**os.environ, "PYTHONPATH": str(installed)},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("command", ["capdec-train", "capdec-evaluate", "capdec-estimate-noise"])
def test_installed_commands_print_their_help(installed, command, tmp_path):
    result = _run_installed(installed, command, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"usage: {command} [RECIPE{{.json,.yaml,.yml}}]" in result.stdout
    assert "--output_dir" in result.stdout or "--eval_file" in result.stdout


@pytest.mark.parametrize("script", ["train_capdec.py", "evaluate_capdec.py"])
def test_checkout_scripts_print_their_help(script):
    result = subprocess.run(
        [sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"usage: {script} [RECIPE" in result.stdout


def test_installed_app_command_prints_its_help(installed, tmp_path):
    result = _run_installed(installed, "capdec-app", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage: capdec-app") and "--model" in result.stdout


def test_installed_package_holds_its_data_and_the_packaged_metric_loads(installed, tmp_path):
    result = _run(
        """
        import os, evaluate, modeling_capdec
        INSTALLED = os.environ["PYTHONPATH"]
        from modeling_capdec.evaluation import CAPTION_METRIC_PATH
        from modeling_capdec.training.model_card import MODEL_CARD_TEMPLATE
        assert modeling_capdec.__file__.startswith(INSTALLED), modeling_capdec.__file__
        assert MODEL_CARD_TEMPLATE.read_text().startswith("---"), MODEL_CARD_TEMPLATE
        metric = evaluate.load(CAPTION_METRIC_PATH)
        print(metric.compute(predictions=["a dog runs"], references=[["a dog runs"]], metrics=["BLEU"])["BLEU-1"])
        """,
        cwd=tmp_path,
        PYTHONPATH=str(installed),
        HF_EVALUATE_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_MODULES_CACHE=str(tmp_path / "modules"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    "module",
    [
        "processing.karpathy",
        "processing.flickrstyle",
        "processing.text_corpus",
        "processing.gender_balance",
        "processing.pseudo_captions",
        "demo.run_demo",
        "demo.shapes_world",
        "demo.train_tiny_clip",
        "demo.app",
        "demo.estimate_noise_study",
        "demo.memory_projection_study",
        "demo.rerank_study",
        "modeling_capdec.commands.estimate_noise",
        "benchmarks.bench_captioning",
        "benchmarks.bench_embedding",
        "benchmarks.bench_memory",
        "benchmarks.bench_training",
        "benchmarks.bench_lora",
    ],
)
def test_every_command_prints_its_help(module, monkeypatch, capsys):
    """A user's first command: `python -m <command> --help` (an unescaped % in a help string crashes it).
    Run in this process with runpy, as `python -m` runs it, to spare a torch import per command."""
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    assert exit_info.value.code in (0, None)
    output = capsys.readouterr().out
    assert output.startswith("usage:") and "--" in output
