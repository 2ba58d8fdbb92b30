"""MOREL (Hotegni & Peitz 2024): multi-objective representation learning for robustness.

Per batch, as the public code (salomonhotegni/MOREL, src/experiments) computes it:
  - accuracy objective f_acc: the TRADES loss (KL attack) or the MART loss (CE attack), on the
    network's logits for clean and adversarial images;
  - feature objective f_feat = cosine + alpha * contrastive, where
      cosine      = mean(1 - cos(e_clean, e_adv)) of the 128-d linear embeddings e of the encoder
                    features (`--embedding_dim=128 --embedding_head=linear`),
      contrastive = multi-positive contrastive loss (temperature 0.1) of the L2-normalized output of
                    the class-adaptive attention over the clean embeddings: LayerNorm, multi-head
                    self-attention restricted to samples of the same class, residual;
  - cone scalarization of (f_feat, f_acc) with preference k, reference point a and gamma:
      L = k_feat (f_feat - a_feat) + k_acc (f_acc - a_acc) + gamma ((f_feat - a_feat) + (f_acc - a_acc)).
So with the published defaults (k = (0.1, 0.9), a = (0, 0), gamma = 2e-5, alpha = 1e-5, beta = 6)
each term's weight is: cosine 0.10002; contrastive 0.10002 * 1e-5 = 1.0002e-6; the accuracy loss
0.90002 (TRADES: CE + 6 KL; MART: boosted CE + 6 weighted KL). Each logged term is already weighted.

Choices where the code leaves room:
  - One training-mode forward of the clean and of the adversarial batch serves every term; the
    public code runs the network again for the feature terms, so BatchNorm sees each batch twice.
  - Attention within a class is one masked attention over the batch (the same softmax as running
    it class by class). Under tf.distribute it runs over the global batch (gathered from every
    replica), so N replicas train what one device trains; the public code forms classes per GPU,
    which `--contrastive_scope=replica` reproduces.
  - Anchors without a same-class positive are left out of the contrastive mean (the code counts
    them as 0).
  - The accuracy term defaults to MART, the default of the published training script.
"""

import dataclasses

import keras
import tensorflow as tf

from robustcl.losses import (
    cosine_alignment_per_example,
    cross_entropy_per_example,
    kl_per_example,
    mart_terms,
    multi_positive_per_example,
)
from robustcl.methods.base import LossTerm, Method, param, register
from robustcl.methods.trades import START_SIGMA_HELP, GaussianStart
from robustcl.registry import Registry

ACCURACY_TERMS = Registry("term", ("trades", "mart"))


@keras.saving.register_keras_serializable(package="robustcl")
class ClassAttention(keras.layers.Layer):
    """MOREL's class-adaptive multi-head attention: x + MHA(LN(x)) with attention only between
    samples of the same class. call(embeddings [B, D], labels [B]) -> [B, D]."""

    def __init__(self, num_heads=2, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.dropout = dropout

    def build(self, input_shape):
        dim = int(input_shape[-1])
        if dim % self.num_heads:
            raise ValueError(f"embedding width {dim} is not divisible by {self.num_heads} heads")
        self.norm = keras.layers.LayerNormalization(epsilon=1e-6, name="pre_norm")
        self.norm.build(input_shape)
        self.attention = keras.layers.MultiHeadAttention(
            self.num_heads, dim // self.num_heads, dropout=self.dropout, name="attention"
        )
        sequence = (1, None, dim)
        self.attention.build(sequence, sequence, sequence)

    def call(self, embeddings, labels, training=False):
        x = self.norm(embeddings)[None]  # the batch as one sequence
        labels = tf.reshape(labels, [-1])
        same_class = tf.equal(labels[:, None], labels[None, :])[None]
        attended = self.attention(x, x, x, attention_mask=same_class, training=training)[0]
        return embeddings + tf.cast(attended, embeddings.dtype)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "dropout": self.dropout}


@dataclasses.dataclass(frozen=True)
class MorelParams:
    accuracy_term: str = param(
        "mart", "accuracy objective: trades (KL attack) or mart (CE attack)", choices=ACCURACY_TERMS
    )
    beta: float = param(6.0, "beta of the TRADES/MART accuracy term", minimum=0)
    alpha: float = param(1e-5, "weight of the contrastive loss inside the feature objective", minimum=0)
    temperature: float = param(0.1, "temperature of the multi-positive contrastive loss", above=0)
    k_feature: float = param(0.1, "preference weight of the feature objective (cone scalarization)", minimum=0)
    k_accuracy: float = param(0.9, "preference weight of the accuracy objective", minimum=0)
    reference_feature: float = param(0.0, "reference point of the feature objective")
    reference_accuracy: float = param(0.0, "reference point of the accuracy objective")
    gamma: float = param(2e-5, "augmentation coefficient of the cone scalarization", minimum=0)
    attention_heads: int = param(2, "heads of the class-adaptive attention", minimum=1)
    attention_dropout: float = param(0.0, "dropout of the class-adaptive attention", minimum=0, below=1)
    start_sigma: float = param(0.001, START_SIGMA_HELP, minimum=0)


@register("morel")
class Morel(GaussianStart, Method):
    Params = MorelParams
    embedding_head = "linear"  # MOREL's feat_layer: one Dense to 128
    embedding_dim = 128
    uses_clean = True
    uses_adversarial = True

    def __init__(self, params=None, contrastive_scope="global"):
        super().__init__(params, contrastive_scope)
        p = self.params
        self.attack_objective = "kl" if p.accuracy_term == "trades" else "ce"
        accuracy_names = ("ce", "kl") if p.accuracy_term == "trades" else ("boosted_ce", "weighted_kl")
        self.loss_names = ("cosine", "contrastive", *accuracy_names)
        self.class_attention = None

    def build(self, embedding_dim):
        self.class_attention = ClassAttention(
            self.params.attention_heads, self.params.attention_dropout, name="class_attention"
        )
        self.class_attention.build((None, embedding_dim))

    @property
    def layers(self):
        return [self.class_attention]

    def losses(self, labels, clean, adversarial, augmented=None):
        p = self.params
        feature_weight = p.k_feature + p.gamma
        accuracy_weight = p.k_accuracy + p.gamma
        # Attention within a class and the contrastive loss see the global batch; this replica's
        # samples are the anchors.
        (all_labels, all_embeddings), anchors = self.global_batch((labels, clean["embedding"]))
        attended = self.class_attention(all_embeddings, all_labels, training=True)
        contrastive, has_positive = multi_positive_per_example(all_labels, attended, p.temperature, anchors)
        cosine = cosine_alignment_per_example(clean["embedding"], adversarial["embedding"])
        if p.accuracy_term == "trades":
            accuracy = {
                "ce": cross_entropy_per_example(labels, clean["logits"]),
                "kl": p.beta * kl_per_example(clean["logits"], adversarial["logits"]),
            }
        else:
            boosted, robust = mart_terms(labels, clean["logits"], adversarial["logits"], p.beta)
            accuracy = {"boosted_ce": boosted, "weighted_kl": robust}
        # The reference points shift the first term of each objective: mean(v - a) = mean(v) - a.
        first_accuracy = next(iter(accuracy))
        accuracy[first_accuracy] = accuracy[first_accuracy] - p.reference_accuracy
        terms = {
            "cosine": LossTerm(feature_weight * (cosine - p.reference_feature)),
            "contrastive": LossTerm(feature_weight * p.alpha * contrastive, has_positive),
        }
        terms.update({name: LossTerm(accuracy_weight * values) for name, values in accuracy.items()})
        return terms
