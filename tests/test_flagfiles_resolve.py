"""Flagfiles and run directories resolve as they did before the flags were derived from TrainConfig's fields.

tests/data/resolved_flagfiles.json was written by the hand-written flags of train.py (its "_about" says how): every
committed flagfile's resolved lines, the resolved config of run directories written by that code, and the flags
of `python -m exemplar_tf.train`. Fields added since are absent from it and must resolve to their defaults.
"""
import dataclasses
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest
from absl import flags
from absl.testing import flagsaver

from exemplar_tf import train
from exemplar_tf.training import rundir
from exemplar_tf.training.config import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(REPO, "tests", "data", "resolved_flagfiles.json")) as _file:
    GOLDEN = json.load(_file)
# Fields added after the golden file was written: {name: their flagfile line at the default}.
ADDED = {"momentum_encoder": "--momentum_encoder=0.0", "bank_sharding": "--bank_sharding=replicated",
         "lr_schedule": "--lr_schedule=step", "lr_warmup_steps": "--lr_warmup_steps=0", "data_service": "--data_service=",
         "bn_groups": "--bn_groups=1", "head_hidden_dim": "--head_hidden_dim=0", "low_res_size": "--low_res_size=0",
         "low_res_until": "--low_res_until=0.0", "scale_max": "--scale_max=0.0", "neighbours": "--neighbours=0",
         "neighbours_from": "--neighbours_from=0.5", "train_minutes": "--train_minutes=0.0"}


def _without_added(lines):
    """The lines of the fields the golden file knows; the added fields' lines must be their defaults."""
    added = {line[2:].split("=", 1)[0]: line for line in lines if line[2:].split("=", 1)[0] in ADDED}
    assert added == {name: line for name, line in ADDED.items()}
    return [line for line in lines if line[2:].split("=", 1)[0] not in ADDED]


def _golden(kind, path):
    """The golden lines, less --overwrite: flags.cfg no longer records it (what one command did, not a setting of the
    run; given back to resume, it started the run over)."""
    return [line for line in GOLDEN[kind][path] if not line.startswith("--overwrite=")]


def _existing(path):
    if not os.path.exists(os.path.join(REPO, path)):
        pytest.skip(f"{path} is no longer in the repository")
    return os.path.join(REPO, path)


@pytest.mark.parametrize("path", sorted(GOLDEN["flagfiles"]))
def test_every_flagfile_resolves_to_the_same_lines_as_before(path):
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["train", f"--flagfile={_existing(path)}"])
        config = train.config_from_flags()
    assert _without_added(rundir.config_lines(config)) == _golden("flagfiles", path)


def _relative_run_dir(lines, path):
    run_dir = os.path.relpath(os.path.dirname(os.path.join(REPO, path)), REPO)
    return [f"--run_dir={run_dir}" if line.startswith("--run_dir=") else line for line in lines]


@pytest.mark.parametrize("path", sorted(GOLDEN["run_flagfiles"]))
def test_run_directories_written_by_the_old_code_load_to_the_same_config(path):
    config = rundir.config_from_flagfile(_existing(path))
    assert _relative_run_dir(_without_added(rundir.config_lines(config)), path) == _golden("run_flagfiles", path)
    assert config.momentum_encoder == 0.0  # written before the field existed: the default (off)


@pytest.mark.parametrize("path", sorted(GOLDEN["run_flagfiles"]))
def test_an_old_run_flagfile_reads_the_same_through_absl_and_through_rundir(path):
    """train.py --flagfile=<run_dir>/flags.cfg (resume by hand) and rundir.config_from_flagfile (export, serving)
    agree on every field."""
    path = _existing(path)
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["train", f"--flagfile={path}"])
        via_absl = train.config_from_flags()
    via_rundir = rundir.config_from_flagfile(path)
    assert dataclasses.replace(via_absl, run_dir=via_rundir.run_dir) == via_rundir


def test_an_old_run_directory_resumes_unchanged(tmp_path):
    """The old flags.cfg (no --momentum_encoder line) is no mismatch for the same settings: the keys it does not
    name are not compared."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(_existing(sorted(GOLDEN["run_flagfiles"])[0])) as old:
        (run_dir / rundir.FLAGFILE).write_text(old.read())
    config = rundir.read_run_config(str(run_dir))
    assert "momentum_encoder" not in rundir.read_flagfile(str(run_dir / rundir.FLAGFILE))
    assert rundir.check_reuse(config, overwrite=False) is None
    assert rundir.check_reuse(dataclasses.replace(config, steps=config.steps + 100), overwrite=False) is None


def _flags_of_train_program():
    """{name: {type, default, enum}} of the training program's flags, read from --helpxml."""
    out = subprocess.run([sys.executable, "-m", "exemplar_tf.train", "--helpxml"], capture_output=True, text=True,
                         timeout=120, cwd=REPO).stdout
    root = ElementTree.fromstring(out[out.index("<?xml"):])
    ours = [flag for flag in root.iter("flag") if flag.findtext("file", "").endswith(os.path.join("exemplar_tf",
                                                                                                 "train.py"))]
    return {flag.findtext("name"): {"type": flag.findtext("type"), "default": flag.findtext("default"),
                                    "enum": [e.text for e in flag.findall("enum_value")] or None} for flag in ours}


def test_the_training_program_has_the_same_flags_and_defaults_plus_the_added_fields():
    now = _flags_of_train_program()
    added = {name: now.pop(name, None) for name in ADDED}
    # The one deliberate change of a default since: --precision=auto (issue 35; float32 on CPUs without bf16).
    assert now.pop("precision") == {"type": "string enum", "default": "auto",
                                    "enum": ["auto", "float32", "mixed_bfloat16", "mixed_float16"]}
    assert now == {name: flag for name, flag in GOLDEN["train_flags"].items() if name != "precision"}
    assert added == {"momentum_encoder": {"type": "float", "default": "0.0", "enum": None},
                     "bank_sharding": {"type": "string enum", "default": "replicated", "enum": ["replicated", "sharded"]},
                     "lr_schedule": {"type": "string enum", "default": "step", "enum": ["step", "cosine"]},
                     "lr_warmup_steps": {"type": "int", "default": "0", "enum": None},
                     "data_service": {"type": "string", "default": "", "enum": None},
                     "bn_groups": {"type": "int", "default": "1", "enum": None},
                     "head_hidden_dim": {"type": "int", "default": "0", "enum": None},
                     "low_res_size": {"type": "int", "default": "0", "enum": None},
                     "low_res_until": {"type": "float", "default": "0.0", "enum": None},
                     "scale_max": {"type": "float", "default": "0.0", "enum": None},
                     "neighbours": {"type": "int", "default": "0", "enum": None},
                     "neighbours_from": {"type": "float", "default": "0.5", "enum": None},
                     "train_minutes": {"type": "float", "default": "0.0", "enum": None}}
    assert set(now) | set(added) | {"precision"} == {field.name for field in dataclasses.fields(TrainConfig)}
