"""The embedded demo (15 photographs) shows what each command promises: NPID's bare command uses the exact softmax
over the 15 bank rows and learns, NCE with more noise samples than instances is refused before anything is
written, and the README's demo evaluation shows a gain over the random network."""
import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFUSAL = ("Error: Bad training flags for this source: --nce_m=4096 must be smaller than the 15 instances of "
           "--source=demo: pass --nce_m=7 or --objective=nonparametric (the exact softmax over the bank, cheap for "
           "small sources)")


def _train(tmp_path, *flags, timeout=300):
    command = [sys.executable, "-m", "exemplar_tf.train", f"--run_dir={tmp_path / 'run'}",
               f"--export_base={tmp_path / 'sm'}", "--noprogress", *flags]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_nce_with_more_noise_samples_than_instances_is_refused_before_anything_is_written(tmp_path):
    done = _train(tmp_path, "--method=npid", "--objective=nce")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == REFUSAL
    assert not os.path.exists(tmp_path / "run" / "flags.cfg")  # the corrected command starts afresh
    assert not os.path.exists(tmp_path / "sm")  # not even the random baseline was exported


def _knn_readings(stdout: str) -> dict[int, float]:
    return {int(step): float(top1) for step, top1 in re.findall(r"step (\d+): kNN top-1 ([0-9.]+)", stdout)}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_bare_npid_command_learns_on_the_demo(tmp_path):
    """The issue's command plus a short length: kNN on the demo's labelled crops rises above the random network."""
    done = _train(tmp_path, "--method=npid", "--steps=25", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    readings = _knn_readings(done.stdout)
    assert set(readings) == {0, 25}, done.stdout
    assert readings[25] > readings[0] + 0.05, readings
    with open(tmp_path / "run" / "flags.cfg") as file:
        assert "--objective=nonparametric\n" in file.read()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_readme_demo_evaluation_shows_a_gain_over_the_random_network(tmp_path):
    """The README's main command, then its evaluate command as written: the probe must see what the kNN monitor
    sees (the demo run improves on its random network)."""
    from test_readme_commands import readme_commands

    main, evaluate = readme_commands()[0], next(c for c in readme_commands() if "exemplar_tf.evaluate" in c)
    os.symlink(os.path.join(REPO, "flags"), tmp_path / "flags")
    for command in (main, evaluate + f" --out_json={tmp_path / 'probe.json'}"):
        done = subprocess.run([sys.executable, *command.split()[1:]], cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    with open(tmp_path / "probe.json") as file:
        report = json.load(file)
    assert report["gain_over_random"] > 0.02, report["gain_over_random"]
