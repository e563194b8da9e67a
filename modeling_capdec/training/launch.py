"""How the run was launched: catch `accelerate launch --cpu --num_processes N`, which starts one process.

accelerate 1.15 starts several CPU processes only through mpirun; without an MPI host file its "simple" launcher
runs the script once, and says nothing. The script then trains alone at a fraction of the expected speed (and
with 1/N of the expected global batch). `torchrun` through `--multi_gpu`, with Trainer's `--use_cpu`, does start N
CPU processes (a gloo process group): that is the command the warning gives.
"""

import logging
import os
import shlex
import sys
from collections.abc import Sequence

logger = logging.getLogger(__name__)


def _flag_value(argv: Sequence[str], names: Sequence[str]) -> str | None:
    for index, argument in enumerate(argv):
        for flag in names:
            if argument == flag and index + 1 < len(argv):
                return argv[index + 1]
            if argument.startswith(flag + "="):
                return argument.split("=", 1)[1]
    return None


def _config_file_process_count(launcher_argv: Sequence[str]) -> int | None:
    """`num_processes` of the accelerate config the launch read: `--config_file`, else the default one."""
    path = _flag_value(launcher_argv, ("--config_file", "--config-file"))
    if path is None:
        try:
            from accelerate.commands.config.config_args import default_config_file
        except ImportError:
            return None
        path = default_config_file
    try:
        import yaml

        with open(path, encoding="utf-8") as file:
            config = yaml.safe_load(file) or {}  # accelerate writes YAML (JSON is YAML too)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    value = config.get("num_processes") if isinstance(config, dict) else None
    return value if isinstance(value, int) else None


def requested_process_count(launcher_argv: Sequence[str]) -> int | None:
    """The processes an `accelerate launch` command line asks for: its `--num_processes`, else its accelerate
    config's `num_processes` (`--config_file`, or the default config); None when neither says.

    Example:

    ```python
    >>> requested_process_count(["accelerate", "launch", "--cpu", "--num_processes", "2", "train_capdec.py"])
    2
    >>> requested_process_count(["accelerate", "launch", "--num-processes=4", "train_capdec.py"])
    4
    ```
    """
    value = _flag_value(launcher_argv, ("--num_processes", "--num-processes"))
    if value is None:
        return _config_file_process_count(launcher_argv)
    return int(value) if value.isdigit() else None


def _parent_command_line() -> list[str]:
    try:
        import psutil  # an accelerate dependency

        return psutil.Process(os.getppid()).cmdline()
    except Exception:  # no psutil, or the parent is gone or not ours to read: nothing to compare with
        return []


def single_process_launch_warning(
    world_size: int, launcher_argv: Sequence[str] | None = None, script_argv: Sequence[str] | None = None
) -> str | None:
    """The warning for a run launched by `accelerate launch` with `--num_processes N > 1` that runs as one
    process, with the command that starts N CPU processes; None when the launch is what it says.

    `launcher_argv` defaults to the parent process's command line (the `accelerate launch` process), read only
    when accelerate's simple launcher started this process (it sets `ACCELERATE_USE_CPU`).

    Example:

    ```python
    >>> launcher = "accelerate launch --cpu --num_processes 2 train_capdec.py r.json".split()
    >>> print(single_process_launch_warning(1, launcher, ["train_capdec.py", "r.json"]))  # doctest: +ELLIPSIS
    accelerate launch was asked for 2 processes but started 1 ...
    ```
    """
    if world_size > 1:
        return None
    if launcher_argv is None:
        if "ACCELERATE_USE_CPU" not in os.environ:  # not started by accelerate's simple launcher
            return None
        launcher_argv = _parent_command_line()
    requested = requested_process_count(launcher_argv)
    if not requested or requested <= 1:
        return None
    script_argv = list(sys.argv if script_argv is None else script_argv)
    if "--use_cpu" not in script_argv:
        script_argv.append("--use_cpu")
    command = shlex.join(
        ["accelerate", "launch", "--multi_gpu", "--num_processes", str(requested), *script_argv]
    )
    return (
        f"accelerate launch was asked for {requested} processes but started 1 (with --cpu, accelerate starts "
        "several CPU processes only through mpirun). This run trains in one process. To train in "
        f"{requested} CPU processes, run:\n    {command}"
    )


def warn_if_single_process_launch(world_size: int) -> None:
    """Log `single_process_launch_warning` for this process, if any (`train_capdec.py` calls it at start).

    Example:

    ```python
    >>> warn_if_single_process_launch(training_args.world_size)  # doctest: +SKIP
    ```
    """
    message = single_process_launch_warning(world_size)
    if message:
        logger.warning(message)


__all__ = ["requested_process_count", "single_process_launch_warning", "warn_if_single_process_launch"]
