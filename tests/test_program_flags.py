"""Every program refuses a bad command line the same way: one stderr line `Error: ...`, exit status 2, before
TensorFlow is imported (so in well under a second, not after TensorFlow's 5-60 s start), and the flags the programs
share follow one rule (exemplar_tf.errors.cli). No TensorFlow in this file: it stays fast."""
import os
import subprocess
import sys
import time

import pytest
from absl import flags

from exemplar_tf import errors
from exemplar_tf.errors import cli
from exemplar_tf.training import config as cfg
from exemplar_tf.training import settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAMS = ("train", "knn", "evaluate", "export", "retrieve", "finetune", "match", "preview")
# A bad value of each program's: an enum where it has one, else a number that is not one.
BAD_VALUE = {"train": "--method=foo", "knn": "--k=abc", "evaluate": "--protocol=foo", "export": "--version=x",
             "retrieve": "--codes=int8", "finetune": "--steps=many", "match": "--cnn_output=foo",
             "preview": "--preset=foo"}
# Flags that satisfy each program's required flags and cross-flag rules (none of the files needs to exist: the
# command line is refused before anything is read).
REQUIRED = {"train": [], "knn": ["--savedmodel=x", "--train=demo_labelled", "--test=demo_labelled"],
            "evaluate": ["--savedmodel=x", "--dataset=demo_labelled"], "export": ["--run_dir=x"],
            "retrieve": ["--savedmodel=x", "--index=x", "--queries=x", "--out=x"],
            "finetune": ["--savedmodel=x", "--dataset=demo_labelled", "--labels_per_class=2"], "match": [],
            "preview": []}
# Runs the program as `python -m` does, then says on stdout whether TensorFlow was imported.
RUNNER = ("import runpy, sys\n"
          "sys.argv = [sys.argv[1]] + sys.argv[2:]\n"
          "try:\n"
          "    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
          "finally:\n"
          "    print('tensorflow imported' if 'tensorflow' in sys.modules else 'no tensorflow')\n")


def run_program(program, *args):
    """(completed process, wall seconds, TensorFlow imported) of `python -m exemplar_tf.<program> args`."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", RUNNER, f"exemplar_tf.{program}", *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seconds = time.monotonic() - start
    return done, seconds, done.stdout.strip().splitlines()[-1] == "tensorflow imported"


def assert_refused(program, *args, line=None):
    done, seconds, imported_tensorflow = run_program(program, *args)
    assert done.returncode == errors.EXIT_INPUT_ERROR, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert line is None or lines[0] == f"Error: {line}", done.stderr
    assert not imported_tensorflow
    assert seconds < 10, f"{program} took {seconds:.1f} s to refuse {args}"
    return lines[0]


@pytest.mark.parametrize("program", PROGRAMS)
def test_every_program_refuses_a_bad_command_line_in_one_line_with_status_2_before_tensorflow(program, tmp_path):
    assert_refused(program, BAD_VALUE[program])
    assert_refused(program, "--no_such_flag=1", line="Unknown command line flag 'no_such_flag'")
    missing = tmp_path / "missing.cfg"
    assert_refused(program, f"--flagfile={missing}", line=f"--flagfile={missing}: No such file or directory")
    assert_refused(program, *REQUIRED[program], "stray",
                   line="unexpected arguments ['stray'] (every setting is a --flag)")
    flagfile = tmp_path / "bad.cfg"  # a value from a flagfile is checked like one on the command line
    flagfile.write_text(BAD_VALUE[program] + "\n")
    assert_refused(program, f"--flagfile={flagfile}")


def test_the_messages_name_flag_and_problem():
    assert_refused("train", "--method=foo", line="--method=foo is not one of exemplar, npid")
    assert_refused("knn", "--k=abc", line="--k=abc is not an integer")
    assert_refused("knn", "--tau=x", line="--tau=x is not a number")
    assert_refused("knn", line="--savedmodel, --train and --test are required")
    assert_refused("finetune", "--savedmodel=x", line="--dataset is required")
    assert_refused("match", "--synthetic=maybe", line="--synthetic=maybe is not true or false")
    assert_refused("match", "--nosynthetic=3", line="--nosynthetic=3 does not take an argument")


# --- the shared flags: one rule wherever they appear -----------------------------------------------------------------

SHARED_BAD = [  # (flag, bad value, programs that have it)
    ("batch_size", "-4", ("train", "knn", "evaluate", "retrieve", "finetune")),
    ("batch_size", "0", ("train", "knn", "evaluate", "retrieve", "finetune")),
    ("max_train", "-1", ("knn", "evaluate")),
    ("max_test", "-1", ("knn", "evaluate")),
    ("eval_size", "-32", ("knn", "evaluate", "retrieve")),
    ("k", "0", ("knn", "retrieve")),
    ("tau", "0", ("train", "knn")),
    ("steps", "0", ("train", "finetune")),
    ("checkpoint_every", "0", ("train", "finetune")),
    ("weight_decay", "-1", ("train", "finetune")),
    ("lr_decay_factor", "2", ("train", "finetune")),
    ("lr_decay_at", "0.5,1.5", ("train", "finetune")),
    ("num_seeds", "0", ("train", "preview")),
    ("patch_size", "0", ("train", "preview")),
]


@pytest.mark.parametrize("name, value, programs", SHARED_BAD, ids=[f"{n}={v}" for n, v, _ in SHARED_BAD])
def test_a_shared_flag_is_refused_with_the_same_line_by_every_program(name, value, programs):
    lines = {program: assert_refused(program, *REQUIRED[program], f"--{name}={value}") for program in programs}
    assert len(set(lines.values())) == 1, lines
    assert f"--{name}" in next(iter(lines.values()))


def test_knn_and_evaluate_refuse_a_negative_batch_size():
    for program in ("knn", "evaluate"):
        assert_refused(program, *REQUIRED[program], "--batch_size=-4", line="--batch_size must be > 0, got -4")


def test_the_shared_rules_are_the_training_settings_ranges():
    specs = settings.spec_map(cfg.TrainConfig)
    for name, rule in cli.SHARED.items():
        if name in specs:
            assert rule.describe() == specs[name].check.describe(), name
            bad = ("0.5", "1.5") if name == "lr_decay_at" else -4
            train_value = (0.5, 1.5) if name == "lr_decay_at" else bad
            assert rule.problem(name, bad) == specs[name].check.problem(name, train_value), name


def test_every_program_still_accepts_its_defaults_and_says_help_with_status_0():
    for program in PROGRAMS:
        done = subprocess.run([sys.executable, "-m", f"exemplar_tf.{program}", "--help"], capture_output=True,
                              text=True, timeout=300, cwd=REPO)
        assert done.returncode == 0 and "--" in done.stdout, (program, done.stderr)
        assert done.stderr == "", (program, done.stderr)


# --- errors.cli in-process -------------------------------------------------------------------------------------------

@pytest.fixture
def flag_values():
    values = flags.FlagValues()
    flags.DEFINE_integer("batch_size", 8, "", flag_values=values)
    flags.DEFINE_integer("copies", 2, "", flag_values=values)
    flags.DEFINE_float("tau", None, "", flag_values=values)
    flags.DEFINE_enum("mode", "a", ["a", "b"], "", flag_values=values)
    flags.DEFINE_list("fractions", "0.5", "", flag_values=values)
    flags.DEFINE_string("left", "", "", flag_values=values)
    flags.DEFINE_string("right", "", "", flag_values=values)
    flags.DEFINE_string("needed", None, "", flag_values=values, required=True)
    cli.check("copies", cli.POSITIVE, flag_values=values)
    cli.check("fractions", cli.FRACTIONS, flag_values=values)
    cli.check_flags(lambda v: None if bool(v.left) != bool(v.right) else "give exactly one of --left or --right",
                    flag_values=values)
    return values


def refusal(flag_values, capsys, *args):
    flag_values.unparse_flags()  # every parse from the defaults
    with pytest.raises(SystemExit) as exited:
        cli.parse_flags(["prog", *args], flag_values)
    assert exited.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("Error: ")
    return err.strip().removeprefix("Error: ")


def test_parse_flags_checks_shared_own_and_cross_flag_rules(flag_values, capsys, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")  # a value the user set wins; and no import hook is left behind
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    ok = ["--needed=x", "--left=a"]
    assert refusal(flag_values, capsys, *ok, "--batch_size=0") == "--batch_size must be > 0, got 0"  # SHARED
    assert refusal(flag_values, capsys, *ok, "--copies=-1", "--tau=0") == \
        "--copies must be > 0, got -1 (and 1 more)"
    assert refusal(flag_values, capsys, *ok, "--fractions=0.5,x") == \
        "--fractions must be a comma-separated list of numbers: could not convert string to float: 'x'"
    assert refusal(flag_values, capsys, *ok, "--fractions=0.2,1") == \
        "--fractions are fractions of --steps in (0, 1), got [0.2, 1.0]"
    assert refusal(flag_values, capsys, "--needed=x") == "give exactly one of --left or --right"
    assert refusal(flag_values, capsys, *ok, "--mode=c") == "--mode=c is not one of a, b"
    assert refusal(flag_values, capsys, "--left=a") == "--needed is required"
    flag_values.unparse_flags()
    assert cli.parse_flags(["prog", *ok, "--tau=0.5"], flag_values) == ["prog"]
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


def test_tensorflow_log_level_follows_verbosity():
    assert cli.tensorflow_log_level(None) == "3"
    assert [cli.tensorflow_log_level(v) for v in (2, 1, 0, -1, -2, -3, -4)] == ["0", "0", "0", "1", "2", "3", "3"]


def test_filtered_stderr_drops_tensorflow_start_up_lines_only(capfd):
    with cli.filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                    b"I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on. You may see ...\n"
                    b"something the user should see\n")
        print("from Python", file=sys.stderr)
    # (pytest's capfd hands Python's sys.stderr its file directly, so the order of the two may differ here)
    assert sorted(capfd.readouterr().err.splitlines()) == ["from Python", "something the user should see"]
    with pytest.raises(ImportError):
        with cli.filtered_stderr():
            os.write(2, b"I0000 oneDNN custom operations are on\n")
            raise ImportError("broken")
    assert "oneDNN" in capfd.readouterr().err  # a failed import shows everything


def test_the_first_tensorflow_import_is_quiet_and_tensorflow_works():
    code = ("import sys\nfrom exemplar_tf.errors import cli\ncli.quiet_tensorflow(None)\n"
            "import tensorflow as tf\n"
            "assert not any(isinstance(f, cli._QuietImport) for f in sys.meta_path)\n"
            "assert type(tf.__loader__) is type(tf.__spec__.loader) and 'Quiet' not in type(tf.__loader__).__name__\n"
            "print(int(tf.reduce_sum(tf.ones([3]))))\n")
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "3\n" and done.stderr == "", done.stderr

