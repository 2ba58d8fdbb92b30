"""Learning-rate schedules defined in epochs, evaluated per optimizer step."""

import math

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="robustcl")
class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then piecewise-constant decay at given epochs, cosine decay to 0, or constant.

    piecewise: lr * factor^k after the k-th boundary epoch (e.g. 0.1 -> 0.01 at 75 -> 0.001 at 90,
    the schedule of PGD-AT/TRADES/MART on CIFAR). cosine: lr * (1 + cos(pi * t)) / 2 over the
    epochs after warmup.
    """

    def __init__(self, kind, base_lr, steps_per_epoch, epochs, decay_epochs=(), decay_factor=0.1, warmup_epochs=0):
        self.kind = kind
        self.base_lr = float(base_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.decay_epochs = tuple(int(e) for e in decay_epochs)
        self.decay_factor = float(decay_factor)
        self.warmup_epochs = int(warmup_epochs)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        epoch = step / self.steps_per_epoch  # fractional epochs done
        if self.kind == "piecewise":
            passed = tf.add_n([tf.cast(epoch >= e, tf.float32) for e in self.decay_epochs] + [0.0])
            lr = self.base_lr * tf.pow(self.decay_factor, passed)
        elif self.kind == "cosine":
            span = max(self.epochs - self.warmup_epochs, 1)
            t = tf.clip_by_value((epoch - self.warmup_epochs) / span, 0.0, 1.0)
            lr = self.base_lr * 0.5 * (1.0 + tf.cos(math.pi * t))
        else:
            lr = tf.constant(self.base_lr)
        if self.warmup_epochs:
            lr = tf.minimum(lr, self.base_lr * (epoch + 1.0 / self.steps_per_epoch) / self.warmup_epochs)
        return lr

    def get_config(self):
        return {
            "kind": self.kind,
            "base_lr": self.base_lr,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "decay_epochs": list(self.decay_epochs),
            "decay_factor": self.decay_factor,
            "warmup_epochs": self.warmup_epochs,
        }


def from_config(optimizer_config, steps_per_epoch):
    c = optimizer_config
    return EpochSchedule(
        c.lr_schedule, c.learning_rate, steps_per_epoch, c.epochs, c.lr_decay_epochs, c.lr_decay_factor, c.warmup_epochs
    )
