"""Pair weighting for contrastive losses: hard-positive mining (ANCHOR)."""

import tensorflow as tf

from robustcl.losses.base import EPS, as_float
from robustcl.losses.global_batch import anchor_rows
from robustcl.registry import Registry

MINING_RULES = Registry("mining rule", ("none", "exp"))


def hard_positive_weights(labels, features, rule="exp", hardness=1.0, anchors=None):
    """Weights [A*V, B*V] for the (anchor, contrast) pairs of `features` ([B, D] or [B, V, D],
    sample-major order), anchors as in `supcon_margin_per_example` (default: every sample, A = B).

    rule "exp": w_ij = exp(hardness * (1 - cos(z_i, z_j))), normalized so the positives of each
    anchor average 1: same-class pairs far apart in embedding space (hard positives) weigh more,
    and hardness 0 gives uniform weights (plain SupCon). rule "none": all ones.
    Weights carry no gradient: they choose which positives matter, the loss moves the embeddings.
    """
    features = tf.stop_gradient(as_float(features))
    if features.shape.rank == 2:
        features = features[:, None, :]
    batch, views = tf.shape(features)[0], tf.shape(features)[1]
    z = tf.math.l2_normalize(tf.reshape(features, [-1, tf.shape(features)[-1]]), -1, epsilon=EPS)
    n = tf.shape(z)[0]
    rows, count = anchor_rows(anchors, batch, views)
    if rule == "none":
        return tf.ones([count * views, n], z.dtype)
    MINING_RULES.check(rule)
    contrast_labels = tf.repeat(tf.reshape(labels, [-1]), views)
    positive = tf.cast(
        tf.logical_and(
            tf.equal(tf.gather(contrast_labels, rows)[:, None], contrast_labels[None, :]),
            tf.not_equal(rows[:, None], tf.range(n)[None, :]),
        ),
        z.dtype,
    )
    raw = tf.exp(hardness * (1.0 - tf.matmul(tf.gather(z, rows), z, transpose_b=True))) * positive
    mean = tf.reduce_sum(raw, 1, keepdims=True) / tf.maximum(tf.reduce_sum(positive, 1, keepdims=True), 1.0)
    return raw / tf.maximum(mean, EPS)
