"""The record of a reproduction grid, made from whatever has finished.

RECORD_DIR/NAME.rows.json  every row (cell x seed) with its settings key, status, accuracies, the
                           precision and machine it ran on, validation accuracies per epoch and its
                           per-point verdicts: what resumes the grid elsewhere and what the paired
                           tests are made from (committed)
RECORD_DIR/NAME.json       the record: `protocol`, `cells` and `claims` (each claim's difference,
                           95% interval and verdict, robustcl.reproduce.statistics)
RECORD_DIR/NAME.md         the same in words, with the protocol and what its scale cannot tell
RECORD_DIR/NAME.png        clean vs AutoAttack accuracy per cell
RECORD_DIR/NAME_training.png  validation clean and PGD accuracy per epoch, per cell

Why one file over 450 lines: the Markdown page is one document (about 160 lines of it), written
from the same summary and claims the JSON record holds; rows (rows.py), figures (figures.py) and the
paired tests (statistics.py) live apart.
"""

import os
import subprocess
import time

import numpy as np

from robustcl.reproduce import grid
from robustcl.training import rundir
from robustcl.files import atomic_write_text, fingerprint, read_json
from robustcl.reproduce import statistics
from robustcl import models
from robustcl.reproduce.figures import plot, plot_training
from robustcl.reproduce.rows import collect

IMPLEMENTATION = "robustcl"


METRICS = (
    "clean",
    "fgsm",
    "pgd",
    "cw",
    "autoattack",
    "worst_case",
    "transfer",
    "clean_all",
    "pgd_all",
    "last_clean",
    "last_pgd",
)
LABELS = {
    "clean": "clean",
    "fgsm": "FGSM",
    "pgd": "PGD",
    "cw": "CW",
    "autoattack": "AA",
    "worst_case": "worst case",
    "transfer": "transfer",
    "clean_all": "clean (all)",
    "pgd_all": "PGD (all)",
    "last_clean": "last clean",
    "last_pgd": "last PGD",
}


def summarize(rows):
    """{cell: {metric: (mean, spread, n)}} over the seeds that have the metric; spread is half the
    range (with 2 seeds, each seed lies at mean +- spread). For the tables; verdicts are paired."""
    out = {}
    # A failed or unfinished row still records how long its training ran; it is not a seed's result.
    evaluated = [r for r in rows if any(r.get(m) is not None for m in METRICS)]
    for cell in dict.fromkeys(r["cell"] for r in rows):
        stats = {}
        for metric in METRICS + ("train_seconds",):
            values = [r[metric] for r in evaluated if r["cell"] == cell and r.get(metric) is not None]
            if values:
                stats[metric] = (float(np.mean(values)), float((max(values) - min(values)) / 2), len(values))
        out[cell] = stats
    return out


# The seeds' claims, each as comparisons (method cell, baseline cell, metrics): a comparison whose
# cells are not both in a grid is left out of its record. "pgd" and "clean" compare on the most
# points evaluated (the PGD-only evaluation where the grid has one).
CLAIMS = [
    {
        "paper": "MOREL (Hotegni & Peitz 2024)",
        "claim": "MOREL beats TRADES and MART against white-box attacks (and against black-box transfer attacks)",
        "comparisons": [
            ("morel", "mart", ("autoattack", "transfer", "pgd", "clean")),
            ("morel_mart", "mart", ("pgd", "autoattack", "worst_case", "transfer", "clean")),
            ("morel_trades", "trades", ("pgd", "autoattack", "worst_case", "transfer", "clean")),
        ],
        "not_measured": "query-based black-box attacks on their own (Square runs inside the AutoAttack "
        "cascade, on the points the gradient stages left); transfer from surrogates "
        "other than one naturally trained network",
    },
    {
        "paper": "Supervised contrastive learning with a margin",
        "claim": "the margin gains up to 2.5 points of FGSM accuracy (CIFAR-100, ResNet-18)",
        "comparisons": [("supcon_margin", "supcon_margin_m0", ("fgsm", "pgd", "autoattack", "clean"))],
        "not_measured": "CIFAR-100 (here CIFAR-10)",
    },
    {
        "paper": "ANCHOR (Bhattacharya et al. 2023)",
        "claim": "ANCHOR beats standard adversarial training in clean and PGD-20 accuracy (CIFAR-10, eps 0.031)",
        "comparisons": [("anchor", "pgd_at", ("clean", "pgd", "autoattack"))],
        "not_measured": "",
    },
    {
        "paper": "Contrastive adversarial training",
        "claim": "+3.2% on average under PGD and AutoAttack over adversarial training",
        "comparisons": [("contrastive_at", "pgd_at", ("autoattack", "pgd", "clean"))],
        "not_measured": "",
    },
]


def _points_of(row, metric):
    """The per-point verdicts of a metric, on the most points the row was evaluated on."""
    points = row.get("points") or {}
    wider = {"pgd": "pgd_all", "clean": "clean_all"}.get(metric)
    packed = points.get(wider) or points.get(metric)
    return None if packed is None else statistics.unpack(packed)


def adequacy(config, summary):
    """(adequate, sentence): whether the grid's baseline reached the accuracies the protocol asks
    for before verdicts are written (--adequacy_cell, --adequacy_clean, --adequacy_pgd), on the
    best checkpoint's full evaluation."""
    if not (config.adequacy_clean or config.adequacy_pgd):
        return True, ""
    stats = summary.get(config.adequacy_cell, {})
    # On the evaluation of exact test pixels (the first --eval_examples): the JPEG copies beyond them
    # lower clean accuracy (seen: PGD-AT 56.3% on the first 1000, 53.3% on all 10,000), a shift of
    # the data, not a weakness of the protocol.
    clean, pgd = stats.get("clean"), stats.get("pgd")
    if clean is None or pgd is None or clean[2] < len(config.seeds):
        return False, f"`{config.adequacy_cell}` has not finished every seed yet: verdicts wait for it."
    wanted = f"clean >= {100 * config.adequacy_clean:.0f}% and PGD >= {100 * config.adequacy_pgd:.0f}%"
    reached = f"{100 * clean[0]:.1f}% clean, {100 * pgd[0]:.1f}% PGD on the first {config.eval_examples} test images"
    if clean[0] >= config.adequacy_clean and pgd[0] >= config.adequacy_pgd:
        return True, f"`{config.adequacy_cell}` reached {reached} (the protocol asks {wanted})."
    return False, (
        f"`{config.adequacy_cell}` reached {reached}, short of the {wanted} the protocol asks before "
        "any verdict: the protocol is too small and is to be grown; no verdict is written."
    )


def claims(config, rows, adequate=True):
    """Every comparison of CLAIMS whose cells are in this grid, as the record's `claims` entries."""
    names = {c.name for c in config.cells}
    finished = [r for r in rows if r.get("points")]
    out = []
    for claim in CLAIMS:
        for a, b, metrics in claim["comparisons"]:
            if a not in names or b not in names:
                continue
            for metric in metrics:
                sides, surrogates = [], []
                for cell in (a, b):
                    found = {r["seed"]: _points_of(r, metric) for r in finished if r["cell"] == cell}
                    sides.append({seed: v for seed, v in found.items() if v is not None})
                    surrogates.append({r["seed"]: r.get("surrogate") for r in finished if r["cell"] == cell})
                entry = {"claim": claim["claim"], "paper": claim["paper"], "a": a, "b": b, "metric": metric}
                if metric == "transfer":
                    # A seed pairs only where both cells were scored on the same surrogate's examples.
                    other = sorted(s for s in set(sides[0]) & set(sides[1]) if surrogates[0][s] != surrogates[1][s])
                    sides = [{seed: v for seed, v in side.items() if seed not in other} for side in sides]
                    if other:
                        entry["seeds_on_other_surrogates"] = other
                if set(sides[0]) & set(sides[1]):
                    entry.update(statistics.compare(*sides))
                else:
                    entry.update(diff=None, ci_low=None, ci_high=None, verdict="pending", seeds=[], points=0)
                if not adequate and entry["verdict"] != "pending":
                    entry["verdict"] = "withheld: protocol too small"
                out.append(entry)
    return out


def _protocol(config, rows, machines):
    train = grid.cell_settings(config, config.cells[0], config.seeds[0])["train_config"]
    network = models.build(train["model"]["name"], 10, (0.5,) * 3, (0.25,) * 3)
    precisions = sorted({r["precision"] for r in rows if r.get("precision")})
    return {
        "model": train["model"]["name"],
        "params": int(network.count_params()),
        "train_examples": train["data"]["train_examples"] or 50000 - train["data"]["val_size"],
        "epochs": train["optimizer"]["epochs"],
        "precision": train["run"]["precision"] + (f" ({', '.join(precisions)})" if precisions else ""),
        "cpu": machines,
    }


def _public_cells(rows):
    out = []
    for r in rows:
        if r.get("clean") is None:
            continue
        out.append(
            {
                "name": r["cell"],
                "method": r.get("method"),
                "seed": r["seed"],
                "implementation": IMPLEMENTATION,
                "clean": r.get("clean_all", r["clean"]),
                "pgd20": r.get("pgd_all", r.get("pgd")),
                "autoattack": r.get("autoattack"),
                "eval_points_pgd": r.get("num_points_all", r.get("num_points")),
                "eval_points_aa": r.get("num_points"),
                "train_seconds": r.get("train_seconds"),
                "precision": r.get("precision"),
                "transfer": r.get("transfer"),
            }
        )
    return out


def _fmt(value):
    return "-" if value is None else f"{100 * value:.1f}"


def _surrogate_here(config):
    """(fingerprint, ", validation accuracy X%") of the surrogate in this runs directory, where it
    has been trained here; (None, "") otherwise."""
    weights = rundir.weights_path(grid.surrogate_dir(config), "last")
    if not os.path.isfile(weights):
        return None, ""
    epochs = read_json(os.path.join(grid.surrogate_dir(config), rundir.HISTORY), {}).get("epochs") or []
    accuracy = f", validation accuracy {100 * epochs[-1]['val_accuracy']:.1f}%" if epochs else ""
    return fingerprint(weights), accuracy


def _surrogate_lines(rows, here=(None, "")):
    """Which surrogate scored which rows, where the rows were not all scored on the surrogate of this
    runs directory (`here`: _surrogate_here). The surrogate is trained once per runs directory,
    which is not committed: a grid resumed on another machine trains it again, to other weights."""
    scored = {}
    for r in rows:
        if r.get("transfer") is not None:
            scored.setdefault(r.get("surrogate"), []).append(f"{r['cell']} {r['seed']}")
    # One surrogate scored every row: nothing to list, unless this runs directory trained another.
    if len(scored) < 2 and (here[0] is None or set(scored) <= {here[0]}):
        return []
    lines = [
        "  The grid moved between machines and trained its surrogate again (its run directory is not "
        "committed), so rows are scored on more than one surrogate: a transfer claim pairs a seed only "
        "where both cells met the same one (weights' fingerprint):"
    ]
    for fingerprint_, names in scored.items():
        name = f"`{fingerprint_}`" if fingerprint_ else "not recorded (rows from before the fingerprint)"
        if fingerprint_ is not None and fingerprint_ == here[0]:
            name += f" (this runs directory's surrogate{here[1]})"
        lines.append(f"  - {name}: {', '.join(names)}")
    return lines


def _claim_line(entry):
    if entry["diff"] is None:
        why = (
            "no seed where both met the same surrogate"
            if entry.get("seeds_on_other_surrogates")
            else "not measured yet"
        )
        return f"  - `{entry['a']}` vs `{entry['b']}`, {entry['metric']}: {why}: **pending**"
    seeds = ", ".join(str(s) for s in entry["seeds"])
    if entry.get("seeds_on_other_surrogates"):
        seeds += f"; not paired, scored on different surrogates: {entry['seeds_on_other_surrogates']}"
    return (
        f"  - `{entry['a']}` vs `{entry['b']}`, {entry['metric']}: {entry['diff']:+.2f} points, 95% interval "
        f"[{entry['ci_low']:+.2f}, {entry['ci_high']:+.2f}] (seeds {seeds}, {entry['points']} points): "
        f"**{entry['verdict']}**"
    )


def markdown(config, rows, summary, found_claims, adequate_text, machine, software, command):
    lines = [
        f"# Reproduction record: {config.record_name}",
        "",
        "Produced by",
        "",
        f"    {command}",
        "",
        "Rerunning the same command skips every finished cell and continues an interrupted one; "
        "the TensorBoard run directories are written to `RUNS_DIR/<cell>/seed<S>/` (`--runs_dir`) "
        f"(not committed); `{config.record_name}.rows.json` keeps every finished row with its per-point "
        "verdicts, so the record and its tests can be made again without them.",
        "",
        f"This command last ran on: {machine}. Software: {software}.",
        "",
    ]
    finished = [r for r in rows if grid.finished(r, grid.stages(config))]
    # A grid spans sessions, and sessions get different CPUs: times compare only on one machine.
    machines = list(dict.fromkeys(r["machine"] for r in rows if r.get("machine")))
    labels = {m: chr(ord("A") + i) for i, m in enumerate(machines)}
    if machines:
        lines += [
            "Machines the rows ran on (the results table's `machine` column; times compare only within one machine):",
            "",
        ]
        lines += [f"- {labels[m]}: {m}" for m in machines]
        lines += [
            "",
            "Each machine computes the same networks with its own kernels (oneDNN's for its instructions, "
            "and BatchNorm by Keras's layer or TensorFlow's fused kernel as robustcl picks for it: the same "
            "function, tested equal to rounding), so rows from different machines differ in rounding (and in "
            "precision where the `precision` column says so), not in what was trained.",
            "",
        ]
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
    for line in grid.flagfile_text(config.train_flagfile):
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
    ]
    if config.eval_examples_pgd:
        lines.append(
            f"- PGD-{config.pgd_steps} alone on the first {config.eval_examples_pgd} test images (columns "
            "`clean (all)`, `PGD (all)`; the claims' `pgd` and `clean` compare on these points). Beyond the "
            "first 1000 the pixels are JPEG copies of the originals (../shared/data/README.md: mean absolute "
            "error 5.8/255), so these accuracies compare with each other, not with published ones."
        )
    if config.surrogate_flagfile:
        here = _surrogate_here(config)
        surrogates = _surrogate_lines(rows, here)
        # Its accuracy where it scored every transfer row so far (else the list says which did).
        accuracy = "" if surrogates else here[1]
        lines.append(
            f"- Black-box transfer (column `transfer`): a surrogate trained with "
            f"`{config.surrogate_flagfile}` and the protocol's training flags at seed "
            f"{config.surrogate_seed} (not a seed of any cell, so no cell is its own surrogate; its last "
            f"checkpoint{accuracy}) crafts "
            f"PGD-{config.pgd_steps} and APGD-CE ({config.apgd_iterations} iterations) examples on the "
            "same test points; a point counts as robust when the cell's best checkpoint classifies it "
            "correctly clean and on the surrogate's example. The column is the lower of the two "
            "attacks' accuracies (the TRADES and MART papers' black-box protocol: a naturally "
            "trained surrogate of the same architecture)."
        )
        lines += surrogates
    lines.append("")
    shown = [m for m in METRICS if any(r.get(m) is not None for r in rows)]
    header = " | ".join(LABELS[m] for m in shown)
    lines += [
        "## Results (accuracy %, best checkpoint unless marked last)",
        "",
        f"| cell | seed | {header} | best epoch | precision | train time | eval time | machine | warnings |",
        "|---|---|" + "---|" * (len(shown) + 6),
    ]
    for r in rows:
        if r.get("clean") is None and r["status"]["train"] != "done":
            lines.append(f"| {r['cell']} | {r['seed']} | {r['status']['train']} |" + "  |" * (len(shown) + 5))
            continue
        train_time = "-" if r["train_seconds"] is None else f"{r['train_seconds'] / 60:.1f} min"
        if r["train_attempts"] > 1:
            train_time += " (resumed: lower bound)"
        warnings = "; ".join(r.get("warnings", [])) or ""
        values = " | ".join(_fmt(r.get(m)) for m in shown)
        lines.append(
            f"| {r['cell']} | {r['seed']} | {values} | {r['best_epoch'] or '-'}/{r['epochs']} | "
            f"{r.get('precision', '-')} | {train_time} | {r['eval_seconds'] / 60:.1f} min | "
            f"{labels.get(r.get('machine'), '-')} | {warnings} |"
        )
    lines += [
        "",
        "Mean +- spread over seeds (spread: half the range):",
        "",
        f"| cell | seeds | {header} |",
        "|---|---|" + "---|" * len(shown),
    ]
    for cell, stats in summary.items():
        values = [f"{100 * stats[m][0]:.1f} +- {100 * stats[m][1]:.1f}" if m in stats else "-" for m in shown]
        seeds = max((s[2] for s in stats.values()), default=0)
        lines.append(f"| {cell} | {seeds} | " + " | ".join(values) + " |")
    lines += [
        "",
        f"![clean vs AutoAttack]({config.record_name}.png)",
        "",
        f"![validation accuracy per epoch]({config.record_name}_training.png)",
        "",
        "## The claims",
        "",
        "Each comparison is paired: both cells were evaluated on the same test points at the same "
        "seeds. Per point, the difference of the two cells' verdicts is averaged over the seeds both "
        "have; the difference in accuracy (points, method minus baseline) is their mean, and its 95% "
        "interval is a BCa bootstrap over the test points (10,000 resamples). **holds**: the whole "
        "interval is above 0; **contradicted**: below 0; **not resolved**: it contains 0; **pending**: "
        "fewer than 2 seeds in common. The interval is what another draw of test points could do at "
        "these seeds; what other training seeds would do is not in it (see below).",
        "",
    ]
    if adequate_text:
        lines += [f"Protocol size check: {adequate_text}", ""]
    for claim in CLAIMS:
        entries = [e for e in found_claims if e["claim"] == claim["claim"]]
        if not entries:
            continue
        lines.append(f"- **{claim['paper']}**: {claim['claim']}.")
        lines += [_claim_line(e) for e in entries]
        if claim["not_measured"]:
            lines.append(f"  - Not measured here: {claim['not_measured']}.")
    lines += ["", "## What this scale can and cannot tell", ""] + [f"- {item}" for item in scale_limits(config)]
    return "\n".join(lines) + "\n"


def scale_limits(config):
    """What a CPU-sized grid cannot say about the papers' claims, whatever its verdicts."""
    return [
        "The papers train ResNet-18 or WRN-34-10 for 100 epochs or more on all 50,000 images; this "
        "grid trains the network and epochs of its protocol above. A gain that appears only late in "
        "training, or needs more capacity, cannot show here, and a gain seen here may vanish at full "
        "scale. The GPU flagfiles (configs/repro_cifar10_gpu*.flags) rerun the protocol at the papers' scale.",
        "Contrastive objectives depend on the batch (positives and negatives per class): a batch of "
        "128 holds about 13 images per class, as the papers' do.",
        f"{len(config.seeds)} training seeds: the intervals hold the test points' sampling error at "
        "these seeds, not the spread between training runs; a difference of the size of the seeds' "
        "spread (the table above) is not established by a paired interval alone.",
        "The transfer column depends on its surrogate, one naturally trained network of the same "
        "architecture; other surrogates (another architecture, an ensemble, an adversarially trained "
        "one) may transfer better.",
        "Model selection uses the validation holdout's PGD accuracy at each epoch; the papers select "
        "(MOREL on the test set) among many more checkpoints.",
    ]


def paths(config):
    base = os.path.join(config.record_dir, config.record_name)
    return [base + suffix for suffix in (".rows.json", ".json", ".md", ".png", "_training.png")]


def write(config, machine, software, command):
    """Writes the record's files (paths(config)) from every finished stage. Returns the claims."""
    rows = collect(config)
    summary = summarize(rows)
    adequate, adequate_text = adequacy(config, summary)
    found_claims = claims(config, rows, adequate)
    machines = list(dict.fromkeys(r["machine"] for r in rows if r.get("machine")))
    os.makedirs(config.record_dir, exist_ok=True)
    rows_path, record_path, markdown_path, plot_path, training_path = paths(config)
    grid.write_json(rows_path, {"command": command, "machine": machine, "software": software, "rows": rows})
    grid.write_json(
        record_path,
        {"protocol": _protocol(config, rows, machines), "cells": _public_cells(rows), "claims": found_claims},
    )
    title = f"{config.record_name}: best checkpoint, first {config.eval_examples} test images"
    plot(summary, plot_path, title)
    plot_training(rows, training_path, f"{config.record_name}: validation split, mean over seeds")
    text = markdown(config, rows, summary, found_claims, adequate_text, machine, software, command)
    atomic_write_text(markdown_path, text)
    return found_claims


def commit(config, message, attempts=5):
    """Commits the record's files, and nothing else, in the git repository that holds them.
    Returns git's summary line ("nothing to commit" when they did not change). A busy index (another
    git command at work in the same repository) is waited for."""
    files = [p for p in paths(config) if os.path.exists(p)]
    directory = os.path.dirname(os.path.abspath(files[0]))

    def git(*args):
        return subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, check=True)

    for attempt in range(attempts):
        try:
            git("add", "--", *files)
            if subprocess.run(["git", "diff", "--cached", "--quiet", "--", *files], cwd=directory).returncode == 0:
                return "nothing to commit"
            return git("commit", "--only", "-m", message, "--", *files).stdout.strip().splitlines()[0]
        except subprocess.CalledProcessError as error:
            if "index.lock" not in error.stderr or attempt == attempts - 1:
                raise RuntimeError(f"git could not commit the record: {error.stderr.strip()}") from None
            time.sleep(2)
