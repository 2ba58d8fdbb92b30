"""Supervised contrastive losses: SupCon (Khosla et al. 2020), with a margin, and MOREL's
multi-positive form (Tian et al. 2023), over one or several views per sample."""

import keras
import tensorflow as tf

from robustcl.losses.base import EPS, WeightedMeanLoss, as_float
from robustcl.losses.global_batch import anchor_rows

_MASKED = -1e9  # logit of excluded pairs (self): finite, so a lone anchor gives no NaN or inf


def supcon_margin_per_example(labels, features, temperature=0.1, margin=0.0, positive_weights=None, anchors=None):
    """Supervised contrastive loss with an additive margin on positive pairs, per sample.

    Features are L2-normalized (a zero vector stays zero). Every view of every anchor sample is an
    anchor; its positives are all other views with the same label (other views of the same image
    included), its contrast set all other views of the batch. For anchor i with positives P(i) and
    weights w_ip:

        l_ip = (s_ip - margin * [p in P(i)]) / temperature      for every j != i
        L_i  = -sum_p w_ip (l_ip - logsumexp_{j != i} l_ij) / sum_p w_ip

    The margin lowers every positive's similarity, so the loss keeps falling until positives
    exceed negatives by `margin`: a minimum separation between classes. margin=0 with unit weights
    is SupCon's L_out.

    Args:
      labels: int [B].
      features: [B, D] or [B, V, D] (V views per sample).
      positive_weights: optional [A*V, B*V] weights of (anchor, contrast) pairs in sample-major order
        (index b*V + v); only entries on positive pairs matter. Used by hard-positive mining.
      anchors: optional (start, count): only samples start .. start+count-1 are anchors (A = count);
        the contrast set stays all B samples. Under tf.distribute, B is the gathered global batch and
        each replica scores its own samples (see `robustcl.losses.global_batch`). Default: all.
    Returns:
      (values [A], weights [A]): each anchor sample's mean over its views that have positives, and
      the fraction of its views that do (0 when none: leave it out of the mean).
    """
    features = as_float(features)
    if features.shape.rank == 2:
        features = features[:, None, :]
    batch, views = tf.shape(features)[0], tf.shape(features)[1]
    n = batch * views
    z = tf.math.l2_normalize(tf.reshape(features, [n, -1]), axis=-1, epsilon=EPS)
    contrast_labels = tf.repeat(tf.reshape(labels, [-1]), views)
    rows, count = anchor_rows(anchors, batch, views)
    self_mask = tf.equal(rows[:, None], tf.range(n)[None, :])
    positive = tf.logical_and(
        tf.equal(tf.gather(contrast_labels, rows)[:, None], contrast_labels[None, :]), tf.logical_not(self_mask)
    )
    positive_f = tf.cast(positive, z.dtype)
    weights = positive_f if positive_weights is None else positive_f * as_float(positive_weights)
    logits = (tf.matmul(tf.gather(z, rows), z, transpose_b=True) - margin * positive_f) / temperature
    logits = tf.where(self_mask, tf.cast(_MASKED, z.dtype), logits)
    log_prob = logits - tf.reduce_logsumexp(logits, axis=1, keepdims=True)
    weight_sum = tf.reduce_sum(weights, axis=1)
    per_anchor = -tf.reduce_sum(weights * log_prob, axis=1) / tf.maximum(weight_sum, EPS)
    valid = tf.cast(weight_sum > 0, z.dtype)
    per_anchor = tf.reshape(per_anchor * valid, [count, views])
    valid = tf.reshape(valid, [count, views])
    valid_views = tf.reduce_sum(valid, axis=1)
    values = tf.reduce_sum(per_anchor, axis=1) / tf.maximum(valid_views, 1.0)
    return values, valid_views / tf.cast(views, z.dtype)


def supcon_per_example(labels, features, temperature=0.1, anchors=None):
    """SupCon (Khosla et al. 2020, L_out): `supcon_margin_per_example` with margin 0."""
    return supcon_margin_per_example(labels, features, temperature, 0.0, anchors=anchors)


def multi_positive_per_example(labels, embeddings, temperature=0.1, anchors=None):
    """MOREL's multi-positive contrastive loss: cross-entropy of each anchor's softmax over the other
    samples against a target spread uniformly over its same-class positives (self excluded).

    With a uniform target this is the same function as SupCon's L_out on one view; anchors without a
    positive are left out of the mean (MOREL's code counts them as 0 in it).
    """
    return supcon_margin_per_example(labels, embeddings, temperature, 0.0, anchors=anchors)


@keras.saving.register_keras_serializable(package="robustcl")
class SupConMarginLoss(WeightedMeanLoss):
    """`supcon_margin_per_example` as a Keras loss: loss(labels, features[, sample_weight])."""

    def __init__(self, temperature=0.1, margin=0.0, reduction="sum_over_batch_size", name="supcon_margin", dtype=None):
        _check_temperature(temperature)
        super().__init__(
            supcon_margin_per_example, reduction, name, dtype, temperature=float(temperature), margin=float(margin)
        )


@keras.saving.register_keras_serializable(package="robustcl")
class SupConLoss(WeightedMeanLoss):
    """Supervised contrastive loss (Khosla et al. 2020, L_out): the margin-0 SupConMarginLoss."""

    def __init__(self, temperature=0.1, reduction="sum_over_batch_size", name="supcon", dtype=None):
        _check_temperature(temperature)
        super().__init__(supcon_per_example, reduction, name, dtype, temperature=float(temperature))


@keras.saving.register_keras_serializable(package="robustcl")
class MultiPositiveContrastiveLoss(WeightedMeanLoss):
    """MOREL's multi-positive contrastive loss: loss(labels, embeddings [B, D])."""

    def __init__(self, temperature=0.1, reduction="sum_over_batch_size", name="multi_positive", dtype=None):
        _check_temperature(temperature)
        super().__init__(multi_positive_per_example, reduction, name, dtype, temperature=float(temperature))


def _check_temperature(temperature):
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
