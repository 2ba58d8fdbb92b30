"""bench/reproduce.py: a real (tiny) grid through the real scripts, resumed, and its record."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from robustcl.reproduce import grid
from robustcl.files import fingerprint, settings_key
from robustcl.reproduce import record as record_io
from robustcl.reproduce import flags as repro_flags
from robustcl.reproduce import rows as rows_io
from robustcl.reproduce import statistics
from robustcl.cli import flags as cli_flags
from robustcl.settings import ConfigError
from robustcl.reproduce.settings import ReproCell, ReproduceConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flag_values(argv):
    values = flags.FlagValues()
    repro_flags.define_reproduce_flags(values)
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
        repro_flags.reproduce_config_from_flags(_flag_values(base + argv))


def test_unknown_evaluation_attacks_are_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    config = repro_flags.reproduce_config_from_flags(
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
        grid.check_settings(config)
    assert not os.path.exists(tmp_path / "runs")


SMALL_GRID = [
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
MID_GRID = ["pgd_at", "mart", "morel", "supcon_margin", "supcon_margin_m0", "anchor", "contrastive_at"]


@pytest.mark.parametrize(
    "flagfile, names, examples",
    [
        ("configs/repro_cifar10_cpu.flags", SMALL_GRID, 1000),
        ("configs/repro_cifar10_gpu.flags", SMALL_GRID, 10000),
        ("configs/repro_cifar10_mid.flags", MID_GRID, 1000),
    ],
)
def test_the_repository_grid_flagfiles_parse(flagfile, names, examples, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    config = repro_flags.reproduce_config_from_flags(_flag_values([f"--flagfile={flagfile}", f"--data_dir={tmp_path}"]))
    assert [c.name for c in config.cells] == names
    assert config.seeds == (0, 1) and config.eval_examples == examples
    # Every claim compares cells the grid has.
    for claim in record_io.CLAIMS:
        assert any(a in names and b in names for a, b, _ in claim["comparisons"]), claim["claim"]


def _verdicts(rng, accuracy, n=1000):
    return rng.random(n) < accuracy


def test_paired_comparison_by_a_bootstrap_over_points():
    rng = np.random.default_rng(0)
    base = {s: _verdicts(rng, 0.30) for s in (0, 1)}
    # A method that keeps every point the baseline has and adds 10% of the others: +7 points.
    better = {s: base[s] | _verdicts(rng, 0.10) for s in (0, 1)}
    found = statistics.compare(better, base)
    expected = 100 * np.mean([better[s].mean() - base[s].mean() for s in (0, 1)])
    assert found["diff"] == pytest.approx(expected, abs=1e-9)
    assert found["ci_low"] < found["diff"] < found["ci_high"] and found["verdict"] == "holds"
    assert statistics.compare(base, better)["verdict"] == "contradicted"
    # 6 points gained and 4 lost per seed on 1000: +0.2 points, well inside the sampling error.
    close = {s: base[s].copy() for s in (0, 1)}
    for s in (0, 1):
        close[s][np.flatnonzero(~base[s])[:6]] = True
        close[s][np.flatnonzero(base[s])[:4]] = False
    assert statistics.compare(close, base)["verdict"] == "not resolved"
    # Identical cells: no spread to resample, the interval is the point 0.
    same = statistics.compare(base, base)
    assert (same["diff"], same["ci_low"], same["ci_high"], same["verdict"]) == (0, 0, 0, "not resolved")
    # One seed in common is not a result yet; only the seeds both cells have count.
    assert statistics.compare({0: better[0]}, base)["verdict"] == "pending"
    assert statistics.compare({0: better[0], 5: better[1]}, base)["seeds"] == [0]
    with pytest.raises(ValueError, match="different numbers of points"):
        statistics.compare({0: better[0][:10]}, base)


def test_per_point_verdicts_pack_to_text_and_back():
    verdicts = np.random.default_rng(1).random(10_001) < 0.4
    packed = statistics.pack(verdicts)
    assert json.loads(json.dumps(packed)) == packed
    np.testing.assert_array_equal(statistics.unpack(packed), verdicts)
    np.testing.assert_array_equal(statistics.unpack(statistics.pack([True])), [True])


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
    assert {s: state["stages"][s]["status"] for s in grid.STAGES} == dict.fromkeys(grid.STAGES, "done")
    assert json.load(open(run / "config.json"))["run"]["seed"] == 3
    best = json.load(open(run / "evaluation_best" / "report.json"))
    assert best["num_points"] == 24
    assert {"fgsm", "pgd", "cw", "apgd-ce", "square"} <= {a["attack"] for a in best["attacks"]}
    last = json.load(open(run / "evaluation_last" / "report.json"))
    assert [a["attack"] for a in last["attacks"]] == ["pgd"]

    record = json.load(open(tmp_path / "record" / "tiny.rows.json"))
    (row,) = record["rows"]
    assert row["clean"] == best["clean_accuracy"] and row["worst_case"] == best["worst_case_robust_accuracy"]
    assert row["autoattack"] == [a for a in best["attacks"] if a["attack"] == "square"][0]["robust_accuracy"]
    assert row["last_pgd"] == last["attacks"][0]["robust_accuracy"]
    # Per-point verdicts kept in the committed rows: what the paired tests are made from.
    np.testing.assert_array_equal(statistics.unpack(row["points"]["clean"]), best["per_point"]["clean_correct"])
    aa_stage = best["autoattack"]["stages"][-1]
    np.testing.assert_array_equal(statistics.unpack(row["points"]["autoattack"]), best["per_point"]["robust"][aa_stage])
    assert row["precision"] == "float32" and [e["epoch"] for e in row["history"]] == [1, 2]
    public = json.load(open(tmp_path / "record" / "tiny.json"))
    assert set(public) == {"protocol", "cells", "claims"}
    assert {"model", "params", "train_examples", "epochs", "precision", "cpu"} <= set(public["protocol"])
    (cell,) = public["cells"]
    assert {
        "name": "pgd_at",
        "method": "pgd_at",
        "seed": 3,
        "implementation": "robustcl",
        "clean": best["clean_accuracy"],
        "eval_points_aa": 24,
        "eval_points_pgd": 24,
    }.items() <= cell.items()
    text = open(tmp_path / "record" / "tiny.md").read()
    assert "Cells finished: 1 of 1." in text and "| pgd_at | 3 |" in text
    # Each row names the machine it ran on (a grid spans sessions on different CPUs).
    assert row["machine"] == record["machine"] and row["machine"].endswith(f"{os.cpu_count()} cores")
    assert f"- A: {row['machine']}" in text and "| A |" in text
    assert os.path.getsize(tmp_path / "record" / "tiny.png") > 1000
    assert os.path.getsize(tmp_path / "record" / "tiny_training.png") > 1000

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
    assert json.load(open(tmp_path / "record" / "tiny.rows.json"))["rows"] == record["rows"]  # untouched

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
    (row,) = json.load(open(tmp_path / "record" / "tiny.rows.json"))["rows"]
    assert row["settings_key"] == record["rows"][0]["settings_key"] and row["clean"] == best["clean_accuracy"]
    assert row["transfer"] == min(
        a["robust_accuracy"] for a in transfer["attacks"] if a["attack"].startswith("transfer-")
    )
    assert row["status"]["eval_transfer"] == "done" and "| transfer |" in open(tmp_path / "record" / "tiny.md").read()
    surrogate_weights = tmp_path / "runs" / "surrogate" / "seed7" / "last.weights.h5"
    assert row["surrogate"] == transfer["transfer_fingerprint"] == fingerprint(str(surrogate_weights))
    with_transfer = json.load(open(tmp_path / "record" / "tiny.rows.json"))["rows"]

    # On another machine (no run directories, the committed record): finished rows are kept.
    shutil.rmtree(tmp_path / "runs")
    moved = subprocess.run(transfer_argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert "finished in the record" in moved.stdout and "] train ..." not in moved.stdout
    assert json.load(open(tmp_path / "record" / "tiny.rows.json"))["rows"] == with_transfer
    assert not (tmp_path / "runs" / "pgd_at" / "seed3").exists()

    # The grid gains a PGD-only evaluation on more points; with --commit_record every finished cell's
    # record is committed to the repository that holds it, and nothing else is.
    record_repo = tmp_path / "record"
    subprocess.run(["git", "init", "-q"], cwd=record_repo, check=True)
    for key, value in (("user.email", "grid@example.com"), ("user.name", "grid")):
        subprocess.run(["git", "config", key, value], cwd=record_repo, check=True)
    (record_repo / "unrelated.txt").write_text("not the record's\n")
    wider = transfer_argv + ["--eval_examples_pgd=40", "--commit_record"]
    grown = subprocess.run(wider, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert grown.returncode == 0, grown.stdout[-2000:] + grown.stderr[-3000:]
    assert "[pgd_at seed 3] eval_pgd_all ..." in grown.stdout and "commit:" in grown.stdout
    all_points = json.load(open(run / "evaluation_pgd_all" / "report.json"))
    assert all_points["num_points"] == 40 and [a["attack"] for a in all_points["attacks"]] == ["pgd"]
    (row,) = json.load(open(record_repo / "tiny.rows.json"))["rows"]
    assert row["pgd_all"] == all_points["attacks"][0]["robust_accuracy"] and row["num_points_all"] == 40
    assert statistics.unpack(row["points"]["pgd_all"]).size == 40
    (cell,) = json.load(open(record_repo / "tiny.json"))["cells"]
    assert cell["eval_points_pgd"] == 40 and cell["pgd20"] == row["pgd_all"] and cell["eval_points_aa"] == 24
    committed = subprocess.run(
        ["git", "show", "--name-only", "--format=%s", "HEAD"], cwd=record_repo, capture_output=True, text=True
    ).stdout.split()
    assert {"tiny.rows.json", "tiny.json", "tiny.md", "tiny.png", "tiny_training.png"} <= set(committed)
    assert "unrelated.txt" not in committed
    status = subprocess.run(["git", "status", "--porcelain"], cwd=record_repo, capture_output=True, text=True)
    assert status.stdout.strip() == "?? unrelated.txt"


def test_settings_are_what_the_flagfiles_resolve_to(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    train = tmp_path / "train.flags"
    train.write_text("# comment\n--flagfile=configs/smoke.flags\n--epochs=3\n")
    config = _one_cell_grid(tmp_path, train_flagfile=str(train))
    found = grid.cell_settings(config, config.cells[0], 0)["train_config"]
    assert found["model"]["name"] == "tiny" and found["optimizer"]["epochs"] == 3
    assert found["method"]["name"] == "pgd_at"
    assert found["data"]["dataset"] == "cifar10"  # from the base the method flagfile includes
    key = grid.stages_key(grid.cell_settings(config, config.cells[0], 0), grid.STAGES)
    # What the flagfiles resolve to is the key, not how they spell it: a line repeating a default
    # changes nothing, a value does.
    train.write_text("# comment\n--flagfile=configs/smoke.flags\n--epochs=3\n--momentum=0.9\n")
    assert grid.stages_key(grid.cell_settings(config, config.cells[0], 0), grid.STAGES) == key
    train.write_text("# comment\n--flagfile=configs/smoke.flags\n--epochs=4\n")
    assert grid.stages_key(grid.cell_settings(config, config.cells[0], 0), grid.STAGES) != key


@pytest.mark.parametrize("grid_flagfile", ["configs/repro_cifar10_cpu.flags", "configs/repro_cifar10_gpu.flags"])
def test_every_cell_of_the_grids_is_a_valid_training_config(grid_flagfile, monkeypatch, tmp_path):
    """Each cell's training command (method flagfile, then the protocol, then the cell's flags)
    gives a valid config with the protocol's network, schedule and threat model."""
    monkeypatch.chdir(REPO)
    config = repro_flags.reproduce_config_from_flags(
        _flag_values([f"--flagfile={grid_flagfile}", f"--data_dir={tmp_path}"])
    )
    trained = []
    for cell in config.cells:
        argv = grid.commands(config, cell, 0)["train"][2:]
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
        "status": dict.fromkeys(grid.STAGES, "done"),
    }
    (tmp_path / "r.rows.json").write_text(json.dumps({"rows": [row]}))
    with pytest.raises(grid.ReproError, match="holds results of pgd_at seed 0 made with other"):
        grid.check_settings(config)
    row["settings_key"] = settings_key(grid.cell_settings(config, config.cells[0], 0))
    (tmp_path / "r.rows.json").write_text(json.dumps({"rows": [row]}))
    grid.check_settings(config)
    assert grid.recorded_rows(config) == {("pgd_at", 0): row}
    # A row from before rows named their machine ran on the one the record names.
    (tmp_path / "r.rows.json").write_text(json.dumps({"machine": "CPU X, 2 cores", "rows": [row]}))
    assert grid.recorded_rows(config)[("pgd_at", 0)] == {**row, "machine": "CPU X, 2 cores"}
    # A record from before rows had a file of their own kept them in NAME.json.
    os.remove(tmp_path / "r.rows.json")
    (tmp_path / "r.json").write_text(json.dumps({"rows": [row]}))
    assert grid.recorded_rows(config) == {("pgd_at", 0): row}


def test_a_recorded_row_without_a_gained_stage_is_trained_again(tmp_path, monkeypatch):
    """A row finished in the record before the grid had a transfer stage keeps its results, but its
    checkpoints are elsewhere: the new stage needs the cell trained again. A surrogate trained at a
    cell's seed would be white-box, and is refused."""
    monkeypatch.chdir(REPO)
    before = _one_cell_grid(tmp_path)
    row = {
        "cell": "pgd_at",
        "seed": 0,
        "status": dict.fromkeys(grid.STAGES, "done"),
        "settings_key": settings_key(grid.cell_settings(before, before.cells[0], 0)),
        "clean": 0.3,
    }
    # Recorded before rows kept per-point verdicts: the paired tests need it trained again.
    (tmp_path / "r.rows.json").write_text(json.dumps({"rows": [row]}))
    assert grid.pending(before, log=lambda _: None) == [(before.cells[0], 0)]
    row["points"] = {"clean": statistics.pack([True, False])}
    (tmp_path / "r.rows.json").write_text(json.dumps({"rows": [row]}))
    assert grid.pending(before, log=lambda _: None) == []
    after = _one_cell_grid(tmp_path, surrogate_flagfile="configs/standard_cifar10.flags", surrogate_seed=5)
    grid.check_settings(after)  # the base stages' key is unchanged by the new stage
    said = []
    assert grid.pending(after, log=said.append) == [(after.cells[0], 0)]
    assert "without a stage this grid has" in said[0] and "training it again" in said[0]
    assert rows_io.collect(after)[0]["clean"] == 0.3  # kept until the rerun has finished
    with pytest.raises(ConfigError, match="--surrogate_seed: 0 is one of --seeds"):
        _one_cell_grid(tmp_path, surrogate_flagfile="configs/standard_cifar10.flags", surrogate_seed=0).validate()


def test_a_cell_whose_stage_failed_is_reported_failed_not_finished(tmp_path, monkeypatch):
    """The grid commits its record after every cell it ran; the caller must learn whether the cell
    finished or failed (a failed cell's commit once read "finished"), and hears nothing of a cell
    that had finished before (its commit once carried other cells' progress under its name)."""
    monkeypatch.chdir(REPO)
    config = _one_cell_grid(tmp_path)
    outcomes = {"done": dict.fromkeys(grid.stages(config), "done"), "failed": {"train": "failed (exit 1)"}}
    for outcome, statuses in outcomes.items():
        state = {"stages": {stage: {"status": status} for stage, status in statuses.items()}}
        monkeypatch.setattr(grid, "run_cell", lambda *args, state=state: state)
        told = []
        failed = grid.run_grid(config, log=lambda _: None, on_cell_done=lambda *a: told.append(a))
        assert told == [("pgd_at", 0, outcome == "done")]
        assert failed == ([] if outcome == "done" else [("pgd_at", 0)])
    # Finished on disk before this run: run_cell still sees it (settings are checked), nobody is told.
    directory = grid.run_dir(config, config.cells[0], 0)
    os.makedirs(directory)
    finished = {"stages": {stage: {"status": "done"} for stage in grid.stages(config)}}
    grid.write_json(os.path.join(directory, grid.STATE_FILE), finished)
    monkeypatch.setattr(grid, "run_cell", lambda *args: finished)
    told = []
    assert grid.run_grid(config, log=lambda _: None, on_cell_done=lambda *a: told.append(a)) == []
    assert told == []


def test_run_directories_made_before_resolved_keys_are_read_by_their_flagfiles_text(tmp_path, monkeypatch):
    """A run directory whose state kept its flagfiles' text (before runs were keyed by the config
    they resolve to) is today's run when that text resolves to today's config, whatever the lines
    say it with, and is refused, naming the setting, when it does not."""
    monkeypatch.chdir(REPO)
    config = _one_cell_grid(tmp_path, "trades")
    cell = config.cells[0]
    current = grid.cell_settings(config, cell, 0)
    texts = {path: grid.flagfile_text(path) for path in (cell.method_flagfile, config.train_flagfile)}
    texts[cell.method_flagfile] += ["--trades_beta=6.0", "--attack=pgd"]  # defaults, spelled out
    legacy = {"settings": {"commands": current["commands"], "flagfiles": texts}}
    grid.check_same_settings(legacy, current, "run", config.data_dir)
    texts[cell.method_flagfile] += ["--trades_beta=3.0"]
    with pytest.raises(grid.ReproError, match=r"training config method\.params\.beta: 3\.0 now 6\.0"):
        grid.check_same_settings(legacy, current, "run", config.data_dir)


def test_claims_are_paired_tests_and_their_verdicts_follow_their_intervals(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    config = _one_cell_grid(tmp_path, adequacy_clean=0.55, adequacy_pgd=0.30)
    config = dataclasses.replace(
        config,
        cells=(
            ReproCell("pgd_at", "configs/pgd_at_cifar10.flags"),
            ReproCell("anchor", "configs/anchor_cifar10.flags"),
        ),
        seeds=(0, 1),
    )
    rng = np.random.default_rng(3)
    rows = []
    for seed in (0, 1):
        clean = _verdicts(rng, 0.6, 2000)
        pgd = clean & _verdicts(rng, 0.6, 2000)
        rows.append({"cell": "pgd_at", "seed": seed, "clean": clean.mean(), "pgd": pgd.mean()})
        rows[-1]["points"] = {"clean": statistics.pack(clean), "pgd": statistics.pack(pgd)}
        better = clean | _verdicts(rng, 0.2, 2000)  # ANCHOR: clean accuracy higher, PGD the same points
        rows.append({"cell": "anchor", "seed": seed, "clean": better.mean(), "pgd": pgd.mean()})
        rows[-1]["points"] = {"clean": statistics.pack(better), "pgd": statistics.pack(pgd)}
    summary = record_io.summarize(rows)
    adequate, text = record_io.adequacy(config, summary)
    assert adequate and "reached" in text
    found = {(c["a"], c["b"], c["metric"]): c for c in record_io.claims(config, rows)}
    assert found[("anchor", "pgd_at", "clean")]["verdict"] == "holds"
    assert found[("anchor", "pgd_at", "pgd")]["verdict"] == "not resolved"
    assert found[("anchor", "pgd_at", "autoattack")]["verdict"] == "pending"  # not measured
    for claim in found.values():
        assert {"claim", "a", "b", "metric", "diff", "ci_low", "ci_high", "verdict"} <= set(claim)
        if claim["verdict"] != "pending":
            assert claim["verdict"] == statistics.verdict_of(claim["ci_low"], claim["ci_high"])
            assert claim["ci_low"] <= claim["diff"] <= claim["ci_high"]
    # A baseline below the protocol's size check: no verdict is written.
    weak = dataclasses.replace(config, adequacy_clean=0.9)
    adequate, text = record_io.adequacy(weak, summary)
    assert not adequate and "too small" in text
    assert {c["verdict"] for c in record_io.claims(weak, rows, adequate)} == {
        "withheld: protocol too small",
        "pending",
    }


def test_a_transfer_claim_pairs_only_seeds_scored_on_the_same_surrogate(tmp_path, monkeypatch):
    """A grid resumed on another machine trains its surrogate again, to other weights: a seed whose
    two cells met different surrogates does not pair under transfer (every other metric still does),
    and the record names which surrogate scored which rows."""
    monkeypatch.chdir(REPO)
    config = dataclasses.replace(
        _one_cell_grid(tmp_path),
        cells=(ReproCell("morel", "configs/morel_cifar10.flags"), ReproCell("mart", "configs/mart_cifar10.flags")),
        seeds=(0, 1, 2),
    )
    rng = np.random.default_rng(5)
    # seed 0: both before the fingerprint was recorded; seed 1: the same surrogate; seed 2: different.
    surrogates = {("morel", 0): None, ("mart", 0): None, ("morel", 1): "aaaa", ("mart", 1): "aaaa"}
    surrogates.update({("morel", 2): "aaaa", ("mart", 2): "bbbb"})
    rows = []
    for (cell, seed), surrogate in surrogates.items():
        verdicts = {metric: _verdicts(rng, 0.5, 400) for metric in ("clean", "pgd", "transfer")}
        rows.append(
            {
                "cell": cell,
                "seed": seed,
                "clean": verdicts["clean"].mean(),
                "transfer": verdicts["transfer"].mean(),
                "surrogate": surrogate,
                "points": {metric: statistics.pack(v) for metric, v in verdicts.items()},
            }
        )
    found = {(c["a"], c["b"], c["metric"]): c for c in record_io.claims(config, rows)}
    transfer, pgd = found[("morel", "mart", "transfer")], found[("morel", "mart", "pgd")]
    assert transfer["seeds"] == [0, 1] and transfer["seeds_on_other_surrogates"] == [2]
    assert transfer["points"] == 400  # per test point, averaged over the paired seeds
    assert pgd["seeds"] == [0, 1, 2] and "seeds_on_other_surrogates" not in pgd
    text = "\n".join(record_io._surrogate_lines(rows))
    assert "`aaaa`: morel 1, mart 1, morel 2" in text and "`bbbb`: mart 2" in text
    assert "not recorded (rows from before the fingerprint): morel 0, mart 0" in text
    assert "not paired, scored on different surrogates: [2]" in record_io._claim_line(transfer)
    # One surrogate for every row, this runs directory's: nothing to say; the same rows where this
    # runs directory trained another surrogate (rows only in the committed record): named.
    same = [r for r in rows if r["seed"] == 1]
    assert record_io._surrogate_lines(same, ("aaaa", ", validation accuracy 70.0%")) == []
    legacy = [r for r in rows if r["seed"] == 0]
    assert record_io._surrogate_lines(legacy, (None, "")) == []
    text = "\n".join(record_io._surrogate_lines(legacy, ("cccc", ", validation accuracy 70.0%")))
    assert "not recorded (rows from before the fingerprint): morel 0, mart 0" in text and "cccc" not in text
    text = "\n".join(record_io._surrogate_lines(rows, ("aaaa", ", validation accuracy 70.0%")))
    assert "`aaaa` (this runs directory's surrogate, validation accuracy 70.0%): morel 1, mart 1, morel 2" in text


def test_a_failed_row_is_not_counted_as_a_seed_in_the_summary():
    # A failed row keeps the seconds its training ran before it stopped, and nothing else.
    rows = [
        {"cell": "pgd_at", "seed": 0, "clean": 0.56, "pgd": 0.34, "train_seconds": 2400.0},
        {"cell": "pgd_at", "seed": 1, "train_seconds": 8.0},
    ]
    stats = record_io.summarize(rows)["pgd_at"]
    assert {metric: n for metric, (_, _, n) in stats.items()} == {"clean": 1, "pgd": 1, "train_seconds": 1}
    assert stats["train_seconds"][0] == 2400.0


def test_a_stage_imports_the_robustcl_of_its_own_checkout(tmp_path, monkeypatch):
    """The grid of a second checkout runs that checkout's library, not the one the environment has
    installed (the scripts' own folder is what Python puts on the path)."""
    checkout = tmp_path / "checkout"
    shutil.copytree(os.path.join(REPO, "robustcl"), checkout / "robustcl")
    (checkout / "scripts").mkdir()
    where = "import importlib.util; print(importlib.util.find_spec('robustcl').origin)"
    (checkout / "scripts" / "where.py").write_text(where)
    monkeypatch.setattr(grid, "REPO", str(checkout))
    env = grid.stage_environment(_one_cell_grid(tmp_path))
    found = subprocess.run(
        [sys.executable, "scripts/where.py"], cwd=checkout, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found == str(checkout / "robustcl" / "__init__.py")
