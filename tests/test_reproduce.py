"""bench/reproduce.py: a real (tiny) grid through the real scripts, resumed, and its record."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from absl import flags

from robustcl import artifacts, reproduce
from robustcl.cli import flags as cli_flags
from robustcl.config import ConfigError, ReproCell, ReproduceConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flag_values(argv):
    values = flags.FlagValues()
    cli_flags.define_reproduce_flags(values)
    values(["reproduce.py", *argv])
    return values


def _train_flagfile(tmp_path):
    path = tmp_path / "train.flags"
    path.write_text(
        "--flagfile=configs/smoke.flags\n--precision=float32\n--projector_every_epochs=0\n"
        "--val_size=32\n--eval_batch_size=32\n"
    )
    return str(path)


def _one_cell_grid(tmp_path, method="pgd_at", train_flagfile=None, **settings):
    """A grid of one cell (the method's CIFAR-10 flagfile) and seed 0, everything under tmp_path."""
    return ReproduceConfig(
        cells=(ReproCell(method, f"configs/{method}_cifar10.flags"),),
        seeds=(0,),
        train_flagfile=train_flagfile or _train_flagfile(tmp_path),
        data_dir=str(tmp_path),
        runs_dir=str(tmp_path / "runs"),
        record_dir=str(tmp_path),
        record_name="r",
        **settings,
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "--cell: name at least one cell"),
        (["--cell=pgd_at"], "--cell: expected 'NAME METHOD_FLAGFILE"),
        (["--cell=a configs/pgd_at_cifar10.flags", "--cell=a configs/mart_cifar10.flags"], "names repeat"),
        (["--cell=a configs/nothing.flags"], "a: no flagfile configs/nothing.flags"),
        (["--cell=a/b configs/pgd_at_cifar10.flags"], "names a directory"),
        (["--cell=a configs/pgd_at_cifar10.flags eps=1"], "must start with --"),
        (["--cell=a configs/pgd_at_cifar10.flags", "--seeds=0,0"], "--seeds: give distinct seeds"),
        (["--cell=a configs/pgd_at_cifar10.flags", "--eval_attacks=fgsm"], "must include pgd"),
        (["--cell=a configs/pgd_at_cifar10.flags", "--data_dir=/nonexistent"], "--data_dir"),
    ],
)
def test_bad_grid_flags_are_named(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    base = [
        f"--train_flagfile={_train_flagfile(tmp_path)}",
        f"--data_dir={tmp_path}",
        f"--runs_dir={tmp_path / 'runs'}",
        "--record_name=r",
    ]
    with pytest.raises(ConfigError, match=message):
        cli_flags.reproduce_config_from_flags(_flag_values(base + argv))


def test_unknown_evaluation_attacks_are_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    config = cli_flags.reproduce_config_from_flags(
        _flag_values(
            [
                f"--train_flagfile={_train_flagfile(tmp_path)}",
                f"--data_dir={tmp_path}",
                f"--runs_dir={tmp_path / 'runs'}",
                "--record_name=r",
                "--cell=a configs/pgd_at_cifar10.flags",
                "--eval_attacks=pgd,deepfool",
            ]
        )
    )
    with pytest.raises(ConfigError, match=r"--eval_attacks: unknown deepfool; known: autoattack, cw"):
        reproduce.check_settings(config)
    assert not os.path.exists(tmp_path / "runs")


@pytest.mark.parametrize(
    "flagfile, examples", [("configs/repro_cifar10_cpu.flags", 1000), ("configs/repro_cifar10_gpu.flags", 10000)]
)
def test_the_repository_grid_flagfiles_parse(flagfile, examples, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    config = cli_flags.reproduce_config_from_flags(_flag_values([f"--flagfile={flagfile}", f"--data_dir={tmp_path}"]))
    names = [c.name for c in config.cells]
    assert names == [
        "standard",
        "pgd_at",
        "trades",
        "mart",
        "morel_mart",
        "morel_trades",
        "supcon_margin",
        "supcon_margin_m0",
        "anchor",
        "contrastive_at",
    ]
    assert config.seeds == (0, 1) and config.eval_examples == examples
    # Every claim compares cells the grid has.
    for claim in reproduce.CLAIMS:
        for method, baseline, _ in claim["comparisons"]:
            assert method in names and baseline in names


def test_judge_by_the_seeds_spread():
    summary = {"m": {"pgd": (0.40, 0.01, 2)}, "b": {"pgd": (0.30, 0.02, 2)}, "c": {"pgd": (0.31, 0.02, 2)}}
    assert reproduce.judge(summary, "m", "b", "pgd")[0] == "held"
    assert reproduce.judge(summary, "b", "m", "pgd")[0] == "reversed"
    assert reproduce.judge(summary, "c", "b", "pgd")[0] == "not resolved"
    assert reproduce.judge(summary, "m", "b", "fgsm")[0] == "pending"
    assert "+10.0 points" in reproduce.judge(summary, "m", "b", "pgd")[1]
    # One seed has no spread: a 10-point difference is not yet a result.
    one_seed = {"m": {"pgd": (0.40, 0.0, 1)}, "b": {"pgd": (0.30, 0.02, 2)}}
    verdict, text = reproduce.judge(one_seed, "m", "b", "pgd")
    assert verdict == "not resolved" and "one seed on a side" in text


@pytest.mark.slow
def test_tiny_grid_runs_resumes_and_refuses_other_settings(synthetic_cifar10, tmp_path):
    train_flags = _train_flagfile(tmp_path)
    argv = [
        sys.executable,
        os.path.join(REPO, "bench", "reproduce.py"),
        "--cell=pgd_at configs/pgd_at_cifar10.flags",
        "--seeds=3",
        f"--train_flagfile={train_flags}",
        f"--data_dir={synthetic_cifar10}",
        f"--runs_dir={tmp_path / 'runs'}",
        f"--record_dir={tmp_path / 'record'}",
        "--record_name=tiny",
        "--eval_examples=24",
        "--eval_batch_size=24",
        "--pgd_steps=3",
        "--apgd_iterations=3",
        "--square_queries=10",
    ]
    first = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    run = tmp_path / "runs" / "pgd_at" / "seed3"
    state = json.load(open(run / "repro_cell.json"))
    assert {s: state["stages"][s]["status"] for s in reproduce.STAGES} == dict.fromkeys(reproduce.STAGES, "done")
    assert json.load(open(run / "config.json"))["run"]["seed"] == 3
    best = json.load(open(run / "evaluation_best" / "report.json"))
    assert best["num_points"] == 24
    assert {"fgsm", "pgd", "cw", "apgd-ce", "square"} <= {a["attack"] for a in best["attacks"]}
    last = json.load(open(run / "evaluation_last" / "report.json"))
    assert [a["attack"] for a in last["attacks"]] == ["pgd"]

    record = json.load(open(tmp_path / "record" / "tiny.json"))
    (row,) = record["rows"]
    assert row["clean"] == best["clean_accuracy"] and row["worst_case"] == best["worst_case_robust_accuracy"]
    assert row["autoattack"] == [a for a in best["attacks"] if a["attack"] == "square"][0]["robust_accuracy"]
    assert row["last_pgd"] == last["attacks"][0]["robust_accuracy"]
    text = open(tmp_path / "record" / "tiny.md").read()
    assert "Cells finished: 1 of 1." in text and "| pgd_at | 3 |" in text
    # Each row names the machine it ran on (a grid spans sessions on different CPUs).
    assert row["machine"] == record["machine"] and row["machine"].endswith(f"{os.cpu_count()} cores")
    assert f"- A: {row['machine']}" in text and "| A |" in text
    assert os.path.getsize(tmp_path / "record" / "tiny.png") > 1000

    # The same command again: nothing left to do, nothing rerun.
    again = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "] train ..." not in again.stdout and "] eval_best ..." not in again.stdout
    assert json.load(open(run / "repro_cell.json")) == state

    # Other settings for the same run directory are refused, naming the difference.
    other = subprocess.run(
        [a if a != "--pgd_steps=3" else "--pgd_steps=4" for a in argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert other.returncode != 0
    assert "was made with other settings" in other.stderr and "--pgd_steps=4" in other.stderr
    assert json.load(open(tmp_path / "record" / "tiny.json"))["rows"] == record["rows"]  # untouched

    # The grid gains the transfer stage: the surrogate trains once and only the new stage runs on
    # the finished cell, whose rows keep their settings key.
    transfer_argv = argv + ["--surrogate_flagfile=configs/standard_cifar10.flags", "--surrogate_seed=7"]
    gained = subprocess.run(transfer_argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert gained.returncode == 0, gained.stdout[-2000:] + gained.stderr[-3000:]
    assert "[surrogate] train ..." in gained.stdout and "[pgd_at seed 3] eval_transfer ..." in gained.stdout
    assert "[pgd_at seed 3] train ..." not in gained.stdout and "eval_best ..." not in gained.stdout
    surrogate = json.load(open(tmp_path / "runs" / "surrogate" / "seed7" / "config.json"))
    assert surrogate["run"]["seed"] == 7 and surrogate["method"]["name"] == "standard"
    transfer = json.load(open(run / "evaluation_transfer" / "report.json"))
    assert transfer["transfer_from"] and {"transfer-pgd", "transfer-apgd-ce"} <= {
        a["attack"] for a in transfer["attacks"]
    }
    (row,) = json.load(open(tmp_path / "record" / "tiny.json"))["rows"]
    assert row["settings_key"] == record["rows"][0]["settings_key"] and row["clean"] == best["clean_accuracy"]
    assert row["transfer"] == min(
        a["robust_accuracy"] for a in transfer["attacks"] if a["attack"].startswith("transfer-")
    )
    assert row["status"]["eval_transfer"] == "done" and "| transfer |" in open(tmp_path / "record" / "tiny.md").read()
    with_transfer = json.load(open(tmp_path / "record" / "tiny.json"))["rows"]

    # On another machine (no run directories, the committed record): finished rows are kept.
    shutil.rmtree(tmp_path / "runs")
    moved = subprocess.run(transfer_argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert "finished in the record" in moved.stdout and "] train ..." not in moved.stdout
    assert json.load(open(tmp_path / "record" / "tiny.json"))["rows"] == with_transfer
    assert not (tmp_path / "runs" / "pgd_at" / "seed3").exists()


def test_settings_are_what_the_flagfiles_resolve_to(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    train = tmp_path / "train.flags"
    train.write_text("# comment\n--flagfile=configs/smoke.flags\n--epochs=3\n")
    config = _one_cell_grid(tmp_path, train_flagfile=str(train))
    found = reproduce.settings(config, config.cells[0], 0)["train_config"]
    assert found["model"]["name"] == "tiny" and found["optimizer"]["epochs"] == 3
    assert found["method"]["name"] == "pgd_at"
    assert found["data"]["dataset"] == "cifar10"  # from the base the method flagfile includes
    key = reproduce.stages_key(reproduce.settings(config, config.cells[0], 0), reproduce.STAGES)
    # What the flagfiles resolve to is the key, not how they spell it: a line repeating a default
    # changes nothing, a value does.
    train.write_text("# comment\n--flagfile=configs/smoke.flags\n--epochs=3\n--momentum=0.9\n")
    assert reproduce.stages_key(reproduce.settings(config, config.cells[0], 0), reproduce.STAGES) == key
    train.write_text("# comment\n--flagfile=configs/smoke.flags\n--epochs=4\n")
    assert reproduce.stages_key(reproduce.settings(config, config.cells[0], 0), reproduce.STAGES) != key


@pytest.mark.parametrize("grid", ["configs/repro_cifar10_cpu.flags", "configs/repro_cifar10_gpu.flags"])
def test_every_cell_of_the_grids_is_a_valid_training_config(grid, monkeypatch, tmp_path):
    """Each cell's training command (method flagfile, then the protocol, then the cell's flags)
    gives a valid config with the protocol's network, schedule and threat model."""
    monkeypatch.chdir(REPO)
    config = cli_flags.reproduce_config_from_flags(_flag_values([f"--flagfile={grid}", f"--data_dir={tmp_path}"]))
    trained = []
    for cell in config.cells:
        argv = reproduce.commands(config, cell, 0)["train"][2:]
        values = flags.FlagValues()
        cli_flags.define_train_flags(values)
        values(["train.py", *argv])
        train_config = cli_flags.config_from_flags(values)
        trained.append(
            (
                train_config.model.name,
                train_config.optimizer.epochs,
                train_config.optimizer.learning_rate,
                train_config.data.batch_size,
                train_config.train_attack.eps,
                train_config.train_attack.steps,
            )
        )
        if cell.name == "standard":
            assert train_config.train_attack.name == "none"
        if cell.name == "supcon_margin_m0":
            assert train_config.method.params.margin == 0.0
        if cell.name == "morel_trades":
            assert train_config.method.params.accuracy_term == "trades"
    assert len(set(trained)) == 1, trained  # one protocol for every method
    assert trained[0][4] == pytest.approx(8 / 255)


def test_a_record_of_other_settings_is_refused_not_overwritten(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    config = _one_cell_grid(tmp_path)
    row = {
        "cell": "pgd_at",
        "seed": 0,
        "settings_key": "made-elsewhere",
        "status": dict.fromkeys(reproduce.STAGES, "done"),
    }
    (tmp_path / "r.json").write_text(json.dumps({"rows": [row]}))
    with pytest.raises(reproduce.ReproError, match="holds results of pgd_at seed 0 made with other"):
        reproduce.check_settings(config)
    row["settings_key"] = artifacts.settings_key(reproduce.settings(config, config.cells[0], 0))
    (tmp_path / "r.json").write_text(json.dumps({"rows": [row]}))
    reproduce.check_settings(config)
    assert reproduce.recorded_rows(config) == {("pgd_at", 0): row}
    # A row from before rows named their machine ran on the one the record names.
    (tmp_path / "r.json").write_text(json.dumps({"machine": "CPU X, 2 cores", "rows": [row]}))
    assert reproduce.recorded_rows(config)[("pgd_at", 0)] == {**row, "machine": "CPU X, 2 cores"}


def test_a_recorded_row_without_a_gained_stage_is_trained_again(tmp_path, monkeypatch):
    """A row finished in the record before the grid had a transfer stage keeps its results, but its
    checkpoints are elsewhere: the new stage needs the cell trained again. A surrogate trained at a
    cell's seed would be white-box, and is refused."""
    monkeypatch.chdir(REPO)
    before = _one_cell_grid(tmp_path)
    row = {
        "cell": "pgd_at",
        "seed": 0,
        "status": dict.fromkeys(reproduce.STAGES, "done"),
        "settings_key": artifacts.settings_key(reproduce.settings(before, before.cells[0], 0)),
        "clean": 0.3,
    }
    (tmp_path / "r.json").write_text(json.dumps({"rows": [row]}))
    assert reproduce.pending(before, log=lambda _: None) == []
    after = _one_cell_grid(tmp_path, surrogate_flagfile="configs/standard_cifar10.flags", surrogate_seed=5)
    reproduce.check_settings(after)  # the base stages' key is unchanged by the new stage
    said = []
    assert reproduce.pending(after, log=said.append) == [(after.cells[0], 0)]
    assert "without its eval_transfer stage" in said[0] and "training it again" in said[0]
    assert reproduce.collect(after)[0]["clean"] == 0.3  # kept until the rerun has finished
    with pytest.raises(ConfigError, match="--surrogate_seed: 0 is one of --seeds"):
        _one_cell_grid(tmp_path, surrogate_flagfile="configs/standard_cifar10.flags", surrogate_seed=0).validate()


def test_claims_are_put_in_plain_words():
    words = reproduce.in_plain_words
    assert words([("pending", "m", "b", "pgd")]) == "not measured yet."
    assert words([("held", "m", "b", "pgd")]).startswith("the claim held here on every metric")
    summary = {"m": {"pgd": (0.20, 0.001, 2)}, "b": {"pgd": (0.19, 0.001, 2)}}
    verdict, text = reproduce.judge(summary, "m", "b", "pgd", num_points=1000)
    assert verdict == "held" and "within twice the sampling error of 1000 test points (+-3.5 points)" in text
    assert "sampling error" not in reproduce.judge(summary, "m", "b", "pgd", num_points=100_000)[1]
    reversed_ = words([("reversed", "m", "b", "pgd"), ("not resolved", "m", "b", "autoattack")])
    assert reversed_.startswith("it did not hold here: m below b in pgd, beyond the seeds' spread")
    assert "1 of 2 comparisons are within the seeds' spread" in reversed_
    assert "held in part: m over b in pgd; reversed: m below b in cw" in words(
        [("held", "m", "b", "pgd"), ("reversed", "m", "b", "cw")]
    )


def test_run_directories_made_before_resolved_keys_are_read_by_their_flagfiles_text(tmp_path, monkeypatch):
    """A run directory whose state kept its flagfiles' text (before runs were keyed by the config
    they resolve to) is today's run when that text resolves to today's config, whatever the lines
    say it with, and is refused, naming the setting, when it does not."""
    monkeypatch.chdir(REPO)
    config = _one_cell_grid(tmp_path, "trades")
    cell = config.cells[0]
    current = reproduce.settings(config, cell, 0)
    texts = {path: reproduce._flagfile_text(path) for path in (cell.method_flagfile, config.train_flagfile)}
    texts[cell.method_flagfile] += ["--trades_beta=6.0", "--attack=pgd"]  # defaults, spelled out
    legacy = {"settings": {"commands": current["commands"], "flagfiles": texts}}
    reproduce._check_same_settings(legacy, current, "run", config.data_dir)
    texts[cell.method_flagfile] += ["--trades_beta=3.0"]
    with pytest.raises(reproduce.ReproError, match=r"training config method\.params\.beta: 3\.0 now 6\.0"):
        reproduce._check_same_settings(legacy, current, "run", config.data_dir)
