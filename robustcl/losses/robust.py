"""Alignment and robust-accuracy losses: cosine alignment (MOREL), TRADES, MART."""

import keras
import tensorflow as tf

from robustcl.losses.base import EPS, WeightedMeanLoss, as_float


def cosine_alignment_per_example(clean, adversarial):
    """1 - cos(clean_i, adversarial_i): 0 when aligned, 2 when opposite. A zero vector has cosine 0
    with everything (loss 1) and finite gradients."""
    clean, adversarial = as_float(clean), as_float(adversarial)
    cos = tf.reduce_sum(
        tf.math.l2_normalize(clean, -1, epsilon=EPS) * tf.math.l2_normalize(adversarial, -1, epsilon=EPS), axis=-1
    )
    return 1.0 - cos


def kl_per_example(clean_logits, adversarial_logits):
    """KL(softmax(clean) || softmax(adversarial)), summed over classes (TRADES' robust term)."""
    log_p = tf.nn.log_softmax(as_float(clean_logits))
    log_q = tf.nn.log_softmax(as_float(adversarial_logits))
    return tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)


def cross_entropy_per_example(labels, logits):
    logits = as_float(logits)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32), logits)


def trades_per_example(labels, clean_logits, adversarial_logits, beta=6.0):
    """TRADES (Zhang et al. 2019): CE(clean) + beta * KL(p_clean || p_adv)."""
    return cross_entropy_per_example(labels, clean_logits) + beta * kl_per_example(clean_logits, adversarial_logits)


def mart_terms(labels, clean_logits, adversarial_logits, beta=6.0):
    """MART (Wang et al. 2020) per example, as its public code computes it:

      boosted CE = CE(adv) - log(1.0001 - p_adv[strongest wrong class])
      robust     = beta * KL(p_clean || p_adv) * (1.0000001 - p_clean[y])

    (the small constants are the public code's, keeping the logs finite).
    Returns (boosted_ce [B], weighted_kl [B]).
    """
    labels = tf.cast(labels, tf.int32)
    adversarial_logits, clean_logits = as_float(adversarial_logits), as_float(clean_logits)
    num_classes = tf.shape(adversarial_logits)[-1]
    p_adv = tf.nn.softmax(adversarial_logits)
    true_mask = tf.one_hot(labels, num_classes, dtype=p_adv.dtype)
    # Probability of the most likely wrong class (MART: the top class unless it is y, else the second).
    strongest_wrong = tf.reduce_max(p_adv - 2.0 * true_mask, axis=-1)
    boosted = cross_entropy_per_example(labels, adversarial_logits) - tf.math.log(1.0001 - strongest_wrong + 1e-12)
    p_clean = tf.nn.softmax(clean_logits)
    true_clean = tf.reduce_sum(p_clean * true_mask, axis=-1)
    # MART's code: torch KLDivLoss(log(p_adv + 1e-12), p_clean) = xlogy(p, p) - p * log(p_adv + 1e-12).
    kl = tf.reduce_sum(tf.math.xlogy(p_clean, p_clean) - p_clean * tf.math.log(p_adv + 1e-12), -1)
    return boosted, beta * kl * (1.0000001 - true_clean)


def mart_per_example(labels, clean_logits, adversarial_logits, beta=6.0):
    boosted, robust = mart_terms(labels, clean_logits, adversarial_logits, beta)
    return boosted + robust


def _stacked(fn):
    """fn(labels, clean_logits, adversarial_logits, beta) over y_pred = stack([clean, adversarial], 1)."""

    def over_stacked(labels, stacked, beta):
        stacked = as_float(stacked)
        return fn(labels, stacked[:, 0], stacked[:, 1], beta)

    over_stacked.__name__ = f"{fn.__name__}_stacked"
    return over_stacked


@keras.saving.register_keras_serializable(package="robustcl")
class CosineAlignmentLoss(WeightedMeanLoss):
    """loss(clean_embeddings, adversarial_embeddings) = mean of 1 - cosine."""

    def __init__(self, reduction="sum_over_batch_size", name="cosine_alignment", dtype=None):
        super().__init__(cosine_alignment_per_example, reduction, name, dtype)


@keras.saving.register_keras_serializable(package="robustcl")
class TradesLoss(WeightedMeanLoss):
    """loss(labels, stack([clean_logits, adversarial_logits], axis=1)) = CE(clean) + beta * KL."""

    def __init__(self, beta=6.0, reduction="sum_over_batch_size", name="trades", dtype=None):
        super().__init__(_stacked(trades_per_example), reduction, name, dtype, beta=float(beta))


@keras.saving.register_keras_serializable(package="robustcl")
class MartLoss(WeightedMeanLoss):
    """loss(labels, stack([clean_logits, adversarial_logits], axis=1)) = boosted CE + weighted KL."""

    def __init__(self, beta=6.0, reduction="sum_over_batch_size", name="mart", dtype=None):
        super().__init__(_stacked(mart_per_example), reduction, name, dtype, beta=float(beta))
