"""The README's code runs: every Python block executes with tiny local models in place of the Hub names, and every
`capdec-train` / `capdec-evaluate` command line (README and configuration/README) parses with today's flags."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_capdec.commands.recipes import parse_recipe_and_args
from modeling_capdec.evaluation.arguments import EvaluateArguments
from tests.clip_resnet_reference import TINY_MODEL_CFG, write_open_clip_folder
from tests.tiny_models import tiny_model, tiny_processor
from train_capdec import ARGUMENT_CLASSES

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", REPO / "configuration" / "README.md"]


def _blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def _command_lines(text: str) -> list[list[str]]:
    """Each shell command of a bash block, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            commands.append(shlex.split(line))
    return commands


@pytest.fixture(scope="module")
def hub_stand_ins(tmp_path_factory, images) -> dict[str, str]:
    """Tiny local folders and files standing in for what the README names on the Hub and on disk."""
    root = tmp_path_factory.mktemp("readme")
    processor = tiny_processor()
    model = tiny_model(processor, seed=3)
    model.clip.save_pretrained(root / "clip")
    processor.image_processor.save_pretrained(root / "clip")
    processor.clip_tokenizer.save_pretrained(root / "clip")
    model.decoder.save_pretrained(root / "gpt2")
    processor.tokenizer.save_pretrained(root / "gpt2")
    for name, image in zip(("a.jpg", "b.png", "photo.jpg", "dog.jpg"), images, strict=False):
        image.save(root / name)
    # open_clip's RN50x4 repo: a tiny ResNet CLIP in its layout, with the tiny CLIP tokenizer's vocabulary.
    text_cfg = {**TINY_MODEL_CFG["text_cfg"], "vocab_size": len(processor.clip_tokenizer)}
    write_open_clip_folder(
        root / "rn50x4",
        {
            **TINY_MODEL_CFG,
            "vision_cfg": {**TINY_MODEL_CFG["vision_cfg"], "image_size": 32},
            "text_cfg": text_cfg,
        },
        clip_tokenizer=processor.clip_tokenizer,
        with_open_clip=False,
    )
    return {
        "openai/clip-vit-base-patch32": str(root / "clip"),
        "gpt2": str(root / "gpt2"),
        "timm/resnet50x4_clip.openai": str(root / "rn50x4"),
        "root": str(root),
    }


def test_readme_python_blocks_run(hub_stand_ins):
    """The blocks run in order in one program, as a reader pastes them (later ones use earlier ones' names)."""
    blocks = _blocks(REPO / "README.md", "python")
    assert blocks
    code = "\n".join(blocks)
    for hub_name in ("openai/clip-vit-base-patch32", "gpt2", "timm/resnet50x4_clip.openai"):
        code = code.replace(f'"{hub_name}"', json.dumps(hub_stand_ins[hub_name]))
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=hub_stand_ins["root"],  # relative paths of the examples ("out", "a.jpg") land here
        # HF_HOME: where the RN50x4 stand-in is converted, not the user's cache.
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(REPO),
            "HF_HOME": str(Path(hub_stand_ins["root"]) / "hf_home"),
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"README python blocks:\n{code}\n{result.stderr[-3000:]}"


def test_documented_commands_parse_with_todays_flags():
    parsed = 0
    for document in DOCUMENTS:
        for block in _blocks(document, "bash"):
            for command in _command_lines(block):
                arguments = _arguments_of(command)
                if arguments is None:
                    continue
                classes, argv = arguments
                argv = [a for a in argv if a != "..."]  # "capdec-train ... --resume_from_checkpoint x"
                argv = [a.replace("$eps", "0.004") for a in argv]  # the noise sweep's shell loop
                if argv and argv[0].endswith((".json", ".yaml")):
                    argv[0] = str(REPO / argv[0])  # recipes are named from the repository root
                if classes is ARGUMENT_CLASSES:
                    argv.append("--use_cpu")  # --bf16 is refused at parse time on a machine without a GPU
                parse_recipe_and_args(classes, argv)
                parsed += 1
    assert parsed >= 6  # the README's training and evaluation commands are found at all


def _arguments_of(command: list[str]) -> tuple[tuple, list[str]] | None:
    """The argument classes and arguments of a documented training or evaluation command, else None."""
    if command[:1] == ["capdec-train"]:
        return ARGUMENT_CLASSES, command[1:]
    if command[:1] == ["capdec-evaluate"]:
        return (EvaluateArguments,), command[1:]
    for script, classes in (
        ("train_capdec.py", ARGUMENT_CLASSES),
        ("evaluate_capdec.py", (EvaluateArguments,)),
    ):
        if script in command:
            return classes, command[command.index(script) + 1 :]
    return None
