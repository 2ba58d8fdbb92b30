"""The reproduction grid: every cell (a method setting) x seed trained and evaluated by the real
scripts, resumable cell by cell, and the record written from whatever has finished.

Each cell x seed runs three stages as subprocesses of scripts/train.py and scripts/evaluate.py (so a
crash in one leaves the others and the grid alive), in RUNS_DIR/<cell>/seed<S>/:
  train      the cell's method flagfile, then the protocol's train flagfile, then the cell's own
             flags, with --seed and --model_dir; train.py itself resumes an interrupted run from its
             backup at the last finished epoch
  eval_best  the best checkpoint (by validation robust accuracy) under every --eval_attacks
  eval_last  the last checkpoint: clean and PGD (robust overfitting shows as the gap to best)
  eval_transfer  (with --surrogate_flagfile) the best checkpoint scored on black-box transfer
             examples crafted on the surrogate, a network trained once in RUNS_DIR/surrogate/seed<S>/
`repro_cell.json` in each run directory says which stages finished, how long each took and with which
settings; a rerun skips finished stages and refuses a run directory made with other settings. The
record (RECORD_DIR/NAME.json, committed) keeps every finished row with a key of its settings, so a
grid resumed where the run directories are gone (another machine) does not redo those cells.
"""

import concurrent.futures
import contextlib
import functools
import json
import math
import os
import subprocess
import sys
import threading
import time

import numpy as np

from robustcl import artifacts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("train", "eval_best", "eval_last")  # every grid's; a row's settings_key covers these
TRANSFER_STAGE = "eval_transfer"  # a grid with a surrogate's; a row's transfer_key covers it too
SURROGATE = "surrogate"
STATE_FILE = "repro_cell.json"
# A stage that needs no rerun: done, or evaluated with a hard check failing (recorded, not retried).
FINISHED = ("done", "hard_check_failed")
HARD_CHECK_EXIT = 3  # scripts/evaluate.py: an adversarial input left the threat set, or similar


class ReproError(RuntimeError):
    """A run directory cannot be continued with this command."""


def run_dir(config, cell, seed):
    return os.path.join(config.runs_dir, cell.name, f"seed{seed}")


def stages(config):
    return STAGES + ((TRANSFER_STAGE,) if config.surrogate_flagfile else ())


def surrogate_dir(config):
    return os.path.join(config.runs_dir, SURROGATE, f"seed{config.surrogate_seed}")


def _train_command(config, method_flagfile, extra_flags, seed, model_dir):
    return [
        sys.executable,
        os.path.join("scripts", "train.py"),
        f"--flagfile={method_flagfile}",
        f"--flagfile={config.train_flagfile}",
        *extra_flags,
        f"--seed={seed}",
        f"--data_dir={os.path.abspath(config.data_dir)}",
        f"--model_dir={os.path.abspath(model_dir)}",
    ]


def surrogate_command(config):
    return _train_command(config, config.surrogate_flagfile, (), config.surrogate_seed, surrogate_dir(config))


def commands(config, cell, seed):
    """{stage: argv} for one cell x seed (run from the repository root: flagfiles include others
    by paths relative to it)."""
    model_dir = os.path.abspath(run_dir(config, cell, seed))
    evaluate = [
        sys.executable,
        os.path.join("scripts", "evaluate.py"),
        f"--model_dir={model_dir}",
        f"--data_dir={os.path.abspath(config.data_dir)}",
        f"--num_examples={config.eval_examples}",
        f"--pgd_steps={config.pgd_steps}",
        f"--apgd_iterations={config.apgd_iterations}",
        f"--square_queries={config.square_queries}",
        f"--batch_size={config.eval_batch_size}",
        "--nosweep",
        "--projector_examples=0",
        "--seed=0",
    ]
    argvs = {
        "train": _train_command(config, cell.method_flagfile, cell.extra_flags, seed, model_dir),
        "eval_best": evaluate + ["--checkpoint=best", f"--attacks={','.join(config.eval_attacks)}"],
        "eval_last": evaluate + ["--checkpoint=last", "--attacks=pgd"],
    }
    if config.surrogate_flagfile:
        # The evaluation runs at least one white-box attack; FGSM is the cheapest. The transfer
        # rows (PGD and APGD-CE crafted on the surrogate) are what this stage is for.
        argvs[TRANSFER_STAGE] = evaluate + [
            "--checkpoint=best",
            "--attacks=fgsm",
            f"--transfer_from={os.path.abspath(surrogate_dir(config))}",
            # The surrogate is naturally trained: its best epoch by validation robust accuracy is an
            # early one; the literature's black-box protocol attacks with the trained network.
            "--transfer_checkpoint=last",
            f"--output_dir={os.path.join(model_dir, TRANSFER_OUTPUT)}",
        ]
    return argvs


TRANSFER_OUTPUT = "evaluation_transfer"


def _write_json(path, value):
    artifacts.atomic_write_text(path, json.dumps(value, indent=2))


def load_state(directory):
    return artifacts.read_json(os.path.join(directory, STATE_FILE), {})


def _flagfile_text(path):
    """A flagfile with the flagfiles it includes (what the record shows as the protocol)."""
    lines = []
    with open(os.path.join(REPO, path) if not os.path.isabs(path) else path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("--flagfile="):
                lines += _flagfile_text(line.split("=", 1)[1])
            elif line and not line.startswith("#"):
                lines.append(line)
    return lines


_PATH_FLAGS = ("--model_dir=", "--data_dir=", "--transfer_from=", "--output_dir=")


def _portable(argv):
    """A command less the interpreter and where the data and runs live (they move between machines)."""
    return [a for a in argv[1:] if not a.startswith(_PATH_FLAGS)]


@functools.lru_cache(maxsize=None)
def _resolved_train_config(args, data_dir, flagfile_texts=()):
    """The config a scripts/train.py command trains (its flagfiles read from the repository root),
    as a dict, less where the data and the run live: what its results depend on, however the
    flagfiles spell it (a line repeating a default changes nothing). `flagfile_texts` only keys
    the cache: a flagfile edited while the process runs is read again."""
    from absl import flags as absl_flags

    from robustcl.cli import flags as cli_flags

    values = absl_flags.FlagValues()
    cli_flags.define_train_flags(values)
    with contextlib.chdir(REPO):
        values(["train.py", *args, f"--data_dir={data_dir}", "--model_dir=unused"])
        resolved = cli_flags.config_from_flags(values).to_dict()
    del resolved["run"]["model_dir"], resolved["data"]["data_dir"]
    return json.loads(json.dumps(resolved))  # as a run directory's state file keeps it (lists, not tuples)


def _train_config(argv, data_dir):
    args = tuple(_portable(argv)[1:])
    texts = tuple(tuple(_flagfile_text(a.split("=", 1)[1])) for a in args if a.startswith("--flagfile="))
    return _resolved_train_config(args, os.path.abspath(data_dir), texts)


def settings(config, cell, seed):
    """What a run's results depend on: its commands (less where the data and the run live) and the
    training config they resolve to; with a transfer stage, also the surrogate's."""
    argvs = commands(config, cell, seed)
    current = {
        "commands": {stage: _portable(argv) for stage, argv in argvs.items()},
        "train_config": _train_config(argvs["train"], config.data_dir),
    }
    if config.surrogate_flagfile:
        surrogate = surrogate_settings(config)
        current[SURROGATE] = {"command": surrogate["commands"]["train"], "train_config": surrogate["train_config"]}
    return current


def surrogate_settings(config):
    """The surrogate run directory's settings (its one stage, train)."""
    argv = surrogate_command(config)
    return {"commands": {"train": _portable(argv)}, "train_config": _train_config(argv, config.data_dir)}


def stages_key(current, names):
    """The key of the settings some stages depend on. A row's base stages (STAGES) keep the key
    they had before a grid gained its transfer stage, so adding the stage keeps finished rows."""
    part = {"commands": {s: current["commands"][s] for s in names}, "train_config": current["train_config"]}
    if TRANSFER_STAGE in names:
        part[SURROGATE] = current[SURROGATE]
    return artifacts.settings_key(part)


def _legacy_train_config(portable_args, flagfile_lines, data_dir):
    """The config of a command from before run directories kept their resolved config: they kept
    the text of each flagfile (includes expanded), which is parsed in place of the files."""
    import tempfile

    with tempfile.TemporaryDirectory() as copies:
        args = []
        for arg in portable_args[1:]:
            if arg.startswith("--flagfile="):
                path = arg.split("=", 1)[1]
                copy = os.path.join(copies, f"{len(args)}.flags")
                with open(copy, "w") as f:
                    f.write("\n".join(flagfile_lines[path]) + "\n")
                arg = f"--flagfile={copy}"
            args.append(arg)
        # Not through the cache: the copies' paths are new on every call.
        return _resolved_train_config.__wrapped__(tuple(args), os.path.abspath(data_dir))


def _upgraded(old, data_dir):
    """Settings stored before runs were keyed by their resolved config, in today's form."""
    if "train_config" in old or "flagfiles" not in old:
        return old
    texts = old["flagfiles"]
    upgraded = {
        "commands": old["commands"],
        "train_config": _legacy_train_config(old["commands"]["train"], texts, data_dir),
    }
    if SURROGATE in old:
        command = old[SURROGATE]["command"]
        surrogate_flagfile = command[1].split("=", 1)[1]  # scripts/train.py --flagfile=SURROGATE ...
        texts = {**texts, surrogate_flagfile: old[SURROGATE]["flagfile"]}
        upgraded[SURROGATE] = {"command": command, "train_config": _legacy_train_config(command, texts, data_dir)}
    return upgraded


def _check_same_settings(state, current, directory, data_dir):
    """Refuses a run directory whose stages were made with other settings. A stage it has not run
    yet (one the grid gained since) is not a difference."""
    if not state:
        return
    old_settings = _upgraded(state["settings"], data_dir)
    differences = [
        ("commands", stage, old_settings["commands"][stage], current["commands"].get(stage))
        for stage in old_settings["commands"]
        if old_settings["commands"][stage] != current["commands"].get(stage)
    ]
    if old_settings["train_config"] != current["train_config"]:
        setting = _config_difference(old_settings["train_config"], current["train_config"])
        differences.append(("training config", *setting))
    if SURROGATE in old_settings and old_settings[SURROGATE] != current.get(SURROGATE):
        differences.append((SURROGATE, "training", old_settings[SURROGATE], current.get(SURROGATE)))
    if differences:
        key, name, old, new = differences[0]
        raise ReproError(
            f"{directory} was made with other settings ({key} {name}: {old} now {new}); rerun with "
            "the settings it was made with, or delete it"
        )


def _config_difference(old, new, prefix=""):
    """(setting, old value, new value) of the first setting two resolved configs disagree on."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _config_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}", a, b
    return None


def check_settings(config):
    """Refuses, before anything is written, attacks the evaluation does not know and results of
    other settings mixed into this grid: a run directory or a finished row of the record made with
    settings other than this command's. Raises ConfigError or ReproError."""
    from robustcl.evaluation import attacks as eval_attacks

    eval_attacks.check("eval_attacks", config.eval_attacks)
    record_path = _record_path(config)
    record_rows = {(r["cell"], r["seed"]): r for r in artifacts.read_json(record_path, {}).get("rows", [])}
    if config.surrogate_flagfile:
        _check_same_settings(
            load_state(surrogate_dir(config)), surrogate_settings(config), surrogate_dir(config), config.data_dir
        )
    for cell in config.cells:
        for seed in config.seeds:
            current = settings(config, cell, seed)
            directory = run_dir(config, cell, seed)
            _check_same_settings(load_state(directory), current, directory, config.data_dir)
            row = record_rows.get((cell.name, seed))
            if not row or os.path.isdir(directory):  # the run directory's results stand for the row
                continue
            other = _finished(row) and row.get("settings_key") != stages_key(current, STAGES)
            if config.surrogate_flagfile and _finished(row, stages(config)):
                other = other or row.get("transfer_key") != stages_key(current, stages(config))
            if other:
                raise ReproError(
                    f"{record_path} holds results of {cell.name} seed {seed} made with other settings; "
                    "rerun with the settings it was made with, or give another --record_name"
                )


def _finished(row, names=STAGES):
    return all(row["status"].get(s) in FINISHED for s in names)


def _complete(config, row, current):
    """Whether a recorded row has every stage of this grid, made with today's settings."""
    if not config.surrogate_flagfile:
        return True  # recorded_rows kept only rows whose base stages match
    return _finished(row, stages(config)) and row.get("transfer_key") == stages_key(current, stages(config))


def _record_path(config):
    return os.path.join(config.record_dir, config.record_name + ".json")


def recorded_rows(config):
    """{(cell, seed): row} of finished rows in the committed record made with today's settings: a
    grid resumed on another machine (without the run directories) keeps them instead of rerunning.
    A row from before rows named their machine ran on the machine the record names."""
    record = artifacts.read_json(_record_path(config), {})
    keys = {
        (c.name, seed): stages_key(settings(config, c, seed), STAGES) for c in config.cells for seed in config.seeds
    }
    earlier = {"machine": record["machine"]} if "machine" in record else {}
    return {
        (r["cell"], r["seed"]): {**earlier, **r}
        for r in record.get("rows", [])
        if _finished(r) and keys.get((r["cell"], r["seed"])) == r.get("settings_key")
    }


def run_cell(config, cell, seed, log=print, machine=None):
    """Runs the stages of one cell x seed that have not finished, noting each stage's machine (a grid
    spans sessions on different CPUs, and its times only compare on one). Returns its state dict."""
    return _run_stages(
        config,
        run_dir(config, cell, seed),
        f"{cell.name} seed {seed}",
        commands(config, cell, seed),
        settings(config, cell, seed),
        {"cell": cell.name, "seed": seed},
        log,
        machine,
    )


def train_surrogate(config, log=print, machine=None):
    """Trains the transfer stage's surrogate once for the whole grid (resumable like a cell)."""
    state = _run_stages(
        config,
        surrogate_dir(config),
        SURROGATE,
        {"train": surrogate_command(config)},
        surrogate_settings(config),
        {"cell": SURROGATE, "seed": config.surrogate_seed},
        log,
        machine,
    )
    if state["stages"]["train"]["status"] != "done":
        raise ReproError(f"the surrogate's training failed: see {surrogate_dir(config)}/train.log")


def _run_stages(config, directory, label, argvs, current, identity, log, machine):
    os.makedirs(directory, exist_ok=True)
    state = load_state(directory)
    _check_same_settings(state, current, directory, config.data_dir)
    # The settings checked are today's or a part of them (stages the grid has gained since).
    state = {**identity, "stages": {}, **state, "settings": current}
    env = dict(os.environ)
    if config.threads_per_cell:
        env["TF_NUM_INTRAOP_THREADS"] = str(config.threads_per_cell)
        env["TF_NUM_INTEROP_THREADS"] = "1"
    for stage, argv in argvs.items():
        record = state["stages"].get(stage, {})
        if record.get("status") in FINISHED:
            continue
        log(f"[{label}] {stage} ...")
        record["attempts"] = record.get("attempts", 0) + 1
        if machine:
            record["machine"] = machine
        state["stages"][stage] = record
        _write_json(os.path.join(directory, STATE_FILE), state)
        start = time.perf_counter()
        with open(os.path.join(directory, f"{stage}.log"), "a") as output:
            code = subprocess.call(argv, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
        # Only a finished invocation's time is known: an interrupted one is lost (counted in
        # "attempts", so the record can say the time is a lower bound).
        record["seconds"] = record.get("seconds", 0.0) + seconds
        if code == 0:
            record["status"] = "done"
        elif stage != "train" and code == HARD_CHECK_EXIT:
            record["status"] = "hard_check_failed"
        else:
            record["status"] = f"failed (exit {code})"
        _write_json(os.path.join(directory, STATE_FILE), state)
        log(f"[{label}] {stage}: {record['status']} in {seconds:.0f} s")
        if record["status"].startswith("failed"):
            break
    return state


def pending(config, log=print):
    """The (cell, seed)s with stages left to run, seed-major. A row finished in the committed record
    whose run directory is elsewhere is done, unless it lacks a stage the grid has gained: then its
    cell is trained again, since the new stage needs its checkpoints."""
    recorded = recorded_rows(config)
    jobs = []
    for seed in config.seeds:
        for cell in config.cells:
            row = recorded.get((cell.name, seed))
            if row and not os.path.isdir(run_dir(config, cell, seed)):
                if _complete(config, row, settings(config, cell, seed)):
                    log(f"[{cell.name} seed {seed}] finished in the record; its run directory is elsewhere")
                    continue
                # Its checkpoints stayed on another machine: the new stage needs them trained again.
                log(
                    f"[{cell.name} seed {seed}] in the record without its {TRANSFER_STAGE} stage and its "
                    "run directory is elsewhere: training it again"
                )
            jobs.append((cell, seed))
    return jobs


def run_grid(config, log=print, on_cell_done=None, machine=None):
    """Runs every unfinished cell x seed (config.parallel at once), seed-major so that each seed's
    whole row of methods finishes before the next seed starts. Returns the failed (cell, seed)s."""
    jobs = pending(config, log)
    lock = threading.Lock()
    failed = []
    if config.surrogate_flagfile and any(
        load_state(run_dir(config, cell, seed)).get("stages", {}).get(TRANSFER_STAGE, {}).get("status") not in FINISHED
        for cell, seed in jobs
    ):
        train_surrogate(config, log, machine)

    def job(cell, seed):
        try:
            state = run_cell(config, cell, seed, log, machine)
            ok = all(state["stages"].get(s, {}).get("status") in FINISHED for s in stages(config))
        except ReproError as error:
            log(f"[{cell.name} seed {seed}] {error}")
            ok = False
        with lock:
            if not ok:
                failed.append((cell.name, seed))
            if on_cell_done:
                on_cell_done()

    with concurrent.futures.ThreadPoolExecutor(max_workers=config.parallel) as pool:
        for future in [pool.submit(job, cell, seed) for cell, seed in jobs]:
            future.result()
    return failed


# ---- the record -----------------------------------------------------------------------------------


def _row_accuracy(report, attack):
    for row in report["attacks"]:
        if row["attack"] == attack:
            return row["robust_accuracy"]
    return None


def collect(config):
    """One row per cell x seed with whatever has finished (None where not yet)."""
    recorded = recorded_rows(config)
    names = stages(config)
    rows = []
    for cell in config.cells:
        for seed in config.seeds:
            directory = run_dir(config, cell, seed)
            state = load_state(directory)
            current = settings(config, cell, seed)
            row = recorded.get((cell.name, seed))
            # A recorded row stands until its run directory here has finished the same stages (a
            # cell trained again for a stage the grid gained).
            if row and not (
                state and _finished({"status": {s: v.get("status") for s, v in state.get("stages", {}).items()}})
            ):
                rows.append(row)
                continue
            try:
                _check_same_settings(state, current, directory, config.data_dir)
            except ReproError:  # refused by run_cell; not today's figures
                rows.append(
                    {
                        "cell": cell.name,
                        "seed": seed,
                        "settings_key": stages_key(current, STAGES),
                        "status": dict.fromkeys(names, "made with other settings"),
                        "train_seconds": None,
                        "train_attempts": 0,
                        "eval_seconds": 0.0,
                        "best_epoch": None,
                        "epochs": 0,
                    }
                )
                continue
            best = artifacts.read_json(os.path.join(artifacts.evaluation_dir(directory, "best"), artifacts.REPORT))
            last = artifacts.read_json(os.path.join(artifacts.evaluation_dir(directory, "last"), artifacts.REPORT))
            transfer = artifacts.read_json(os.path.join(directory, TRANSFER_OUTPUT, artifacts.REPORT))
            history = artifacts.read_json(os.path.join(directory, artifacts.HISTORY), {})
            done = state.get("stages", {})
            row = {
                "cell": cell.name,
                "seed": seed,
                "settings_key": stages_key(current, STAGES),
                "status": {s: done.get(s, {}).get("status", "not run") for s in names},
                "train_seconds": done.get("train", {}).get("seconds"),
                "train_attempts": done.get("train", {}).get("attempts", 0),
                "eval_seconds": sum(done.get(s, {}).get("seconds", 0.0) for s in names[1:]),
                "best_epoch": (history.get("best") or {}).get("epoch"),
                "epochs": len(history.get("epochs", [])),
            }
            if config.surrogate_flagfile:
                row["transfer_key"] = stages_key(current, names)
            machines = list(dict.fromkeys(done[s]["machine"] for s in names if done.get(s, {}).get("machine")))
            if machines:
                row["machine"] = " + ".join(machines)
            if best:
                # Evaluations from before the chunked evaluation drew their random starts per batch.
                row["eval_draws"] = "per chunk" if "chunk_size" in best else "per batch"
                row.update(
                    {
                        "clean": best["clean_accuracy"],
                        "fgsm": _row_accuracy(best, "fgsm"),
                        "pgd": _row_accuracy(best, "pgd"),
                        "cw": _row_accuracy(best, "cw"),
                        "autoattack": (best.get("autoattack") or {}).get(
                            "robust_accuracy", _row_accuracy(best, "square")
                        ),
                        "worst_case": best["worst_case_robust_accuracy"],
                        "num_points": best["num_points"],
                        "warnings": best["warnings"],
                    }
                )
            if last:
                row.update({"last_clean": last["clean_accuracy"], "last_pgd": _row_accuracy(last, "pgd")})
            if transfer:
                found = [a["robust_accuracy"] for a in transfer["attacks"] if a["attack"].startswith("transfer-")]
                row.update(
                    {
                        "transfer_pgd": _row_accuracy(transfer, "transfer-pgd"),
                        "transfer_apgd_ce": _row_accuracy(transfer, "transfer-apgd-ce"),
                        "transfer": min(found) if found else None,
                    }
                )
            rows.append(row)
    return rows


# "transfer": the lower robust accuracy of the two transfer attacks crafted on the surrogate.
METRICS = ("clean", "fgsm", "pgd", "cw", "autoattack", "worst_case", "transfer", "last_clean", "last_pgd")


def summarize(rows):
    """{cell: {metric: (mean, spread, n)}} over the seeds that have the metric; spread is half the
    range (with 2 seeds, each seed lies at mean +- spread)."""
    out = {}
    for cell in dict.fromkeys(r["cell"] for r in rows):
        stats = {}
        for metric in METRICS + ("train_seconds",):
            values = [r[metric] for r in rows if r["cell"] == cell and r.get(metric) is not None]
            if values:
                stats[metric] = (float(np.mean(values)), float((max(values) - min(values)) / 2), len(values))
        out[cell] = stats
    return out


# The seeds' claims, each as: a method cell that should beat baseline cells on metrics.
CLAIMS = [
    {
        "paper": "MOREL (Hotegni & Peitz 2024)",
        "claim": "MOREL beats TRADES and MART against white-box attacks (and against black-box transfer attacks)",
        "comparisons": [
            ("morel_mart", "mart", ("pgd", "autoattack", "worst_case", "transfer")),
            ("morel_trades", "trades", ("pgd", "autoattack", "worst_case", "transfer")),
        ],
        "not_measured": "query-based black-box attacks on their own (Square runs inside the AutoAttack "
        "cascade, on the points the gradient stages left); transfer from surrogates "
        "other than one naturally trained network",
    },
    {
        "paper": "Supervised contrastive learning with a margin",
        "claim": "the margin gains up to 2.5 points of FGSM accuracy (CIFAR-100, ResNet-18)",
        "comparisons": [("supcon_margin", "supcon_margin_m0", ("fgsm",))],
        "not_measured": "CIFAR-100 (here CIFAR-10)",
    },
    {
        "paper": "ANCHOR (Bhattacharya et al. 2023)",
        "claim": "ANCHOR beats standard adversarial training in clean and PGD-20 accuracy (CIFAR-10, eps 0.031)",
        "comparisons": [("anchor", "pgd_at", ("clean", "pgd"))],
        "not_measured": "",
    },
    {
        "paper": "Contrastive adversarial training",
        "claim": "+3.2% on average under PGD and AutoAttack over adversarial training",
        "comparisons": [("contrastive_at", "pgd_at", ("pgd", "autoattack"))],
        "not_measured": "",
    },
]


def judge(summary, method, baseline, metric, num_points=None):
    """(verdict, text) for method vs baseline on one metric, by the seeds' spread. With the number
    of test points, a held or reversed difference smaller than twice the test set's sampling error
    (two independent binomial proportions) says so: the seeds agree, but another draw of test
    points could move it."""
    if metric not in summary.get(method, {}) or metric not in summary.get(baseline, {}):
        return "pending", f"{metric}: not measured yet"
    m, m_spread, m_n = summary[method][metric]
    b, b_spread, b_n = summary[baseline][metric]
    gain = 100 * (m - b)
    text = (
        f"{metric}: {100 * m:.1f} +- {100 * m_spread:.1f} vs {100 * b:.1f} +- {100 * b_spread:.1f} "
        f"({gain:+.1f} points; seeds {m_n}/{b_n})"
    )
    if min(m_n, b_n) < 2:  # one seed has no spread: any difference would pass for a result
        return "not resolved", text + ", one seed on a side: no spread to judge by yet"
    verdict = "held" if m - m_spread > b + b_spread else "reversed" if m + m_spread < b - b_spread else "not resolved"
    if verdict != "not resolved" and num_points and metric not in ("train_seconds",):
        error = 100 * math.sqrt((m * (1 - m) + b * (1 - b)) / num_points)
        if abs(gain) < 2 * error:
            text += f", within twice the sampling error of {num_points} test points (+-{2 * error:.1f} points)"
    return verdict, text


def _fmt(value):
    return "-" if value is None else f"{100 * value:.1f}"


def _surrogate_accuracy(config):
    """', validation accuracy X%' of the surrogate's last epoch, when its history is here."""
    history = artifacts.read_json(os.path.join(surrogate_dir(config), artifacts.HISTORY), {})
    epochs = history.get("epochs") or []
    if not epochs or "val_accuracy" not in epochs[-1]:
        return ""
    return f", validation accuracy {100 * epochs[-1]['val_accuracy']:.1f}%"


def markdown(config, rows, summary, machine, software, command):
    lines = [
        f"# Reproduction record: {config.record_name}",
        "",
        "Produced by",
        "",
        f"    {command}",
        "",
        "Rerunning the same command skips every finished cell and continues an interrupted one; "
        f"the TensorBoard run directories are written to `{config.runs_dir}/<cell>/seed<S>/` "
        "(not committed).",
        "",
        f"This command last ran on: {machine}. Software: {software}.",
        "",
    ]
    finished = [r for r in rows if _finished(r, stages(config))]
    # A grid spans sessions, and sessions get different CPUs: times compare only on one machine.
    machines = list(dict.fromkeys(r["machine"] for r in rows if r.get("machine")))
    labels = {m: chr(ord("A") + i) for i, m in enumerate(machines)}
    if machines:
        lines += [
            "Machines the rows ran on (the results table's `machine` column; times compare only within one machine):",
            "",
        ]
        lines += [f"- {labels[m]}: {m}" for m in machines]
        lines.append("")
    lines += [f"Cells finished: {len(finished)} of {len(rows)}."]
    if finished:
        train = np.mean([r["train_seconds"] for r in finished]) / 60
        evaluate = np.mean([r["eval_seconds"] for r in finished]) / 60
        lines.append(
            f"Measured per finished cell: {train:.1f} min training + {evaluate:.1f} min "
            f"evaluation on average; with {config.parallel} cell(s) at a time "
            f"(--threads_per_cell={config.threads_per_cell}) the whole grid of {len(rows)} "
            f"takes about {len(rows) * (train + evaluate) / config.parallel / 60:.1f} h of "
            "wall time at that rate (averaged over the rows' machines)."
        )
    draws = {r.get("eval_draws") for r in finished} - {None}
    if len(draws) > 1:
        by_batch = ", ".join(f"{r['cell']} s{r['seed']}" for r in finished if r.get("eval_draws") == "per batch")
        lines.append(
            f"Evaluation code changed during the grid: the best checkpoints of {by_batch} were "
            "evaluated with random starts drawn per batch, the others with draws keyed per "
            "chunk of points; the protocol (attacks, budgets, points, seed) is the same."
        )
    lines.append("")
    lines += [
        "## Protocol",
        "",
        f"- Training: each cell's method flagfile, then `{config.train_flagfile}` (the same "
        "network, data subset, epochs, batch, optimizer, schedule and training threat model "
        "for every method), then the cell's own flags:",
        "",
    ]
    for line in _flagfile_text(config.train_flagfile):
        lines.append(f"      {line}")
    lines += ["", "  Cells:", ""]
    for cell in config.cells:
        extra = " ".join(cell.extra_flags)
        lines.append(f"  - `{cell.name}`: `{cell.method_flagfile}` {('`' + extra + '`') if extra else ''}")
    lines += [
        "",
        "- Model selection: the best epoch by validation robust accuracy (validation "
        "held out from training; the test set is never used for selection).",
        f"- Evaluation of the best checkpoint on the first {config.eval_examples} CIFAR-10 test "
        f"images (exact pixels: ../shared/data/README.md): clean, "
        f"{', '.join(config.eval_attacks)} (PGD-{config.pgd_steps}, CW-{config.pgd_steps}, "
        f"AutoAttack standard cascade APGD-CE/APGD-T/FAB-T/Square with {config.apgd_iterations} "
        f"iterations and {config.square_queries} queries), per-example worst case over all; the "
        f"last checkpoint gets clean and PGD-{config.pgd_steps}. Threat model L-inf, the "
        "training run's eps.",
        "",
    ]
    if config.surrogate_flagfile:
        lines[-1:-1] = [
            f"- Black-box transfer (column `transfer`): a surrogate trained once with "
            f"`{config.surrogate_flagfile}` and the protocol's training flags at seed "
            f"{config.surrogate_seed} (not a seed of any cell, so no cell is its own surrogate; its last "
            f"checkpoint{_surrogate_accuracy(config)}) crafts "
            f"PGD-{config.pgd_steps} and APGD-CE ({config.apgd_iterations} iterations) examples on the "
            "same test points; a point counts as robust when the cell's best checkpoint classifies it "
            "correctly clean and on the surrogate's example. The column is the lower of the two "
            "attacks' accuracies (the TRADES and MART papers' black-box protocol: a naturally "
            "trained surrogate of the same architecture)."
        ]
    lines += [
        "## Results (accuracy %, best checkpoint unless marked last)",
        "",
        "| cell | seed | clean | FGSM | PGD | CW | AA | worst case | transfer | last clean | last PGD "
        "| best epoch | train time | eval time | machine | warnings |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("clean") is None and r["status"]["train"] != "done":
            status = r["status"]["train"]
            lines.append(f"| {r['cell']} | {r['seed']} | {status} |" + "  |" * 13)
            continue
        train_time = "-" if r["train_seconds"] is None else f"{r['train_seconds'] / 60:.1f} min"
        if r["train_attempts"] > 1:
            train_time += " (resumed: lower bound)"
        warnings = "; ".join(r.get("warnings", [])) or ""
        lines.append(
            f"| {r['cell']} | {r['seed']} | {_fmt(r.get('clean'))} | {_fmt(r.get('fgsm'))} | "
            f"{_fmt(r.get('pgd'))} | {_fmt(r.get('cw'))} | {_fmt(r.get('autoattack'))} | "
            f"{_fmt(r.get('worst_case'))} | {_fmt(r.get('transfer'))} | {_fmt(r.get('last_clean'))} | "
            f"{_fmt(r.get('last_pgd'))} | "
            f"{r['best_epoch'] or '-'}/{r['epochs']} | {train_time} | {r['eval_seconds'] / 60:.1f} min | "
            f"{labels.get(r.get('machine'), '-')} | {warnings} |"
        )
    lines += [
        "",
        "Mean +- spread over seeds (spread: half the range):",
        "",
        "| cell | seeds | clean | FGSM | PGD | CW | AA | worst case | transfer | last clean | last PGD |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell, stats in summary.items():
        cells = []
        for metric in METRICS:
            if metric in stats:
                mean, spread, _ = stats[metric]
                cells.append(f"{100 * mean:.1f} +- {100 * spread:.1f}")
            else:
                cells.append("-")
        seeds = max((s[2] for s in stats.values()), default=0)
        lines.append(f"| {cell} | {seeds} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"![clean vs AutoAttack]({config.record_name}.png)",
        "",
        "## The claims",
        "",
        "A claim holds here when the method's range over seeds lies above the baseline's, is "
        "reversed when below, and is not resolved when the ranges overlap (2 seeds cannot tell "
        "such a difference from noise) or a side has one seed so far (no spread to judge by). "
        "Every seed is evaluated on the same test points, so the verdict does not see the test "
        "set's own sampling error; a held or reversed difference smaller than twice that error "
        "is marked, as the seeds agreeing on a difference another test set could move.",
        "",
    ]
    for claim in CLAIMS:
        lines.append(f"- **{claim['paper']}**: {claim['claim']}.")
        verdicts = []
        for method, baseline, metrics in claim["comparisons"]:
            for metric in metrics:
                verdict, text = judge(summary, method, baseline, metric, config.eval_examples)
                noisy = "within twice the sampling error" in text
                verdicts.append(
                    (verdict, method, baseline, f"{metric} (within the test set's sampling error)" if noisy else metric)
                )
                lines.append(f"  - `{method}` vs `{baseline}`, {text}: **{verdict}**")
        lines.append(f"  - In plain words: {in_plain_words(verdicts)}")
        if claim["not_measured"]:
            lines.append(f"  - Not measured here: {claim['not_measured']}.")
    lines += ["", "## What this scale cannot tell", ""] + [f"- {item}" for item in SCALE_LIMITS]
    return "\n".join(lines) + "\n"


# What a CPU-scale grid (a tiny CNN, 10,000 training images, 5 epochs, 2 seeds, 1000 test points)
# cannot say about the papers' claims, whatever its verdicts.
SCALE_LIMITS = [
    "The papers train ResNet-18 or WRN-34-10 for 100 epochs or more on all 50,000 images and report "
    "clean accuracies of 80% and more; here every method stays far from convergence (clean accuracy "
    "roughly 25-40%). A gain that appears only late in training, or needs a network with the "
    "capacity to separate clean and adversarial features, cannot show here; a gain seen here may "
    "vanish at full scale. The GPU flagfiles (configs/repro_cifar10_gpu*.flags) rerun the same "
    "protocol at the papers' scale.",
    "Contrastive objectives depend on the batch (positives and negatives per class): the protocol's "
    "batch of 128 holds about 13 images per class, as the papers' do, but the embedding learned in 5 "
    "epochs of a tiny network is a weak version of theirs.",
    "Two seeds give a range, not a distribution: an overlap of ranges says the difference is not "
    "established here, not that there is none. On 1000 test points a robust accuracy near 15% has "
    "a sampling standard error of about 1.1 points, and the seeds' spread adds to that.",
    "The transfer column is an upper bound that depends on its surrogate, one naturally trained "
    "network of the same tiny architecture: in this grid the surrogate's epoch-1 checkpoint (32.5% "
    "validation accuracy) transferred better than its last (39.8%): each cell's mean 0.7 to 1.5 points lower, "
    "without changing any verdict; other surrogates (another architecture, an ensemble, an "
    "adversarially trained one) may transfer better still.",
    "Model selection uses the validation holdout's PGD-10 accuracy at 5 checkpoints; the papers "
    "select (MOREL on the test set) among many more, so their best checkpoints are more favourable.",
]


def in_plain_words(verdicts):
    """One sentence from a claim's (verdict, method, baseline, metric)s."""
    measured = [v for v in verdicts if v[0] != "pending"]
    if not measured:
        return "not measured yet."
    held = [f"{m} over {b} in {metric}" for verdict, m, b, metric in measured if verdict == "held"]
    reversed_ = [f"{m} below {b} in {metric}" for verdict, m, b, metric in measured if verdict == "reversed"]
    unresolved = len(measured) - len(held) - len(reversed_)
    pending = len(verdicts) - len(measured)
    parts = []
    if held and not reversed_ and not unresolved and not pending:
        return "the claim held here on every metric compared (" + "; ".join(held) + "): the seeds agree."
    if reversed_ and not held:
        parts.append("it did not hold here: " + "; ".join(reversed_) + ", beyond the seeds' spread")
    elif held:
        parts.append("held in part: " + "; ".join(held) + ("; reversed: " + "; ".join(reversed_) if reversed_ else ""))
    if unresolved:
        parts.append(
            f"{unresolved} of {len(measured)} comparisons are within the seeds' spread (or "
            "have one seed so far), so they say nothing either way"
        )
    if pending:
        parts.append(f"{pending} not measured yet")
    return "; ".join(parts) + "."


def plot(summary, path, title=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c, s in summary.items() if "clean" in s]
    figure, axes = plt.subplots(figsize=(max(6, 1.1 * len(cells)), 4))
    index = np.arange(len(cells))
    for offset, metric, label in ((-0.2, "clean", "clean"), (0.2, "autoattack", "AutoAttack")):
        means = [100 * summary[c][metric][0] if metric in summary[c] else 0 for c in cells]
        spreads = [100 * summary[c][metric][1] if metric in summary[c] else 0 for c in cells]
        axes.bar(index + offset, means, 0.4, yerr=spreads, capsize=3, label=label)
    axes.set_xticks(index, cells, rotation=30, ha="right")
    axes.set_ylabel("accuracy % (mean, bars: seed range)")
    axes.set_title(title, fontsize=9)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_record(config, machine, software, command):
    """Writes RECORD_DIR/NAME.md, .json and .png from every finished stage."""

    rows = collect(config)
    summary = summarize(rows)
    os.makedirs(config.record_dir, exist_ok=True)
    base = os.path.join(config.record_dir, config.record_name)
    _write_json(
        base + ".json",
        {
            "command": command,
            "machine": machine,
            "software": software,
            "rows": rows,
            "summary": {c: {m: list(v) for m, v in s.items()} for c, s in summary.items()},
        },
    )
    plot(summary, base + ".png", f"{config.record_name}: best checkpoint, first {config.eval_examples} test images")
    artifacts.atomic_write_text(base + ".md", markdown(config, rows, summary, machine, software, command))
    return rows, summary
