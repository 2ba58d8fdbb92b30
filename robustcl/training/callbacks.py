"""Callbacks that keep a run's finished work: best/last checkpoints and a per-epoch history."""

import json
import math
import os

import keras

from robustcl.training import rundir
from robustcl.files import atomic_save_weights
from robustcl.files import atomic_write_text
from robustcl.embeddings.projector import write_projector_epoch


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
        self.history_path = os.path.join(model_dir, rundir.HISTORY)
        self.best_path = rundir.weights_path(model_dir, "best")
        self.last_path = rundir.weights_path(model_dir, "last")
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


class EmbeddingProjector(keras.callbacks.Callback):
    """Every `every_epochs` epochs (and after the last), writes projector data, embedding-space
    scalars and a 2-D projection PNG for fixed validation images into `<model_dir>/projector`."""

    def __init__(self, network, run_dir, x, y, indices, class_names, attack_config, every_epochs, epochs, seed=0):
        super().__init__()
        self.network, self.run_dir = network, run_dir
        self.x, self.y, self.indices, self.class_names = x, y, indices, class_names
        self.attack_config, self.every_epochs, self.epochs, self.seed = (attack_config, every_epochs, epochs, seed)

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if done % self.every_epochs and done != self.epochs:
            return
        write_projector_epoch(
            self.run_dir,
            f"epoch_{done:03d}",
            self.network,
            self.x,
            self.y,
            self.indices,
            self.class_names,
            self.attack_config,
            step=done,
            seed=self.seed,
        )
