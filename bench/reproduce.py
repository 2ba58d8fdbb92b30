#!/usr/bin/env python
"""Reproduces the seeds' claims: every cell x seed trained and evaluated, then the record written.

    python bench/reproduce.py --flagfile=configs/repro_cifar10_cpu.flags [--data_dir=DIR]

Rerunning the same command skips finished cells and continues an interrupted one (see
robustcl/reproduce/); the record (robustcl/reproduce/record.py: RECORD_DIR/NAME.md, .json, .rows.json,
.png, _training.png) is rewritten after every cell, and with --commit_record committed.
Exits 1 if a cell failed (its log is in its run directory), after running all the others.
"""

import os
import platform
import sys

from absl import app

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from robustcl.cli import flags as cli_flags  # noqa: E402  (after the path of a source checkout)
from robustcl.reproduce import flags as repro_flags  # noqa: E402
from robustcl.settings import ConfigError  # noqa: E402

repro_flags.define_reproduce_flags()


def main(argv):
    config = cli_flags.config_or_exit(argv, repro_flags.reproduce_config_from_flags)
    import keras
    import tensorflow as tf

    from robustcl import hardware
    from robustcl.reproduce import grid
    from robustcl.reproduce import record as record_io

    machine = f"{hardware.detect().describe()}, {os.cpu_count()} cores"
    software = f"Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}"
    # The command that makes the grid (--record_only only rewrites the record).
    # Where this machine keeps the data, runs and record is not part of the protocol.
    placeholders = {"--data_dir=": "DIR", "--runs_dir=": "RUNS_DIR", "--record_dir=": "RECORD_DIR"}
    shown = []
    for arg in sys.argv[1:]:
        if arg in ("--record_only", "--record_only=true", "--commit_record", "--commit_record=true"):
            continue
        prefix = next((p for p in placeholders if arg.startswith(p)), None)
        shown.append(prefix + placeholders[prefix] if prefix else arg)
    command = "python bench/reproduce.py " + " ".join(shown)
    print(f"machine: {machine}\nsoftware: {software}", flush=True)

    def record():
        record_io.write(config, machine, software, command)

    def record_and_commit(cell=None, seed=None, finished=True):
        record()
        if config.commit_record:
            outcome = "finished" if finished else "failed (its stages' logs are in its run directory)"
            done = f"{cell} seed {seed} {outcome}" if cell else "record rewritten"
            print("commit:", record_io.commit(config, f"Reproduction record {config.record_name}: {done}"), flush=True)

    try:
        grid.check_settings(config)
    except (grid.ReproError, ConfigError) as error:
        sys.exit(f"error: {error}")

    record()
    if config.record_only:
        print(f"record: {os.path.join(config.record_dir, config.record_name)}.md")
        return
    try:
        failed = grid.run_grid(config, on_cell_done=record_and_commit, machine=machine)
    except grid.ReproError as error:  # the surrogate's training failed: no transfer stage can run
        record()
        sys.exit(f"error: {error}")
    record_and_commit()
    print(f"record: {os.path.join(config.record_dir, config.record_name)}.md")
    if failed:
        sys.exit("failed: " + ", ".join(f"{cell} seed {seed}" for cell, seed in failed))


if __name__ == "__main__":
    app.run(main)
