"""Flag handling of the training program: flagfiles resolve, bad values are rejected before any work."""
import dataclasses
import glob
import os
import subprocess
import sys

import pytest
from absl import flags
from absl.testing import flagsaver

from exemplar_tf import choices, train
from exemplar_tf.training import config as cfg
from exemplar_tf.training import rundir, settings
from exemplar_tf.training.config import TrainConfig, validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(*args):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train", *args])
    return train.config_from_flags()


@pytest.mark.parametrize("flagfile", sorted(glob.glob(os.path.join(REPO, "flags", "*.cfg"))
                                              + glob.glob(os.path.join(REPO, "experiments", "*.cfg"))))
def test_every_flagfile_resolves_to_a_valid_config(flagfile):
    with flagsaver.flagsaver():
        config = _parse(f"--flagfile={flagfile}")
    assert config.name and config.steps > 0
    assert config.run_dir == os.path.join("runs", config.name)
    if os.path.basename(os.path.dirname(flagfile)) == "experiments":  # run_cifar10.sh finds runs by file name
        assert config.name == os.path.basename(flagfile)[:-len(".cfg")]


def test_flags_after_the_flagfile_override_it():
    with flagsaver.flagsaver():
        config = _parse(f"--flagfile={REPO}/flags/stl10.cfg", "--steps=7", "--transforms=translate,hue")
    assert config.steps == 7
    assert config.transforms == ("translate", "hue")
    assert config.objective == "nce"


def test_the_default_chain_is_the_papers_and_npids_flip_and_grayscale_are_opt_in():
    assert settings.spec_map(TrainConfig)["transforms"].default == choices.PAPER_TRANSFORMS
    assert "flip" not in choices.PAPER_TRANSFORMS and "grayscale" not in choices.PAPER_TRANSFORMS
    with flagsaver.flagsaver():
        config = _parse(f"--flagfile={REPO}/flags/stl10.cfg", "--transforms=translate,hue,flip,grayscale")
    assert config.transforms == ("translate", "hue", "flip", "grayscale")


def test_resolved_flagfile_round_trips(tmp_path):
    with flagsaver.flagsaver():
        first = _parse(f"--flagfile={REPO}/flags/demo.cfg", "--lr_decay_at=0.5")
        path = rundir.write_flagfile(dataclasses.replace(first, run_dir=str(tmp_path)))
        second = _parse(f"--flagfile={path}", f"--run_dir={first.run_dir}")
    assert first == second


@pytest.mark.parametrize("objective, noise", [("softmax", "per_example"), ("nonparametric", "per_example"),
                                              ("nce", "per_example"), ("nce", "shared")])
def test_merging_is_accepted_with_every_objective(objective, noise):
    config = TrainConfig(run_dir="/tmp/x", objective=objective, batch_norm=True, merge_classes_at=100, merge_to=4000,
                         nce_m=1024, nce_noise=noise)
    assert validate(config) is config


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(objective="softmax", method="npid"), "needs surrogate classes"),
        (dict(transforms=("translate", "shear")), "unknown names ['shear']"),
        (dict(tau=0.0), "--tau must be > 0"),
        (dict(batch_size=0), "--batch_size must be > 0"),
        (dict(bank_momentum=1.5), "--bank_momentum must be in [0, 1]"),
        (dict(nce_m=9000, num_seeds=8000, objective="nce", batch_norm=True),
         "--nce_m=9000 must be smaller than --num_seeds=8000"),
        (dict(lr_decay_at=(0.5, 1.2)), "--lr_decay_at are fractions"),
        (dict(strategy="tpu"), "--strategy=tpu needs --tpu"),
        (dict(knn_every=10, source="stl10"), "--knn_every needs --knn_source"),
        (dict(arch="vgg"), "--arch='vgg' is not one of"),
        (dict(nce_noise="batch"), "--nce_noise='batch' is not one of per_example, shared"),
        (dict(bank_init="zeros"), "--bank_init='zeros' is not one of random, features"),
        (dict(bank_init="features", objective="softmax"), "--bank_init=features needs a memory bank"),
        (dict(head_hidden_dim=512, objective="softmax"), "--head_hidden_dim=512 needs a memory bank"),
        (dict(bank_init="features", strategy="multi_worker", method="npid"), "not supported with --strategy=multi_worker"),
        (dict(objective="nce", arch="medium"), "on the medium Exemplar-CNN needs --batch_norm"),
        (dict(objective="nonparametric", method="npid", arch="small"), "on the small Exemplar-CNN needs --batch_norm"),
        (dict(resnet_stem="vgg"), "--resnet_stem='vgg' is not one of"),
        (dict(resnet_width=0), "--resnet_width must be a positive"),
        (dict(seeds_per_image=-1), "--seeds_per_image must be >= 0"),
        (dict(seed_sampling="random"), "--seed_sampling='random' is not one of fixed, online"),
        (dict(seed_sampling="online", method="npid"), "--seed_sampling=online draws Exemplar-CNN seed patches"),
        (dict(seed_sampling="online", fixed_copies=4), "--fixed_copies is a pool of copies of fixed seeds"),
        (dict(merge_classes_at=100), "--merge_classes_at and --merge_to go together"),
        (dict(merge_classes_at=100, merge_to=8000), "--merge_to=8000 must be smaller than --num_seeds=8000"),
        (dict(merge_classes_at=10000, merge_to=100), "--merge_classes_at=10000 must be smaller than --steps=10000"),
        (dict(merge_classes_at=100, merge_to=100, objective="nce", batch_norm=True, nce_m=100),
         "--nce_m=100 must be smaller than --merge_to=100 (after the merge NCE draws its noise from the 100 classes)"),
        (dict(merge_classes_at=100, merge_to=100, objective="nce", batch_norm=True, nce_m=50, nce_noise="shared",
              batch_size=100), "--nce_noise=shared draws noise from the classes not in the batch: --merge_to=100 "
                               "must be larger than --batch_size=100"),
        (dict(merge_classes_at=100, merge_to=100, seed_sampling="online"), "use it with --method=exemplar "
                                                                          "--seed_sampling=fixed"),
        (dict(merge_classes_at=100, merge_to=100, strategy="multi_worker"),
         "--merge_classes_at is not supported with --strategy=multi_worker"),
        (dict(momentum_encoder=1.0, objective="nce", batch_norm=True), "--momentum_encoder must be in [0, 1), got 1.0"),
        (dict(momentum_encoder=-0.1), "--momentum_encoder must be in [0, 1), got -0.1"),
        (dict(momentum_encoder=0.99, objective="softmax"), "--momentum_encoder needs a memory bank: use "
                                                          "--objective=nce or nonparametric, not softmax"),
        (dict(momentum_encoder=0.99, objective="nce", batch_norm=True, nce_m=50, merge_classes_at=100, merge_to=100),
         "--momentum_encoder is not supported with --merge_to"),
        (dict(dropout=1.0), "--dropout must be in [0, 1), got 1.0"),
        (dict(scale_max=0.7), "--scale_max=0.7 must be 0 (the preset's) or above the paper preset's smallest scale 0.7"),
        (dict(scale_max=2.0, transforms=("translate", "rotate")), "--scale_max=2.0 sets the range of the Exemplar "
                                                                  "chain's scale step: it needs --method=exemplar"),
        (dict(scale_max=2.0, method="npid"), "it needs --method=exemplar and 'scale' in --transforms"),
        (dict(weight_decay=-1.0), "--weight_decay must be >= 0, got -1.0"),
    ],
)
def test_bad_values_are_rejected_with_the_flag_named(change, message):
    with pytest.raises(ValueError, match="Bad training flags") as error:
        validate(TrainConfig(run_dir="/tmp/x", **change))
    assert message in str(error.value)


def test_npid_flags_accept_device_side_augmentation():
    config = _parse("--run_dir=/tmp/x", "--method=npid", "--augment_on=device")
    assert (config.method, config.augment_on) == ("npid", "device")
    assert validate(config) is config


@pytest.mark.parametrize("method, expected", [
    ("exemplar", dict(arch="small", objective="softmax", lr=0.01, weight_decay=0.004, lr_decay_factor=0.3)),
    ("npid", dict(arch="resnet18", objective="nce", lr=0.03, weight_decay=5e-4, lr_decay_factor=0.1)),
])
def test_each_method_gets_its_papers_recipe_unless_a_flag_says_otherwise(method, expected):
    with flagsaver.flagsaver():
        config = _parse(f"--method={method}", "--source=cifar10")
        overridden = _parse(f"--method={method}", "--source=cifar10", "--lr=0.5", "--weight_decay=0", "--arch=medium", "--batch_norm")
    assert {field: getattr(config, field) for field in expected} == expected
    assert (overridden.lr, overridden.weight_decay, overridden.arch) == (0.5, 0.0, "medium")
    assert overridden.lr_decay_factor == expected["lr_decay_factor"]


def test_the_bare_command_resolves_to_a_recipe_that_fits_the_demo():
    """No flags but --run_dir: the demo's 15 photographs give 8000 seeds (534 per photograph), the small network
    with the parametric softmax (no bank: no collapse without batch norm), kNN on the demo's labelled crops."""
    from exemplar_tf.training.config import seeds_per_image_for

    with flagsaver.flagsaver():
        config = _parse("--run_dir=/tmp/x")
    assert (config.source, config.method, config.arch, config.objective) == ("demo", "exemplar", "small", "softmax")
    assert seeds_per_image_for(config, 15) == 534 and seeds_per_image_for(config, 50_000) == 1
    assert config.knn_source == "demo_labelled"
    with flagsaver.flagsaver():
        assert _parse("--run_dir=/tmp/x", "--source=stl10").knn_source == ""


def test_the_bare_npid_command_uses_the_exact_softmax_on_the_demo_only():
    """The demo has 15 photographs: NCE's 4096 noise samples cannot come from 15 bank rows, the exact softmax can."""
    with flagsaver.flagsaver():
        on_demo = _parse("--run_dir=/tmp/x", "--method=npid")
        asked = _parse("--run_dir=/tmp/x", "--method=npid", "--objective=nce", "--nce_m=7")
        elsewhere = _parse("--run_dir=/tmp/x", "--method=npid", "--source=folder:/data")
    assert (on_demo.objective, asked.objective, elsewhere.objective) == ("nonparametric", "nce", "nce")
    assert cfg.instance_problems(on_demo, 15) == [] and cfg.instance_problems(asked, 15) == []


@pytest.mark.parametrize("change, num_instances, message", [
    (dict(nce_m=4096), 15, "--nce_m=4096 must be smaller than the 15 instances of --source=folder:/data: pass "
                           "--nce_m=7 or --objective=nonparametric"),
    (dict(nce_m=15), 15, "--nce_m=15 must be smaller than the 15 instances"),
    (dict(nce_m=8, nce_noise="shared", batch_size=16), 16, "the source's 16 instances must be more than "
                                                           "--batch_size=16"),
])
def test_nce_needs_more_instances_than_noise_samples(change, num_instances, message):
    config = TrainConfig(run_dir="/tmp/x", method="npid", source="folder:/data", **change)
    assert message in "; ".join(cfg.instance_problems(config, num_instances))
    assert cfg.instance_problems(config, num_instances + 5000) == []
    with pytest.raises(cfg.InputError, match="Bad training flags for this source"):
        cfg.check_instances(config, num_instances)


def test_an_unnormalised_bank_runs_only_when_allowed():
    config = validate(TrainConfig(run_dir="/tmp/x", objective="nce", arch="medium", allow_unnormalised_bank=True))
    assert not config.batch_norm


def test_program_rejects_bad_flags_before_any_work(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "exemplar_tf.train", f"--flagfile={REPO}/flags/demo.cfg", "--tau=-1",
         f"--run_dir={run_dir}"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 2
    assert "--tau must be > 0" in result.stderr
    assert not run_dir.exists()


def test_program_rejects_an_unknown_enum_value(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "exemplar_tf.train", "--objective=svm", f"--run_dir={tmp_path}"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode != 0
    assert "objective" in result.stderr and "svm" in result.stderr


@pytest.mark.parametrize("user_value, expected", [(None, "1"), ("0", "0")])
def test_importing_the_package_turns_onednn_on_unless_the_user_chose(user_value, expected):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if user_value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = user_value
    out = subprocess.run([sys.executable, "-c", "import os, exemplar_tf; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == expected


def test_a_momentum_encoder_on_a_bank_objective_is_accepted_from_the_flags():
    with flagsaver.flagsaver():
        config = _parse("--run_dir=/tmp/x", "--method=npid", "--source=cifar10", "--momentum_encoder=0.999")
    assert (config.momentum_encoder, config.objective) == (0.999, "nce")
    assert validate(config) is config
    assert "momentum_encoder" not in rundir.RESUME_SAFE  # it changes what is trained


def test_a_bad_value_of_any_checked_field_is_reported_naming_its_flag():
    """Every declared range and choice list is enforced by validate, with the field's flag named."""
    for spec in settings.specs(TrainConfig):
        bad = {"int": -7, "float": -7.0}.get(spec.kind) if isinstance(spec.check, settings.Range) else None
        if spec.choices is not None:
            bad = ("bogus",) if spec.kind == "list" else "bogus"
        if bad is None:
            continue
        with pytest.raises(ValueError, match="Bad training flags") as error:
            validate(TrainConfig(run_dir="/tmp/x", **{spec.name: bad}))
        assert f"--{spec.name}" in str(error.value), spec.name
    with pytest.raises(ValueError, match="--run_dir must be set"):
        validate(TrainConfig(run_dir=""))


def test_every_field_is_declared_once_with_help_and_its_flag_matches():
    """One flag per field, of the field's type, with its default and (enums) its valid values."""
    kinds = {"str": "string", "bool": "bool", "int": "int", "float": "float", "list": "comma separated list of strings"}
    for spec in settings.specs(TrainConfig):
        flag = flags.FLAGS[spec.name]
        assert spec.help and flag.help == (f"<{'|'.join(spec.choices)}>: " if flag.flag_type() == "string enum"
                                           else "") + spec.help
        assert flag.flag_type() == ("string enum" if spec.choices and spec.kind != "list" else kinds[spec.kind])
        expected = None if spec.required else spec.flag_default.split(",") if spec.kind == "list" else spec.default
        assert flag.default == expected, spec.name
        if spec.choices is not None and spec.kind != "list":
            assert flag.parser.enum_values == list(spec.choices), spec.name


def test_valid_values_are_listed_once_in_choices():
    for name in ("METHODS", "STRATEGIES", "PRESETS", "SEED_SAMPLINGS", "NCE_NOISE", "BANK_INITS", "RESNET_STEMS",
                 "ARCHS", "OBJECTIVES", "PRECISIONS", "AUGMENT_ON"):
        assert getattr(cfg, name) is getattr(choices, name)
    from exemplar_tf.augment import presets

    assert choices.PRESETS == tuple(presets.PRESETS) and choices.TRANSFORMS is presets.ALL_TRANSFORMS
    declared = settings.spec_map(TrainConfig)
    assert declared["method"].choices is choices.METHODS and declared["transforms"].choices is choices.TRANSFORMS


def test_flags_are_defined_and_validated_without_importing_tensorflow():
    code = ("import sys; from exemplar_tf import train; from exemplar_tf.training import rundir; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert out.strip() == "[]"


def test_the_committed_flag_table_is_up_to_date():
    with open(os.path.join(REPO, "docs", "flags.md")) as file:
        committed = file.read()
    assert committed == cfg.flags_doc(), "docs/flags.md is out of date: run python -m exemplar_tf.training.config"
    assert "| `--momentum_encoder` | float | `0.0` | in [0, 1) |" in committed


def test_the_tiny_config_fixture_makes_a_valid_small_demo_run(tiny_config, tmp_path):
    config = tiny_config(tmp_path / "run", steps=3)
    assert validate(config) is config
    assert (config.run_dir, config.steps, config.source, config.progress) == (str(tmp_path / "run"), 3, "demo", False)
    assert config.export_base == str(tmp_path / "savedmodels")


def test_with_settings_fills_in_the_defaults_again_and_keeps_the_values_given():
    """A config changed by `with_settings` is the config built with the change: the method's and the source's
    defaults follow (dataclasses.replace keeps the old ones), a value set by hand stays."""
    demo = cfg.TrainConfig(run_dir="r", lr=0.5)
    assert (demo.objective, demo.weight_decay, demo.knn_source) == ("softmax", 0.004, "demo_labelled")
    npid = cfg.with_settings(demo, method="npid", source="folder:/photos")
    assert npid == cfg.TrainConfig(run_dir="r", lr=0.5, method="npid", source="folder:/photos")
    assert (npid.objective, npid.weight_decay, npid.knn_source, npid.lr) == ("nce", 5e-4, "", 0.5)
    assert dataclasses.replace(demo, method="npid").objective == "softmax"  # what it replaces
    on_demo = cfg.with_settings(npid, source="demo")  # NPID's recipe for the demo's 15 photographs
    assert (on_demo.objective, on_demo.knn_source) == ("nonparametric", "demo_labelled")
    kept = cfg.with_settings(cfg.TrainConfig(run_dir="r", objective="nce", knn_source="cifar10"), method="npid",
                             source="demo")
    assert (kept.objective, kept.knn_source) == ("nce", "cifar10")
    assert cfg.with_settings(demo) == demo and cfg.with_settings(demo, steps=7).steps == 7
