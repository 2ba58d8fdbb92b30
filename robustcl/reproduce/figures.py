"""The record's figures: accuracies per cell and metric, and the validation curves of training."""

import numpy as np

# matplotlib is imported when a figure is drawn: its Agg backend is chosen first, and nothing else
# of robustcl needs it.


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


def plot_training(rows, path, title=""):
    """Validation clean and PGD accuracy per epoch: a line per cell (mean over its seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for cell in dict.fromkeys(r["cell"] for r in rows):
        histories = [r["history"] for r in rows if r["cell"] == cell and r.get("history")]
        if not histories:
            continue
        epochs = min(len(h) for h in histories)
        for ax, key in zip(axes, ("val_accuracy", "val_robust_accuracy")):
            values = [[100 * (e.get(key) or 0) for e in h[:epochs]] for h in histories]
            ax.plot(range(1, epochs + 1), np.mean(values, axis=0), marker="o", label=cell)
    for ax, name in zip(axes, ("validation clean accuracy %", "validation PGD accuracy %")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
