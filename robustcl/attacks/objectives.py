"""Attack objectives: per-example losses of the model's outputs that an attack maximizes.

Each takes the logits on the perturbed input, the labels and the logits on the clean input (computed
once, in inference mode, before the attack) and returns a float32 vector [batch].
"""

import tensorflow as tf

from robustcl.registry import Registry

OBJECTIVES = Registry("attack objective")


@OBJECTIVES.register("ce")
def cross_entropy(adv_logits, labels, clean_logits=None):
    """Cross-entropy of the true label (PGD-AT, MART, most attacks)."""
    del clean_logits
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(adv_logits, tf.float32))


@OBJECTIVES.register("kl")
def kl_from_clean(adv_logits, labels, clean_logits):
    """KL(p_clean || p_adv), TRADES' inner maximization; needs no labels."""
    del labels
    clean_log_p = tf.nn.log_softmax(tf.cast(clean_logits, tf.float32))
    adv_log_p = tf.nn.log_softmax(tf.cast(adv_logits, tf.float32))
    return tf.reduce_sum(tf.exp(clean_log_p) * (clean_log_p - adv_log_p), axis=-1)
