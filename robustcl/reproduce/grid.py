"""The reproduction grid: every cell (a method setting) x seed trained and evaluated by the real
scripts, resumable cell by cell, and the record written from whatever has finished.

Each cell x seed runs three stages as subprocesses of scripts/train.py and scripts/evaluate.py (so a
crash in one leaves the others and the grid alive), in RUNS_DIR/<cell>/seed<S>/:
  train      the cell's method flagfile, then the protocol's train flagfile, then the cell's own
             flags, with --seed and --model_dir; train.py itself resumes an interrupted run from its
             backup at the last finished epoch
  eval_best  the best checkpoint (by validation robust accuracy) under every --eval_attacks
  eval_last  the last checkpoint: clean and PGD (robust overfitting shows as the gap to best)
  eval_pgd_all  (with --eval_examples_pgd) the best checkpoint under PGD alone on more test points
  eval_transfer  (with --surrogate_flagfile) the best checkpoint scored on black-box transfer
             examples crafted on the surrogate, a network trained once in RUNS_DIR/surrogate/seed<S>/
`repro_cell.json` in each run directory says which stages finished, how long each took and with which
settings; a rerun skips finished stages and refuses a run directory made with other settings. The
record's rows (RECORD_DIR/NAME.rows.json, committed) keep every finished row with a key of its settings
and its per-point verdicts, so a grid resumed where the run directories are gone (another machine)
does not redo those cells, and the paired tests of the claims (robustcl.reproduce.statistics) can be
made again from the committed files alone. With --commit_record the record is committed after every
finished cell.

Why one file over 450 lines: what a stage runs (its command), what it is keyed by (the settings
resolved from that command) and when a rerun may reuse it are one rule, read together whenever a
resume is refused; the record (record.py, rows.py) and the tests (statistics.py) live apart.
"""

import concurrent.futures
import contextlib
import functools
import json
import os
import subprocess
import sys
import threading
import time


from robustcl.files import atomic_write_text, read_json, settings_key
from robustcl.cli import flags as cli_flags
from robustcl.evaluation import attacks as eval_attacks
import tempfile
from absl import flags as absl_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAGES = ("train", "eval_best", "eval_last")  # every grid's; a row's settings_key covers these
PGD_ALL_STAGE = "eval_pgd_all"  # a grid with --eval_examples_pgd's
TRANSFER_STAGE = "eval_transfer"  # a grid with a surrogate's
# A row's settings_key covers STAGES; its transfer_key (the name kept from when the transfer stage was
# the only one a grid could gain) covers every stage of its grid.
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
    gained = ((PGD_ALL_STAGE,) if config.eval_examples_pgd else ()) + (
        (TRANSFER_STAGE,) if config.surrogate_flagfile else ()
    )
    return STAGES + gained


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
    if config.eval_examples_pgd:
        argvs[PGD_ALL_STAGE] = [
            f"--num_examples={config.eval_examples_pgd}" if a.startswith("--num_examples=") else a for a in evaluate
        ] + ["--checkpoint=best", "--attacks=pgd", f"--output_dir={os.path.join(model_dir, PGD_ALL_OUTPUT)}"]
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
PGD_ALL_OUTPUT = "evaluation_pgd_all"


def write_json(path, value):
    atomic_write_text(path, json.dumps(value, indent=2))


def load_state(directory):
    return read_json(os.path.join(directory, STATE_FILE), {})


def flagfile_text(path):
    """A flagfile with the flagfiles it includes (what the record shows as the protocol)."""
    lines = []
    with open(os.path.join(REPO, path) if not os.path.isabs(path) else path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("--flagfile="):
                lines += flagfile_text(line.split("=", 1)[1])
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
    values = absl_flags.FlagValues()
    cli_flags.define_train_flags(values)
    with contextlib.chdir(REPO):
        values(["train.py", *args, f"--data_dir={data_dir}", "--model_dir=unused"])
        resolved = cli_flags.config_from_flags(values).to_dict()
    del resolved["run"]["model_dir"], resolved["data"]["data_dir"]
    # "auto" is what the protocol asks for; what it resolved to on a machine is recorded per row. A
    # grid resumed on a CPU of another kind keeps its finished rows.
    for name in ("precision", "jit_compile"):
        if str(values[name].value).lower() == "auto":
            resolved["run"][name] = "auto"
    return json.loads(json.dumps(resolved))  # as a run directory's state file keeps it (lists, not tuples)


def _train_config(argv, data_dir):
    args = tuple(_portable(argv)[1:])
    texts = tuple(tuple(flagfile_text(a.split("=", 1)[1])) for a in args if a.startswith("--flagfile="))
    return _resolved_train_config(args, os.path.abspath(data_dir), texts)


def cell_settings(config, cell, seed):
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
    return settings_key(part)


def _legacy_train_config(portable_args, flagfile_lines, data_dir):
    """The config of a command from before run directories kept their resolved config: they kept
    the text of each flagfile (includes expanded), which is parsed in place of the files."""
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


def check_same_settings(state, current, directory, data_dir):
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
    eval_attacks.check("eval_attacks", config.eval_attacks)
    record_path = _record_path(config)
    record_rows = {(r["cell"], r["seed"]): r for r in _read_rows_file(config).get("rows", [])}
    if config.surrogate_flagfile:
        check_same_settings(
            load_state(surrogate_dir(config)), surrogate_settings(config), surrogate_dir(config), config.data_dir
        )
    for cell in config.cells:
        for seed in config.seeds:
            current = cell_settings(config, cell, seed)
            directory = run_dir(config, cell, seed)
            check_same_settings(load_state(directory), current, directory, config.data_dir)
            row = record_rows.get((cell.name, seed))
            if not row or os.path.isdir(directory):  # the run directory's results stand for the row
                continue
            other = finished(row) and row.get("settings_key") != stages_key(current, STAGES)
            if stages(config) != STAGES and finished(row, stages(config)):
                other = other or row.get("transfer_key") != stages_key(current, stages(config))
            if other:
                raise ReproError(
                    f"{record_path} holds results of {cell.name} seed {seed} made with other settings; "
                    "rerun with the settings it was made with, or give another --record_name"
                )


def finished(row, names=STAGES):
    return all(row["status"].get(s) in FINISHED for s in names)


def _complete(config, row, current):
    """Whether a recorded row has every stage of this grid, made with today's settings, and the
    per-point verdicts the paired tests need (rows recorded before kept only accuracies)."""
    if "points" not in row:
        return False
    if stages(config) == STAGES:
        return True  # recorded_rows kept only rows whose base stages match
    return finished(row, stages(config)) and row.get("transfer_key") == stages_key(current, stages(config))


def _record_path(config):
    """The committed rows of the grid (what resumes it elsewhere)."""
    return os.path.join(config.record_dir, config.record_name + ".rows.json")


def _read_rows_file(config):
    """The rows file; a record written before rows had a file of their own kept them in NAME.json."""
    found = read_json(_record_path(config), None)
    if found is None:
        found = read_json(os.path.join(config.record_dir, config.record_name + ".json"), {})
    return found


def recorded_rows(config):
    """{(cell, seed): row} of finished rows in the committed record made with today's settings: a
    grid resumed on another machine (without the run directories) keeps them instead of rerunning.
    A row from before rows named their machine ran on the machine the record names."""
    record = _read_rows_file(config)
    keys = {
        (c.name, seed): stages_key(cell_settings(config, c, seed), STAGES)
        for c in config.cells
        for seed in config.seeds
    }
    earlier = {"machine": record["machine"]} if "machine" in record else {}
    return {
        (r["cell"], r["seed"]): {**earlier, **r}
        for r in record.get("rows", [])
        if finished(r) and keys.get((r["cell"], r["seed"])) == r.get("settings_key")
    }


def run_cell(config, cell, seed, log=print, machine=None):
    """Runs the stages of one cell x seed that have not finished, noting each stage's machine (a grid
    spans sessions on different CPUs, and its times only compare on one). Returns its state dict."""
    return _run_stages(
        config,
        run_dir(config, cell, seed),
        f"{cell.name} seed {seed}",
        commands(config, cell, seed),
        cell_settings(config, cell, seed),
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


def stage_environment(config):
    """The environment of a stage's script: this checkout's robustcl first on the path. A script
    run as a file puts its own folder on the path, not the checkout, so without it the scripts of
    one checkout would import whichever robustcl the environment has installed (seen: a grid run
    from a second worktree ran the main checkout's library, and failed once that was restructured)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    if config.threads_per_cell:
        env["TF_NUM_INTRAOP_THREADS"] = str(config.threads_per_cell)
        env["TF_NUM_INTEROP_THREADS"] = "1"
    return env


def _run_stages(config, directory, label, argvs, current, identity, log, machine):
    os.makedirs(directory, exist_ok=True)
    state = load_state(directory)
    check_same_settings(state, current, directory, config.data_dir)
    # The settings checked are today's or a part of them (stages the grid has gained since).
    state = {**identity, "stages": {}, **state, "settings": current}
    env = stage_environment(config)
    for stage, argv in argvs.items():
        record = state["stages"].get(stage, {})
        if record.get("status") in FINISHED:
            continue
        log(f"[{label}] {stage} ...")
        record["attempts"] = record.get("attempts", 0) + 1
        if machine:
            record["machine"] = machine
        state["stages"][stage] = record
        write_json(os.path.join(directory, STATE_FILE), state)
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
        write_json(os.path.join(directory, STATE_FILE), state)
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
                if _complete(config, row, cell_settings(config, cell, seed)):
                    log(f"[{cell.name} seed {seed}] finished in the record; its run directory is elsewhere")
                    continue
                # Its checkpoints stayed on another machine: the new stage needs them trained again.
                log(
                    f"[{cell.name} seed {seed}] in the record without a stage this grid has (or without "
                    "per-point verdicts) and its run directory is elsewhere: training it again"
                )
            jobs.append((cell, seed))
    return jobs


def run_grid(config, log=print, on_cell_done=None, machine=None):
    """Runs every unfinished cell x seed (config.parallel at once), seed-major so that each seed's
    whole row of methods finishes before the next seed starts; after each that ran a stage,
    on_cell_done(name, seed, finished: every stage done). Returns the failed (cell, seed)s."""
    jobs = pending(config, log)
    lock = threading.Lock()
    failed = []
    if config.surrogate_flagfile and any(
        load_state(run_dir(config, cell, seed)).get("stages", {}).get(TRANSFER_STAGE, {}).get("status") not in FINISHED
        for cell, seed in jobs
    ):
        train_surrogate(config, log, machine)

    def finished(state):
        return all(state.get("stages", {}).get(s, {}).get("status") in FINISHED for s in stages(config))

    def job(cell, seed):
        # A cell finished before this run (its settings are still checked) has nothing new to tell.
        ran = not finished(load_state(run_dir(config, cell, seed)))
        try:
            ok = finished(run_cell(config, cell, seed, log, machine))
        except ReproError as error:
            log(f"[{cell.name} seed {seed}] {error}")
            ok = False
        with lock:
            if not ok:
                failed.append((cell.name, seed))
            if on_cell_done and ran:
                on_cell_done(cell.name, seed, ok)

    with concurrent.futures.ThreadPoolExecutor(max_workers=config.parallel) as pool:
        for future in [pool.submit(job, cell, seed) for cell, seed in jobs]:
            future.result()
    return failed
