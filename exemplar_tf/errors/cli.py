"""The command line every program shares: flags parsed and checked before TensorFlow is imported, a bad command
line shown as one stderr line with exit status 2, and TensorFlow's own logging kept quiet unless --verbosity asks.

`exemplar_tf.errors.run(main)` parses with `parse_flags`:
- An unknown flag, a bad value (an enum, a number, a rule below), a missing required flag, a --flagfile that cannot
  be read or a positional argument prints `Error: <one line>` and exits 2 (absl's own parser prints "FATAL Flags
  parsing error" and exits 1). --help, --helpshort and --helpfull print the help and exit 0.
- Rules: a flag named in `SHARED` gets its rule in every program that has it (--batch_size > 0, --max_train >= 0,
  ...); a program adds its own with `check(name, rule)` and rules over several flags with `check_flags(function)`.
  They run after parsing, so a value from a flagfile is checked like one typed on the command line. A rule reads
  as the training settings' ranges do (`exemplar_tf.training.settings.Range`): "--batch_size must be > 0, got -4".
- Quiet TensorFlow (`quiet_tensorflow`): without --verbosity, TF_CPP_MIN_LOG_LEVEL=3 (TensorFlow's C++ INFO,
  WARNING and ERROR lines off; a value already in the environment wins), absl logging at WARNING (no INFO lines from
  savers and exports), and the lines TensorFlow's libraries print while `import tensorflow` runs, before they read
  their log level (absl's "All log messages before absl::InitializeLog()", "oneDNN custom operations are on",
  CUDA factory registrations), are dropped; anything else printed meanwhile is kept, and all of it when the import
  fails. With --verbosity=N: TF_CPP_MIN_LOG_LEVEL follows N (0 and above: everything) and nothing is dropped.

Imports no TensorFlow and no other project package (the base layer).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from typing import Any, Callable, Iterator, Protocol

from absl import flags

EXIT_USAGE = 2  # as EXIT_INPUT_ERROR: a bad command line is bad input


class Rule(Protocol):
    def problem(self, name: str, value: Any) -> str | None:
        """What is wrong with `--name=value`, or None."""


@dataclasses.dataclass(frozen=True)
class Bound:
    """A numeric range of a flag or setting; None (an unset optional flag) passes. `describe()` is how error
    messages and the docs state it ("> 0", "in [0, 1)"); the training settings use it as `settings.Range`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    text: str | None = None  # stated in words instead ("a positive number of channels")

    def contains(self, value) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.text:
            return self.text
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def problem(self, name: str, value) -> str | None:
        if value is None or self.contains(value):
            return None
        return f"--{name} must be {self.describe()}, got {value}"


@dataclasses.dataclass(frozen=True)
class Each:
    """Every item of a list flag (strings, as DEFINE_list gives them, or numbers) a number in `bound`."""

    bound: Bound
    message: str = "--{name} items must be {range}, got {value}"

    def describe(self) -> str:
        return f"each {self.bound.describe()}"

    def problem(self, name: str, value) -> str | None:
        items = [item.strip() if isinstance(item, str) else item for item in value or ()]
        try:
            numbers = [float(item) for item in items if item != ""]
        except ValueError as error:
            return f"--{name} must be a comma-separated list of numbers: {error}"
        if all(self.bound.contains(number) for number in numbers):
            return None
        return self.message.format(name=name, range=self.bound.describe(), value=numbers)


POSITIVE = Bound(low=0, low_open=True)
NON_NEGATIVE = Bound(low=0)
UNIT_INTERVAL = Bound(low=0, high=1)  # [0, 1]
FRACTIONS = Each(Bound(low=0, high=1, low_open=True, high_open=True),
                 message="--{name} are fractions of --steps {range}, got {value}")

# The flags several programs share, each with one rule wherever it appears (train's come from its settings, which
# state the same ranges: tests/test_program_flags.py holds the two together).
SHARED: dict[str, Rule] = {
    "batch_size": POSITIVE,
    "steps": POSITIVE,
    "checkpoint_every": POSITIVE,
    "k": POSITIVE,
    "tau": POSITIVE,
    "num_seeds": POSITIVE,
    "patch_size": POSITIVE,
    "max_train": NON_NEGATIVE,  # 0: all
    "max_test": NON_NEGATIVE,
    "eval_size": NON_NEGATIVE,  # 0: as stored
    "weight_decay": NON_NEGATIVE,
    "lr_decay_factor": UNIT_INTERVAL,
    "lr_decay_at": FRACTIONS,
}
# A program's own rules (they win over SHARED) and its rules over several flags, per FlagValues (absl's FLAGS for
# the programs; a test's own FlagValues is not checked with the rules of a program imported in the same process).
_RULES: dict[int, dict[str, Rule | Callable[[Any], str | None]]] = {}
_FLAG_CHECKS: dict[int, list[Callable[[flags.FlagValues], str | None]]] = {}


def check(name: str, rule: Rule | Callable[[Any], str | None], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Check flag `name` after parsing with `rule`: a Rule, or a function of the value returning the problem."""
    _RULES.setdefault(id(flag_values), {})[name] = rule


def check_flags(function: Callable[[flags.FlagValues], str | None],
                flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Check the parsed flags together: `function(flag_values)` returns the problem (one line) or None."""
    _FLAG_CHECKS.setdefault(id(flag_values), []).append(function)


def problems(flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """What the rules find wrong with the parsed flags: each flag's rule in definition order, then the rules over
    several flags (those only when every flag is fine on its own)."""
    rules = _RULES.get(id(flag_values), {})
    found = []
    for name in list(flag_values):
        flag = flag_values[name]
        if name != flag.name:  # a short name
            continue
        rule = rules.get(name, SHARED.get(name))
        if rule is None:
            continue
        try:
            problem = rule.problem(name, flag.value) if hasattr(rule, "problem") else rule(flag.value)
        except ValueError as error:  # a rule that parses (a list of numbers, say) names what it could not
            problem = str(error)
        if problem:
            found.append(problem)
    if not found:
        found = [problem for problem in (function(flag_values) for function in _FLAG_CHECKS.get(id(flag_values), ()))
                 if problem]
    return found


def one_line(error: Exception) -> str:
    """absl's message for a command line it refused, as one line in the project's words."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    if isinstance(error, flags.CantOpenFlagFileError):
        found = re.search(r"\[Errno \d+\] ([^:]+): '(.*)'", first)
        return f"--flagfile={found.group(2)}: {found.group(1)}" if found else first.removeprefix("ERROR:: ")
    required = [re.fullmatch(r"flag --(\w+)=None: Flag --\w+ must have a value other than None\.", line)
                for line in lines]
    if required and all(required):
        names = [f"--{found.group(1)}" for found in required]
        return f"{names[0]} is required" if len(names) == 1 else \
            f"{', '.join(names[:-1])} and {names[-1]} are required"
    if required and required[0]:
        first = f"--{required[0].group(1)} is required"
    enum = re.fullmatch(r"flag --(\w+)=(.*): value should be one of <(.*)>", first)
    if enum:
        first = f"--{enum.group(1)}={enum.group(2)} is not one of {', '.join(enum.group(3).split('|'))}"
    for pattern, kind in ((r"invalid literal for int\(\)", "an integer"),
                          (r"could not convert string to float", "a number"),
                          (r"\('Non-boolean argument", "true or false")):
        value = re.match(r"flag (--\w+=.*?): " + pattern, first)
        if value:
            first = f"{value.group(1)} is not {kind}"
    return (first.removeprefix("flag ") + more).strip()


def fail(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl's FLAGS(argv) with every refusal as one stderr line and exit status 2 (see the module docstring), the
    rules checked, and TensorFlow quietened for what follows; returns [program] (no positional arguments)."""
    try:
        remaining = flag_values(argv)
    except (flags.Error, ValueError) as error:  # absl raises ValueError for "--noflag=x" of a boolean flag
        fail(one_line(error))
    except SystemExit as done:  # absl's --help/--helpfull print the help and exit 1
        sys.exit(0 if done.code == 1 else done.code)
    if len(remaining) > 1:
        fail(f"unexpected arguments {remaining[1:]} (every setting is a --flag)")
    found = problems(flag_values)
    if found:
        fail(found[0] + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""))
    verbosity = flag_values["verbosity"] if "verbosity" in flag_values else None
    quiet_tensorflow(verbosity.value if verbosity is not None and verbosity.present else None)
    return remaining


# --- TensorFlow's own output ---------------------------------------------------------------------------------------

# Lines TensorFlow's libraries print while they load, before they read TF_CPP_MIN_LOG_LEVEL.
IMPORT_NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "TF-TRT Warning: Could not find TensorRT",
)


def tensorflow_log_level(verbosity: int | None) -> str:
    """TF_CPP_MIN_LOG_LEVEL for absl's --verbosity (None: not given): 3 (FATAL only) by default; 0 (everything)
    for --verbosity >= 0 (INFO), 1 for -1 (WARNING), 2 for -2 (ERROR)."""
    if verbosity is None:
        return "3"
    return str(min(3, max(0, -verbosity)))


def quiet_tensorflow(verbosity: int | None) -> None:
    """Set TensorFlow's log level from --verbosity (unless the environment has one) and, without --verbosity,
    drop its start-up lines (`IMPORT_NOISE`) when it is first imported. Must run before TensorFlow is imported.
    (absl logging's level is set by `quiet_logging` once absl's app has set its own.)"""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", tensorflow_log_level(verbosity))
    if verbosity is None:
        if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _QuietImport())


def quiet_logging(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """absl (Python) logging at WARNING unless --verbosity was given: no INFO lines from TensorFlow's savers and
    exports. Run after absl's app.run has parsed the flags (it sets INFO itself)."""
    from absl import logging

    if "verbosity" in flag_values and not flag_values["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


@contextlib.contextmanager
def filtered_stderr(noise: tuple[str, ...] = IMPORT_NOISE) -> Iterator[None]:
    """Send file descriptor 2 (C++ logging as well as Python's) to a temporary file meanwhile, then write what came
    to sys.stderr without the lines that contain one of `noise` (everything when the block raised)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = lines if failed else [line for line in lines if not any(text in line for text in noise)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run inside `filtered_stderr`; the module keeps the original loader."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        try:
            with filtered_stderr():
                self.loader.exec_module(module)
        finally:
            module.__loader__ = self.loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self.loader


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once (then leaves sys.meta_path) and has it loaded by `_QuietLoader`, wherever it is
    first imported (a program's main, a library module, Keras)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec
