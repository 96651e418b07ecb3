"""Every `python -m exemplar_tf...` command in README.md runs, as written plus flags that shorten it.

The commands are read from the README itself, so a command that is renamed or loses a flag fails here. Flags
appended after a command override its own (absl: the last value wins). Datasets the machine cannot download
(STL-10, CIFAR-10) are replaced by the embedded demo images for the training flagfiles.
"""
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_TRAINING = ["--steps=3", "--checkpoint_every=3", "--num_seeds=64", "--seeds_per_image=8", "--nce_m=8",
                 "--batch_size=8", "--knn_every=0", "--knn_max_examples=60", "--noprogress",
                 "--train_minutes=0"]  # --steps as given, not a recipe's time budget
OFFLINE = ["--source=demo", "--split=train", "--knn_source=demo_labelled"]  # for flagfiles of downloadable datasets
SHORTER = {  # module -> flags appended to keep the smoke run short
    "exemplar_tf.train": TINY_TRAINING,
    "exemplar_tf.preview": [],
    "exemplar_tf.export": [],
    "exemplar_tf.evaluate": ["--max_train=150", "--max_test=60", "--c_values=1.0"],
    "exemplar_tf.knn": ["--max_train=150", "--max_test=60"],
    "exemplar_tf.retrieve": ["--max_index=40", "--max_queries=3"],
    "exemplar_tf.finetune": ["--steps=4", "--batch_size=8"],
    "exemplar_tf.match": ["--num_images=1", "--families=rotation", "--strengths=1", "--max_regions=40"],
}


def readme_commands() -> list[str]:
    """The `python -m exemplar_tf.<module> ...` commands of README.md's bash blocks, in order."""
    text = open(os.path.join(REPO, "README.md")).read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                part = part.split(" #")[0].strip()
                if part.startswith("python -m exemplar_tf."):
                    commands.append(part)
    return commands


def _argv(command: str) -> list[str]:
    argv = shlex.split(command)
    module = argv[2]
    argv = [sys.executable] + argv[1:] + SHORTER[module]
    flagfile = next((a for a in argv if a.startswith("--flagfile=")), "")
    if flagfile and not flagfile.endswith("demo.cfg"):
        argv += OFFLINE
    return argv


def _run(command: str, cwd) -> subprocess.CompletedProcess:
    result = subprocess.run(_argv(command), cwd=cwd, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_readme_documents_every_program():
    modules = {shlex.split(c)[2] for c in readme_commands()}
    assert modules == set(SHORTER), f"README runs {sorted(modules)}; this test knows {sorted(SHORTER)}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A fresh directory with the repository's flagfiles, where the README's main command has run."""
    work = tmp_path_factory.mktemp("readme")
    os.symlink(os.path.join(REPO, "flags"), work / "flags")
    main_command = readme_commands()[0]
    assert main_command == "python -m exemplar_tf.train --flagfile=flags/demo.cfg"
    result = _run(main_command, work)
    assert "Export:" in result.stdout and "TensorBoard:" in result.stdout
    assert (work / "savedmodels" / "demo" / "1" / "saved_model.pb").exists()
    return work


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("command", readme_commands()[1:])
def test_readme_command_runs(workdir, command):
    command = command.replace("runs/<name>", "runs/demo")
    if "--oxford=/data/oxford" in command:  # the README's example folder: a small Oxford-layout sequence here
        from test_match_benchmark import write_oxford_folder

        from exemplar_tf.matching import images

        image, _ = images.shrink(images.demo_images(1)[0], 160)
        write_oxford_folder(str(workdir / "oxford" / "scene"), image)
        command = command.replace("--oxford=/data/oxford", f"--oxford={workdir / 'oxford'}")
    _run(command, workdir)
