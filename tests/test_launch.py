# ruff: noqa: F811  (the fixture imported from test_train_capdec is, as pytest wants, a parameter of the same name)
"""`accelerate launch --cpu --num_processes 2` runs one process (accelerate's behaviour): the run says so and
gives the command that starts two."""

import subprocess
import sys
from pathlib import Path

from modeling_capdec.training.launch import requested_process_count, single_process_launch_warning
from tests.test_train_capdec import REPO, SUBPROCESS_ENV, cli, parts  # noqa: F401 (fixture)


def test_the_warning_gives_the_command_that_works():
    launcher = "accelerate launch --cpu --num_processes=3 train_capdec.py recipe.json".split()
    message = single_process_launch_warning(
        1, launcher, ["train_capdec.py", "recipe.json", "--max_steps", "5"]
    )
    assert "asked for 3 processes but started 1" in message
    assert message.endswith(
        "accelerate launch --multi_gpu --num_processes 3 train_capdec.py recipe.json --max_steps 5 --use_cpu"
    )
    assert single_process_launch_warning(3, launcher, ["train_capdec.py"]) is None  # it did start 3
    assert (
        single_process_launch_warning(1, "accelerate launch --num_processes 1 train_capdec.py".split(), [])
        is None
    )
    assert requested_process_count(["accelerate", "launch", "--num_processes", "two"]) is None


def test_the_process_count_may_come_from_the_accelerate_config(tmp_path):
    config = tmp_path / "cpu.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\nuse_cpu: true\nnum_processes: 4\n")
    launcher = ["accelerate", "launch", "--config_file", str(config), "train_capdec.py"]
    assert requested_process_count(launcher) == 4
    assert "asked for 4 processes but started 1" in single_process_launch_warning(
        1, launcher, ["train_capdec.py"]
    )
    # The command line wins over the config; a config that cannot be read says nothing.
    assert requested_process_count([*launcher[:2], "--num_processes", "1", *launcher[2:]]) == 1
    assert (
        requested_process_count(["accelerate", "launch", "--config_file", str(tmp_path / "none.yaml")])
        is None
    )


def test_accelerate_launch_cpu_two_processes_warns(parts, tmp_path):
    accelerate = str(Path(sys.executable).parent / "accelerate")
    command = [accelerate, *"launch --cpu --num_processes 2 train_capdec.py".split()]
    command += cli(parts, tmp_path / "out", *"--max_steps 1 --save_strategy no".split())
    result = subprocess.run(
        command, cwd=REPO, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert output.count("asked for 2 processes but started 1") == 1, output[-3000:]
    assert "accelerate launch --multi_gpu --num_processes 2 train_capdec.py --clip_model" in output
