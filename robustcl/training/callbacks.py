"""Callbacks that keep a run's finished work: best/last checkpoints and a per-epoch history."""

import json
import math
import os

import keras


def atomic_write_text(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_save_weights(model, path):
    # Keras wants the ".weights.h5" suffix, so the temporary file keeps it.
    tmp = path[: -len(".weights.h5")] + ".tmp.weights.h5"
    model.save_weights(tmp, overwrite=True)
    os.replace(tmp, path)


class RunCheckpoints(keras.callbacks.Callback):
    """After every epoch: `last.weights.h5`, `best.weights.h5` when the monitored validation figure
    improves, and `history.json` ({epochs: [...], best: {...}}), each replaced atomically.

    Its state is read back when a run resumes, so a resumed run keeps the best checkpoint of the
    epochs it already finished and never overwrites it with a worse one.
    """

    def __init__(self, network, model_dir, monitor="val_robust_accuracy"):
        super().__init__()
        self.network = network
        self.model_dir = model_dir
        self.monitor = monitor
        self.history_path = os.path.join(model_dir, "history.json")
        self.best_path = os.path.join(model_dir, "best.weights.h5")
        self.last_path = os.path.join(model_dir, "last.weights.h5")
        self.state = {"monitor": monitor, "best": None, "epochs": []}

    def on_train_begin(self, logs=None):
        if os.path.exists(self.history_path):
            with open(self.history_path) as f:
                self.state = json.load(f)

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        value = logs.get(self.monitor)
        best = self.state["best"]
        if value is not None and math.isfinite(value) and (best is None or value > best["value"]):
            atomic_save_weights(self.network, self.best_path)
            self.state["best"] = {"epoch": epoch + 1, "value": value}
        atomic_save_weights(self.network, self.last_path)
        # An epoch redone after an interruption replaces its earlier entry.
        epochs = [e for e in self.state["epochs"] if e["epoch"] != epoch + 1]
        self.state["epochs"] = epochs + [{"epoch": epoch + 1, **logs}]
        atomic_write_text(self.history_path, json.dumps(self.state, indent=2))
