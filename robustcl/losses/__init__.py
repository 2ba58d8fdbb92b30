"""Losses: per-example functions (values [B], for tf.distribute-correct reduction in train_step)
and `keras.losses.Loss` subclasses over them. All compute in at least float32.

Imports only the bottom layer. `mining` weights pairs for hard-positive mining (ANCHOR).
"""

from robustcl.losses.contrastive import (
    MultiPositiveContrastiveLoss,
    SupConLoss,
    SupConMarginLoss,
    multi_positive_per_example,
    supcon_margin_per_example,
    supcon_per_example,
)
from robustcl.losses.robust import (
    CosineAlignmentLoss,
    MartLoss,
    TradesLoss,
    cosine_alignment_per_example,
    cross_entropy_per_example,
    kl_per_example,
    mart_per_example,
    mart_terms,
    trades_per_example,
)

__all__ = [
    "MultiPositiveContrastiveLoss",
    "SupConLoss",
    "SupConMarginLoss",
    "multi_positive_per_example",
    "supcon_margin_per_example",
    "supcon_per_example",
    "CosineAlignmentLoss",
    "MartLoss",
    "TradesLoss",
    "cosine_alignment_per_example",
    "cross_entropy_per_example",
    "kl_per_example",
    "mart_per_example",
    "mart_terms",
    "trades_per_example",
]
