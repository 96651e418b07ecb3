"""experiments/summarize.py: RESULTS.md's rows from the committed result files of the CIFAR-10 runs."""
import glob
import importlib
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def summarize(monkeypatch):
    """The script as a module, run from the repository root (it reads experiments/results/ relative to it)."""
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(os.path.join(REPO, "experiments"))
    return importlib.import_module("summarize")


def test_online_run_counts_its_50000_images_not_the_unused_num_seeds(summarize):
    cells = [cell.strip() for cell in summarize.table_row("cifar10_full_online_r18w32").split("|")]
    assert cells[3:5] == ["50000 images", "20.0"]
    assert "online patches (every image a class)" in cells[1]
    assert cells[6:9] == ["60.4", "71.2", "34.6 / 55.1"]


def test_fixed_seed_run_counts_its_8000_seeds_over_125_epochs(summarize):
    cells = [cell.strip() for cell in summarize.table_row("cifar10_full_exemplar_nce_r18w32").split("|")]
    assert cells[3:5] == ["8000 seeds", "124.8"]
    assert "online" not in cells[1]


def test_npid_with_max_instances_counts_the_evenly_spread_subset(summarize):
    flags = {"method": "npid", "max_instances": "5000", "batch_size": "128"}
    assert summarize.num_instances(flags) == 5000
    assert summarize.epochs_per_step(flags) == pytest.approx(128 / 5000)
    assert not summarize.counts_seeds(flags)


def test_the_eleventh_curve_shares_the_first_colour_but_not_its_marker(summarize, tmp_path):
    committed = sorted(glob.glob(os.path.join(REPO, "experiments", "results", "*", "curves.json")))
    names = [os.path.basename(os.path.dirname(path)) for path in committed][:11]  # runs the plot can draw
    figure = summarize.plot_curves(names, str(tmp_path / "curves.png"))
    lines = figure.axes[0].lines
    assert len(lines) == 11 and (tmp_path / "curves.png").stat().st_size > 0
    assert lines[10].get_color() == lines[0].get_color()
    assert lines[10].get_marker() != lines[0].get_marker()
    assert len({(line.get_color(), line.get_marker()) for line in lines}) == 11


def test_the_plot_is_drawn_only_where_asked_for(summarize, tmp_path, monkeypatch, capsys):
    """Printing two rows leaves the committed plots alone; --plot=<png> draws the named runs there."""
    drawn = []
    monkeypatch.setattr(summarize, "plot_curves", lambda names, path: drawn.append((names, path)))
    names = ["cifar10_full_online_r18w32", "cifar10_full_exemplar_nce_r18w32"]
    summarize.main(names)
    assert drawn == [] and capsys.readouterr().out.count("run_cifar10.sh") == 2  # the two rows
    summarize.main([names[0], f"--plot={tmp_path}/a.png", names[1]])
    assert drawn == [(names, f"{tmp_path}/a.png")]
