"""Shared pieces of the losses: dtype policy and a Keras Loss whose mean skips weight-0 examples."""

import keras
import tensorflow as tf

EPS = 1e-12


def as_float(x):
    """At least float32: half-precision inputs (mixed precision) are computed in float32;
    float64 stays float64 (tests compare against float64 references)."""
    x = tf.convert_to_tensor(x)
    return x if x.dtype in (tf.float32, tf.float64) else tf.cast(x, tf.float32)


class WeightedMeanLoss(keras.losses.Loss):
    """A Keras Loss over a per-example function returning (values [B], weights [B]).

    Mean reductions ("sum_over_batch_size", "mean", "mean_with_sample_weight") give
    sum(values * weights) / sum(weights), so examples of weight 0 (e.g. contrastive anchors with no
    positive) are left out of the mean instead of pulling it towards 0; "sum" gives
    sum(values * weights) and "none"/None the per-example values. `sample_weight` multiplies the
    weights. (Under tf.distribute, AdversarialModel uses the functional form and takes the
    denominator over the global batch.)
    """

    def per_example(self, y_true, y_pred):
        raise NotImplementedError

    def call(self, y_true, y_pred):
        return self.per_example(y_true, y_pred)[0]

    def __call__(self, y_true, y_pred, sample_weight=None):
        with tf.name_scope(self.name):
            values, weights = self.per_example(y_true, y_pred)
            if sample_weight is not None:
                weights = weights * tf.cast(tf.reshape(sample_weight, [-1]), weights.dtype)
            if self.reduction in (None, "none"):
                return values
            total = tf.reduce_sum(values * weights)
            if self.reduction == "sum":
                return total
            return total / tf.maximum(tf.reduce_sum(weights), EPS)
