"""Writing an evaluation report: JSON, Markdown, PNG plots, TensorBoard scalars."""

import json
import os

import numpy as np
from robustcl.files import atomic_write_text
import tensorflow as tf


class Report(dict):
    """An evaluation's report: the JSON-able dict scripts/evaluate.py writes (report.json), with the
    figures read first as attributes."""

    @property
    def robust_accuracy(self):
        """Per-example worst case over every attack: the robust accuracy to report."""
        return self["worst_case_robust_accuracy"]

    @property
    def clean_accuracy(self):
        return self["clean_accuracy"]

    @property
    def per_attack(self):
        """{attack: its robust accuracy}, each attack on its own (AutoAttack's stages cumulative)."""
        return {row["attack"]: row["robust_accuracy"] for row in self["attacks"]}

    @property
    def warnings(self):
        """Symptoms of gradient masking found by the checks (empty: none found)."""
        return list(self["warnings"])

    def to_json(self, indent=2):
        return json.dumps(self, indent=indent)

    def save(self, output_dir, tensorboard_dir=None):
        """report.json, report.md and the plots in output_dir (as scripts/evaluate.py writes them)."""
        write(self, output_dir, tensorboard_dir)


def markdown(report):
    lines = [
        f"# Robustness evaluation: {report['model']}",
        "",
        f"{report['num_points']} points ({report['data']}), {report['norm']} eps "
        f"{report['eps']:.6g}, seed {report['seed']}. Clean accuracy "
        f"**{report['clean_accuracy']:.4f}**; per-example worst case over every attack: "
        f"**{report['worst_case_robust_accuracy']:.4f}**.",
        "",
    ]
    if report.get("threat_model_from"):
        lines += [f"Norm and eps from {report['threat_model_from']}.", ""]
    if report.get("transfer_from"):
        counted = "counted" if report.get("transfer_in_worst_case") else "not counted"
        lines += [
            f"Rows `transfer-*`: examples crafted on the surrogate {report['transfer_from']} "
            f"and scored on this model (black-box transfer; {counted} in the worst case).",
            "",
        ]
    if report.get("autoattack"):
        aa = report["autoattack"]
        lines += [
            f"AutoAttack robust accuracy (after its last stage): **{aa['robust_accuracy']:.4f}**; {aa['settings']}.",
            "",
        ]
    if report.get("model_notes"):
        lines += [f"Note: {note}." for note in report["model_notes"]] + [""]
    lines += [
        "| attack | robust accuracy | points | eps | steps | restarts | seconds | max perturbation "
        "| NaN | adv min | adv max |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in report["attacks"]:
        lines.append(
            f"| {a['attack']} | {a['robust_accuracy']:.4f} | {a['num_points']} | {a['eps']:.5g} "
            f"| {a['steps']} | {a['restarts']} | {a['seconds']:.1f} | {a['max_perturbation']:.5g} "
            f"| {a['nan_count']} | {a['adv_min']:.3g} | {a['adv_max']:.3g} |"
        )
    timed = [a for a in report["attacks"] if "model_seconds" in a]
    if timed:
        lines += [
            "",
            "Where the time went: the model's forward and backward passes against the attack's own "
            "work between them (its Python and NumPy; a loop traced whole, as PGD's and APGD's, "
            "counts as model time):",
            "",
            "| attack | points attacked | seconds | model | attack's own | model share |",
            "|---|---|---|---|---|---|",
        ]
        for a in timed:
            share = a["model_seconds"] / a["seconds"] if a["seconds"] > 0 else 0.0
            lines.append(
                f"| {a['attack']} | {a.get('points_attacked', a['num_points'])} | {a['seconds']:.1f} "
                f"| {a['model_seconds']:.1f} | {a['attack_seconds']:.1f} | {share:.0%} |"
            )
    if report.get("eps_sweep"):
        lines += ["", f"Accuracy vs eps ({report['sweep_attack']}):", "", "| eps | robust accuracy |", "|---|---|"]
        lines += [f"| {p['eps']:.5g} | {p['robust_accuracy']:.4f} |" for p in report["eps_sweep"]]
    lines += ["", "Per-class worst-case robust accuracy:", "", "| class | clean | robust |", "|---|---|---|"]
    for c in report["per_class"]:
        lines.append(f"| {c['class']} | {c['clean_accuracy']:.4f} | {c['robust_accuracy']:.4f} |")
    lines += ["", "Checks:", ""] + [f"- passed: {c}" for c in report["checks_passed"]]
    lines += [f"- **warning**: {w}" for w in report["warnings"]] or ["- no warnings"]
    if report.get("deviations"):
        lines += ["", "Deviations from the AutoAttack reference:", ""]
        lines += [f"- {d}" for d in report["deviations"]]
    return "\n".join(lines) + "\n"


def plot(report, output_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if report.get("eps_sweep"):
        sweep = sorted(report["eps_sweep"], key=lambda p: p["eps"])
        figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
        axes.plot([p["eps"] for p in sweep], [p["robust_accuracy"] for p in sweep], "o-")
        axes.axvline(report["eps"], color="gray", linestyle=":", label=f"eps {report['eps']:.4g}")
        axes.set_xlabel(f"eps ({report['norm']})")
        axes.set_ylabel("robust accuracy")
        axes.set_ylim(-0.02, 1.02)
        axes.set_title(f"{report['sweep_attack']}: accuracy vs eps")
        axes.legend()
        figure.tight_layout()
        paths.append(os.path.join(output_dir, "accuracy_vs_eps.png"))
        figure.savefig(paths[-1])
        plt.close(figure)
    classes = report["per_class"]
    figure, axes = plt.subplots(figsize=(max(6, 0.5 * len(classes)), 4), dpi=100)
    index = np.arange(len(classes))
    axes.bar(index - 0.2, [c["clean_accuracy"] for c in classes], 0.4, label="clean")
    axes.bar(index + 0.2, [c["robust_accuracy"] for c in classes], 0.4, label="worst case")
    axes.set_xticks(index, [c["class"] for c in classes], rotation=45, ha="right")
    axes.set_ylim(0, 1)
    axes.set_ylabel("accuracy")
    axes.legend()
    figure.tight_layout()
    paths.append(os.path.join(output_dir, "per_class_accuracy.png"))
    figure.savefig(paths[-1])
    plt.close(figure)
    return paths


def write(report, output_dir, tensorboard_dir=None, step=0):
    """Writes report.md, the plots and, last and atomically, report.json: a report.json on disk
    means the whole evaluation finished (the reproduction grid resumes by it)."""
    os.makedirs(output_dir, exist_ok=True)
    atomic_write_text(os.path.join(output_dir, "report.md"), markdown(report))
    paths = plot(report, output_dir)
    atomic_write_text(os.path.join(output_dir, "report.json"), json.dumps(report, indent=2))
    if tensorboard_dir:
        writer = tf.summary.create_file_writer(tensorboard_dir)
        with writer.as_default():
            tf.summary.scalar("evaluation/clean_accuracy", report["clean_accuracy"], step=step)
            tf.summary.scalar("evaluation/worst_case_robust_accuracy", report["worst_case_robust_accuracy"], step=step)
            for a in report["attacks"]:
                tf.summary.scalar(f"evaluation/{a['attack']}", a["robust_accuracy"], step=step)
        writer.close()
    return paths
