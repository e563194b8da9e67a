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


def requested_process_count(launcher_argv: Sequence[str]) -> int | None:
    """The `--num_processes` of an `accelerate launch` command line (None when it gives none).

    Example:

    ```python
    >>> requested_process_count(["accelerate", "launch", "--cpu", "--num_processes", "2", "train_capdec.py"])
    2
    >>> requested_process_count(["accelerate", "launch", "--num-processes=4", "train_capdec.py"])
    4
    ```
    """
    for index, argument in enumerate(launcher_argv):
        for flag in ("--num_processes", "--num-processes"):
            if argument == flag and index + 1 < len(launcher_argv):
                value = launcher_argv[index + 1]
            elif argument.startswith(flag + "="):
                value = argument.split("=", 1)[1]
            else:
                continue
            return int(value) if value.isdigit() else None
    return None


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
