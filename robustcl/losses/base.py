"""Shared pieces of the losses: dtype policy and a Keras Loss whose mean skips weight-0 examples."""

import keras
import tensorflow as tf
from keras.src.losses.loss import scale_loss_for_distribution

EPS = 1e-12


def as_float(x):
    """At least float32: half-precision inputs (mixed precision) are computed in float32;
    float64 stays float64 (tests compare against float64 references)."""
    x = tf.convert_to_tensor(x)
    return x if x.dtype in (tf.float32, tf.float64) else tf.cast(x, tf.float32)


class WeightedMeanLoss(keras.losses.Loss):
    """The one Keras wrapper of robustcl's per-example loss functions, as Keras'
    LossFunctionWrapper wraps its functions: `fn(y_true, y_pred, **kwargs)` returns values [B] or
    (values [B], weights [B]); the loss classes are direct subclasses naming fn and its kwargs.

    `call` returns the per-example values (Keras' contract). `__call__` reduces them with the
    weights: mean reductions ("sum_over_batch_size", "mean", "mean_with_sample_weight") give
    sum(values * weights) / sum(weights), so examples of weight 0 (contrastive anchors with no
    positive) are left out of the mean instead of pulling it towards 0 (Keras' reduction would
    divide by the batch size); "sum" gives sum(values * weights); "none"/None the values (times
    `sample_weight`, as Keras'). `sample_weight` multiplies the weights. Means are scaled for
    tf.distribute as Keras' are (each replica's loss divided by the replica count); training uses
    the functional form and takes the denominator over the global batch instead. `dtype`, when
    given, is the computation's; by default inputs compute in at least float32 (float64 stays).
    """

    def __init__(self, fn, reduction="sum_over_batch_size", name=None, dtype=None, **kwargs):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.fn = fn
        self._fn_kwargs = kwargs
        self._computation_dtype = dtype

    def _values_and_weights(self, y_true, y_pred):
        if self._computation_dtype is not None:
            y_pred = tf.cast(y_pred, keras.backend.standardize_dtype(self.dtype))
        out = self.fn(y_true, y_pred, **self._fn_kwargs)
        return out if isinstance(out, tuple) else (out, tf.ones_like(out))

    def call(self, y_true, y_pred):
        return self._values_and_weights(y_true, y_pred)[0]

    def __call__(self, y_true, y_pred, sample_weight=None):
        with tf.name_scope(self.name):
            values, weights = self._values_and_weights(y_true, y_pred)
            if sample_weight is not None:
                sample_weight = tf.cast(tf.reshape(sample_weight, [-1]), weights.dtype)
                weights = weights * sample_weight
            if self.reduction in (None, "none"):
                return values if sample_weight is None else values * sample_weight
            total = tf.reduce_sum(values * weights)
            if self.reduction == "sum":
                return total
            return scale_loss_for_distribution(total / tf.maximum(tf.reduce_sum(weights), EPS))

    def get_config(self):
        # Keras' Loss.get_config leaves dtype out; a loss given one keeps it.
        dtype = {"dtype": self._computation_dtype} if self._computation_dtype is not None else {}
        return {**super().get_config(), **dtype, **self._fn_kwargs}
