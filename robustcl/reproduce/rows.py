"""The rows of the grid's record: one per finished cell x seed, read from its run directory (its
reports, history and settings) or, where the run directory is gone, from the committed rows file;
each with its per-point verdicts packed, so the paired tests can be made again from the record.
"""

import os

import numpy as np

from robustcl.files import read_json
from robustcl.reproduce import grid, statistics
from robustcl.training import rundir


def _row_accuracy(report, attack):
    for row in report["attacks"]:
        if row["attack"] == attack:
            return row["robust_accuracy"]
    return None


def collect(config):
    """One row per cell x seed with whatever has finished (None where not yet)."""
    recorded = grid.recorded_rows(config)
    names = grid.stages(config)
    rows = []
    for cell in config.cells:
        for seed in config.seeds:
            directory = grid.run_dir(config, cell, seed)
            state = grid.load_state(directory)
            current = grid.cell_settings(config, cell, seed)
            row = recorded.get((cell.name, seed))
            # A recorded row stands until its run directory here has finished the same stages (a
            # cell trained again for a stage the grid gained).
            if row and not (
                state and grid.finished({"status": {s: v.get("status") for s, v in state.get("stages", {}).items()}})
            ):
                rows.append(row)
                continue
            try:
                grid.check_same_settings(state, current, directory, config.data_dir)
            except grid.ReproError:  # refused by run_cell; not today's figures
                rows.append(
                    {
                        "cell": cell.name,
                        "seed": seed,
                        "settings_key": grid.stages_key(current, grid.STAGES),
                        "status": dict.fromkeys(names, "made with other settings"),
                        "train_seconds": None,
                        "train_attempts": 0,
                        "eval_seconds": 0.0,
                        "best_epoch": None,
                        "epochs": 0,
                    }
                )
                continue
            rows.append(_row(config, cell, seed, directory, state, current, names))
    return rows


def _row(config, cell, seed, directory, state, current, names):
    best = read_json(os.path.join(rundir.evaluation_dir(directory, "best"), rundir.REPORT))
    last = read_json(os.path.join(rundir.evaluation_dir(directory, "last"), rundir.REPORT))
    transfer = read_json(os.path.join(directory, grid.TRANSFER_OUTPUT, rundir.REPORT))
    pgd_all = read_json(os.path.join(directory, grid.PGD_ALL_OUTPUT, rundir.REPORT))
    history = read_json(os.path.join(directory, rundir.HISTORY), {})
    trained = read_json(os.path.join(directory, rundir.CONFIG), {})
    done = state.get("stages", {})
    row = {
        "cell": cell.name,
        "seed": seed,
        "settings_key": grid.stages_key(current, grid.STAGES),
        "status": {s: done.get(s, {}).get("status", "not run") for s in names},
        "train_seconds": done.get("train", {}).get("seconds"),
        "train_attempts": done.get("train", {}).get("attempts", 0),
        "eval_seconds": sum(done.get(s, {}).get("seconds", 0.0) for s in names[1:]),
        "best_epoch": (history.get("best") or {}).get("epoch"),
        "epochs": len(history.get("epochs", [])),
        "method": current["train_config"]["method"]["name"],
        # Validation accuracies per epoch (the record's plot of training).
        "history": [
            {k: e.get(k) for k in ("epoch", "val_accuracy", "val_robust_accuracy")} for e in history.get("epochs", [])
        ],
    }
    if trained:
        row["precision"] = trained["run"]["precision"]
    if names != grid.STAGES:
        row["transfer_key"] = grid.stages_key(current, names)
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
                "autoattack": (best.get("autoattack") or {}).get("robust_accuracy", _row_accuracy(best, "square")),
                "worst_case": best["worst_case_robust_accuracy"],
                "num_points": best["num_points"],
                "warnings": best["warnings"],
            }
        )
    if transfer:
        found = [a["robust_accuracy"] for a in transfer["attacks"] if a["attack"].startswith("transfer-")]
        row.update(
            {
                "transfer_pgd": _row_accuracy(transfer, "transfer-pgd"),
                "transfer_apgd_ce": _row_accuracy(transfer, "transfer-apgd-ce"),
                "transfer": min(found) if found else None,
                # The surrogate's weights' fingerprint (None: a report from before it was recorded).
                "surrogate": transfer.get("transfer_fingerprint"),
            }
        )
    if pgd_all:
        row.update(
            {
                "clean_all": pgd_all["clean_accuracy"],
                "pgd_all": _row_accuracy(pgd_all, "pgd"),
                "num_points_all": pgd_all["num_points"],
            }
        )
    if last:
        row.update({"last_clean": last["clean_accuracy"], "last_pgd": _row_accuracy(last, "pgd")})
    reports = {grid.TRANSFER_STAGE: transfer, grid.PGD_ALL_STAGE: pgd_all}
    if best and all(reports[stage] for stage in names if stage in reports):
        row["points"] = _points(best, transfer, pgd_all)
    return row


def _points(best, transfer, pgd_all):
    """The per-point verdicts the paired tests compare, packed: {metric: statistics.pack(...)}."""
    per_point = best["per_point"]
    robust = per_point["robust"]
    points = {
        "clean": per_point["clean_correct"],
        "worst_case": per_point["worst_case_robust"],
        **{name: robust[name] for name in ("fgsm", "pgd", "cw") if name in robust},
    }
    if best.get("autoattack"):
        points["autoattack"] = robust[best["autoattack"]["stages"][-1]]  # the cascade's verdict
    if transfer:
        found = {name: v for name, v in transfer["per_point"]["robust"].items() if name.startswith("transfer-")}
        if found:  # the transfer attack of the lower accuracy, as the `transfer` column
            points["transfer"] = min(found.values(), key=np.mean)
    if pgd_all:
        points["clean_all"] = pgd_all["per_point"]["clean_correct"]
        points["pgd_all"] = pgd_all["per_point"]["robust"]["pgd"]
    return {metric: statistics.pack(v) for metric, v in points.items()}


# Table columns; "transfer": the lower robust accuracy of the two transfer attacks crafted on the
# surrogate; "pgd_all"/"clean_all": the PGD-only evaluation on more points (--eval_examples_pgd).
