"""Callbacks: a run's finished work kept (best/last checkpoints, a per-epoch history) and the
TensorBoard embedding projector."""

import json
import math
import os

import keras
import numpy as np

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


class Projector(keras.callbacks.Callback):
    """The TensorBoard embedding projector for a fixed set of images: every `every_epochs` epochs
    (and after the last), their clean and adversarial embeddings with metadata and thumbnails, the
    embedding-space scalars and a 2-D projection PNG, in `log_dir` (open it with
    `tensorboard --logdir`, Projector tab).

    Args:
      log_dir: where the projector run goes.
      x, y: images in [0, 1] [N, H, W, C] and their labels.
      class_names: names in label order (default "0", "1", ...).
      every_epochs: how often.
      attack: the robustcl.attacks.AttackConfig of the adversarial view (default: the model's
        validation attack).
      indices: the images' ids in the metadata (default 0..N-1).
    """

    def __init__(self, log_dir, x, y, class_names=None, every_epochs=1, attack=None, indices=None, seed=0):
        super().__init__()
        if every_epochs < 1:
            raise ValueError(f"every_epochs: must be >= 1, got {every_epochs}")
        self.log_dir, self.x, self.y = log_dir, np.asarray(x, np.float32), np.asarray(y)
        if len(self.x) != len(self.y):
            raise ValueError(f"x and y: {len(self.x)} images, {len(self.y)} labels")
        self.class_names = class_names or [str(i) for i in range(int(self.y.max()) + 1)]
        self.indices = np.arange(len(self.x)) if indices is None else np.asarray(indices)
        self.every_epochs, self.attack, self.seed = every_epochs, attack, seed

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if done % self.every_epochs and done != self.params.get("epochs"):
            return
        write_projector_epoch(
            self.log_dir,
            f"epoch_{done:03d}",
            self.model.network,
            self.x,
            self.y,
            self.indices,
            self.class_names,
            self.attack or self.model.val_attack,
            step=done,
            seed=self.seed,
        )
