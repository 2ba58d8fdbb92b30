"""Flags -> config, flagfiles, and the train script run the real way (as a subprocess)."""

import dataclasses
import glob
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import pytest
from absl import flags

from robustcl import methods
from robustcl.cli import flags as cli_flags
from robustcl.settings import ConfigError
from robustcl.training.settings import ExperimentConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Training flagfiles; the reproduction grids (bench/reproduce.py's flags) are tested in test_reproduce.
GRIDS = ("repro_cifar10_cpu.flags", "repro_cifar10_gpu.flags", "repro_cifar10_mid.flags")
CONFIGS = sorted(c for c in glob.glob(os.path.join(REPO, "configs", "*.flags")) if os.path.basename(c) not in GRIDS)
METHOD_NAMES = methods.METHODS.names()  # a newly registered method is smoke-tested with its flagfile


def parse(*args):
    flag_values = flags.FlagValues()
    cli_flags.define_train_flags(flag_values)
    flag_values(["train.py", *args])
    return cli_flags.config_from_flags(flag_values)


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # flagfiles include each other by repo-relative paths


@pytest.mark.parametrize("flagfile", CONFIGS, ids=os.path.basename)
def test_every_flagfile_parses(flagfile, tmp_path):
    from robustcl import data

    # Dataset overlays (data_*.flags) go after a method flagfile.
    base = ["--flagfile=configs/pgd_at_cifar10.flags"] if "/data_" in flagfile else []
    config = parse(*base, f"--flagfile={flagfile}", f"--model_dir={tmp_path}")
    assert config.data.dataset in data.DATASETS
    if base:
        assert os.path.basename(flagfile) == f"data_{config.data.dataset}.flags"
        assert config.method.name == "pgd_at"


def test_image_size_applies_to_datasets_of_any_size(tmp_path):
    assert (
        parse(
            "--flagfile=configs/pgd_at_cifar10.flags",
            "--flagfile=configs/data_folder.flags",
            "--image_size=96",
            f"--model_dir={tmp_path}",
        ).data.image_size
        == 96
    )
    with pytest.raises(ConfigError, match=r"--image_size: cifar10 images are 32x32"):
        parse("--flagfile=configs/pgd_at_cifar10.flags", "--image_size=64", f"--model_dir={tmp_path}")


def test_flagfile_includes_base_and_overrides_it(tmp_path):
    config = parse(
        "--flagfile=configs/pgd_at_cifar10.flags", "--flagfile=configs/smoke.flags", f"--model_dir={tmp_path}"
    )
    assert config.method.name == "pgd_at" and config.train_attack.name == "pgd"
    assert config.train_attack.eps == pytest.approx(8 / 255)  # from the base, written as 8/255
    assert config.optimizer.lr_decay_epochs == (75, 90)
    assert config.model.name == "tiny" and config.optimizer.epochs == 2  # smoke overrides
    assert parse("--flagfile=configs/pgd_at_cifar100.flags", "--model_dir=x").data.dataset == "cifar100"


def test_every_method_has_a_flagfile_per_dataset():
    for method in METHOD_NAMES:
        for dataset in ("cifar10", "cifar100"):
            assert os.path.exists(os.path.join(REPO, "configs", f"{method}_{dataset}.flags")), method


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_method_flagfiles_list_only_what_departs_from_the_defaults(method, tmp_path):
    """Every setting line of a method flagfile changes the config it resolves to: values equal to
    the base flagfile's or the method's own defaults (its Params, its declared head) are left to
    them, so they live in one place."""
    for dataset in ("cifar10", "cifar100"):
        lines = open(os.path.join(REPO, "configs", f"{method}_{dataset}.flags")).read().splitlines()
        full = parse(f"--flagfile=configs/{method}_{dataset}.flags")
        for i, line in enumerate(lines):
            if not line.startswith("--") or line.startswith(("--flagfile=", "--method=", "--model_dir=")):
                continue
            without = tmp_path / "without.flags"
            without.write_text("\n".join(lines[:i] + lines[i + 1 :]) + "\n")
            assert (
                parse(f"--flagfile={without}", "--model_dir=x").to_dict()
                != dataclasses.replace(full, run=dataclasses.replace(full.run, model_dir="x")).to_dict()
            ), f"{method}_{dataset}.flags: {line} repeats a default"


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_config_json_round_trip(method, tmp_path):
    config = parse(f"--flagfile=configs/{method}_cifar10.flags", f"--model_dir={tmp_path}")
    params_class = methods.get(config.method.name).Params
    assert ExperimentConfig.from_json(config.to_json(), params_class) == config


@pytest.mark.parametrize(
    "args,message",
    [
        (["--eps=-0.1"], "--eps: must be a finite number >= 0"),
        (["--attack_steps=0"], "--attack_steps: must be >= 1"),
        (["--val_attack_steps=0"], "--val_attack_steps: must be >= 1"),
        (["--step_size=0"], "--step_size: must be a finite number > 0"),
        (["--dataset=mnist"], "--dataset: unknown dataset 'mnist'"),
        (["--model=resnet19"], "--model: unknown model 'resnet19'; known: "),
        (["--method=pgd"], "--method: unknown method 'pgd'"),
        (["--attack=cw"], "--attack: unknown attack 'cw'"),
        (["--norm=l1"], "--norm: unknown norm 'l1'"),
        (["--data_dir=/no/such/dir"], "--data_dir: /no/such/dir does not exist"),
        (["--precision=float16"], "--precision: unknown precision"),
        (["--strategy=tpu"], "--strategy: unknown strategy"),
        (["--lr_decay_epochs=90,75"], "--lr_decay_epochs: must be increasing"),
        (["--lr_decay_epochs=150"], "--lr_decay_epochs: [150] lie past --epochs=100"),
        (["--lr_decay_epochs=a"], "--lr_decay_epochs: expected whole numbers"),
        (["--jit_compile=maybe"], "--jit_compile: expected true, false or auto"),
        (["--batch_size=0"], "--batch_size: must be >= 1"),
    ],
)
def test_bad_flags_fail_naming_the_flag(args, message, tmp_path):
    with pytest.raises(ConfigError) as error:
        parse("--flagfile=configs/pgd_at_cifar10.flags", f"--model_dir={tmp_path}", *args)
    assert message in str(error.value)


def test_unparseable_values_are_rejected_by_the_flag_parser():
    with pytest.raises(flags.IllegalFlagValueError, match="eps"):
        parse("--eps=8/0")
    assert parse("--eps=4/255", "--model_dir=x").train_attack.eps == pytest.approx(4 / 255)


def test_model_dir_is_required():
    with pytest.raises(ConfigError, match="--model_dir: is required"):
        parse("--flagfile=configs/smoke.flags")


# ---- the script, as a user runs it ----------------------------------------------------------


def _train_command(method_flagfile, data_dir, model_dir, *extra):
    return [
        sys.executable,
        os.path.join(REPO, "scripts", "train.py"),
        f"--flagfile=configs/{method_flagfile}",
        "--flagfile=configs/smoke.flags",
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        *extra,
    ]


def _run(command, **kwargs):
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_smoke_run_writes_its_files(method, synthetic_cifar10, tmp_path):
    result = _run(_train_command(f"{method}_cifar10.flags", synthetic_cifar10, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    files = set(os.listdir(tmp_path))
    assert {
        "config.json",
        "flags.txt",
        "history.json",
        "best.weights.h5",
        "last.weights.h5",
        "backup",
        "train",
        "validation",
    } <= files
    config = json.load(open(tmp_path / "config.json"))
    assert config["method"]["name"] == method and config["model"]["name"] == "tiny"
    assert f"--method={method}" in open(tmp_path / "flags.txt").read()
    history = json.load(open(tmp_path / "history.json"))
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert history["best"]["epoch"] in (1, 2)
    for entry in history["epochs"]:
        assert 0 <= entry["val_robust_accuracy"] <= 1 and 0 <= entry["val_accuracy"] <= 1
    assert glob.glob(str(tmp_path / "train" / "events.out.tfevents.*"))
    assert "Epoch 2/2" in result.stdout


@pytest.mark.slow
def test_bad_flag_stops_the_script_with_the_message(tmp_path):
    result = _run(_train_command("pgd_at_cifar10.flags", tmp_path, tmp_path / "run", "--eps=-1"))
    assert result.returncode != 0
    assert "--eps: must be a finite number >= 0" in result.stderr
    assert not (tmp_path / "run").exists(), "no work was done"


@pytest.mark.slow
def test_killed_run_resumes_from_last_finished_epoch(synthetic_cifar10, tmp_path):
    command = _train_command("pgd_at_cifar10.flags", synthetic_cifar10, tmp_path, "--epochs=6", "--steps_per_epoch=4")
    history_path = tmp_path / "history.json"
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if history_path.exists() and json.load(open(history_path))["epochs"][-1]["epoch"] >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGKILL)
    process.wait()
    # The backup is written last at each epoch's end: a kill just before it redoes that epoch.
    done = json.load(open(tmp_path / "backup" / "training_metadata.json"))["epoch"]
    assert 1 <= done < 6

    result = _run(command)
    assert result.returncode == 0, result.stderr[-3000:]
    epochs_run = [line for line in result.stdout.splitlines() if line.startswith("Epoch ")]
    assert epochs_run[0].startswith(f"Epoch {done + 1}/6"), epochs_run
    history = json.load(open(history_path))
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3, 4, 5, 6]
    # The optimizer state (step count: LR schedule and attack seeds) resumed rather than restarted.
    with h5py.File(tmp_path / "backup" / "latest.weights.h5", "r") as backup:
        assert int(backup["optimizer/vars/0"][()]) == 6 * 4
    # A finished run rerun does no more training.
    again = _run(command)
    assert again.returncode == 0 and "Epoch " not in again.stdout


USER_MODULE = '''
"""A user's method and backbone, registered from outside robustcl."""
import dataclasses

from keras import layers

from robustcl import methods, models


@dataclasses.dataclass(frozen=True)
class ScaledParams:
    scale: float = methods.param(2.0, "Multiplies the adversarial cross-entropy.")

    def validate(self):
        if self.scale <= 0:
            raise ValueError("scale must be > 0")


@methods.register("scaled_pgd_at")
class ScaledPGDAT(methods.get("pgd_at")):
    Params = ScaledParams

    def losses(self, labels, clean, adversarial, augmented=None):
        (name, term), = super().losses(labels, clean, adversarial, augmented).items()
        return {name: methods.LossTerm(term.values * self.params.scale, term.weights)}


@models.register("user_mlp")
def user_mlp(x, layer_factory):
    return layers.Dense(16, activation="relu")(layers.Flatten()(x))
'''


@pytest.mark.slow
def test_a_users_method_and_backbone_train_without_editing_robustcl(synthetic_cifar10, tmp_path, monkeypatch):
    (tmp_path / "user_code").mkdir()
    (tmp_path / "user_code" / "my_methods.py").write_text(USER_MODULE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "user_code"), os.environ.get("PYTHONPATH", "")]))
    run_dir = tmp_path / "run"
    result = _run(
        _train_command(
            "pgd_at_cifar10.flags",
            synthetic_cifar10,
            run_dir,
            "--extra_modules=my_methods",
            "--method=scaled_pgd_at",
            "--scaled_pgd_at_scale=3",
            "--model=user_mlp",
        ),
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.load(open(run_dir / "config.json"))
    assert config["method"] == {"name": "scaled_pgd_at", "params": {"scale": 3.0}}
    assert config["model"]["name"] == "user_mlp" and config["run"]["extra_modules"] == ["my_methods"]
    # The run loads back (evaluation, export) by importing the module its config names.
    monkeypatch.syspath_prepend(str(tmp_path / "user_code"))
    from robustcl.evaluation import classifiers

    classifier = classifiers.load_run(str(run_dir))
    assert classifier.network.name == "user_mlp"
    missing = _run(
        _train_command("pgd_at_cifar10.flags", synthetic_cifar10, tmp_path / "other", "--extra_modules=no_such_module")
    )
    assert missing.returncode != 0
    assert "--extra_modules: cannot import 'no_such_module': ModuleNotFoundError" in missing.stderr
