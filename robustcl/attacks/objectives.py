"""Attack objectives: per-example losses that an attack maximizes.

Each takes the network's outputs on the perturbed input, the labels and the outputs on the clean
input (computed once, in inference mode, before the attack) and returns a float32 vector [batch].
Outputs are the network's dicts ({"features", "embedding", "logits"}), so an objective may use the
embedding as well as the logits.
"""

import numpy as np
import tensorflow as tf

from robustcl.losses import cross_entropy_per_example, kl_per_example
from robustcl.registry import Registry

OBJECTIVES = Registry("attack objective")


@OBJECTIVES.register("ce")
def cross_entropy(adversarial, labels, clean=None):
    """Cross-entropy of the true label (PGD-AT, MART, most attacks)."""
    del clean
    return cross_entropy_per_example(labels, adversarial["logits"])


@OBJECTIVES.register("kl")
def kl_from_clean(adversarial, labels, clean):
    """KL(p_clean || p_adv), TRADES' inner maximization; needs no labels."""
    del labels
    return kl_per_example(clean["logits"], adversarial["logits"])


def _sorted_logits(logits):
    return tf.sort(tf.cast(logits, tf.float32), axis=-1, direction="DESCENDING")


def margin_per_example(logits, labels):
    """z_y - max_{j != y} z_j: positive while correctly classified (Square and CW use it)."""
    logits = tf.cast(logits, tf.float32)
    true = tf.gather(logits, tf.cast(labels, tf.int32), batch_dims=1)
    others = tf.where(
        tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1]) > 0, tf.cast(-np.inf, tf.float32), logits
    )
    return true - tf.reduce_max(others, axis=-1)


def dlr_per_example(logits, labels):
    """Difference of logits ratio (Croce & Hein 2020): -(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3)."""
    ordered = _sorted_logits(logits)
    return -margin_per_example(logits, labels) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def dlr_targeted_per_example(logits, labels, targets):
    """Targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)."""
    logits = tf.cast(logits, tf.float32)
    ordered = _sorted_logits(logits)
    true = tf.gather(logits, tf.cast(labels, tf.int32), batch_dims=1)
    target = tf.gather(logits, tf.cast(targets, tf.int32), batch_dims=1)
    return -(true - target) / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)


# The objectives that compare with the clean outputs: a training step computes the clean inference
# pass before its attack only for these (or for a method's own objective, see Method).
OBJECTIVES_READING_CLEAN = frozenset({"kl"})


@OBJECTIVES.register("cw")
def carlini_wagner(adversarial, labels, clean=None):
    """CW margin loss max_{j != y} z_j - z_y (PGD on it is the CW-Linf attack)."""
    del clean
    return -margin_per_example(adversarial["logits"], labels)


@OBJECTIVES.register("dlr")
def difference_of_logits_ratio(adversarial, labels, clean=None):
    del clean
    return dlr_per_example(adversarial["logits"], labels)
