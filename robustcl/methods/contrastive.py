"""Supervised-contrastive robust training: SupCon with a margin, ANCHOR, contrastive AT.

All three train the classifier with cross-entropy beside a supervised contrastive loss on the
network's embedding (use a projection head: `--embedding_dim=128`, MLP by default).
"""

import dataclasses

import tensorflow as tf

from robustcl.losses import cross_entropy_per_example, supcon_margin_per_example
from robustcl.methods.base import LossTerm, Method, param, register
from robustcl.losses.mining import MINING_RULES, hard_positive_weights


def _stacked_embeddings(*outputs):
    """[B, V, D]: the embeddings of the views that exist (None views are skipped)."""
    return tf.stack([o["embedding"] for o in outputs if o is not None], 1)


def _global_supcon(method, labels, features, margin=0.0, mining=None, hardness=0.0):
    """SupCon (with margin and optional hard-positive mining) of this replica's samples as anchors
    against the global batch: values and weights [local batch] for a LossTerm."""
    (all_labels, all_features), anchors = method.global_batch((labels, features))
    pair_weights = hard_positive_weights(all_labels, all_features, mining, hardness, anchors) if mining else None
    return supcon_margin_per_example(all_labels, all_features, method.params.temperature, margin, pair_weights, anchors)


def _classification_term(labels, clean, adversarial):
    """CE on the adversarial logits when training has an attack, else on the clean logits."""
    outputs = adversarial if adversarial is not None else clean
    return LossTerm(cross_entropy_per_example(labels, outputs["logits"]))


@dataclasses.dataclass(frozen=True)
class SupConMarginParams:
    temperature: float = param(0.1, "temperature of the contrastive loss", above=0)
    margin: float = param(0.1, "additive margin on positive-pair cosine similarity (0: SupCon)", minimum=0)
    weight: float = param(1.0, "weight of the contrastive loss beside cross-entropy", minimum=0)
    adversarial_views: bool = param(True, "add the adversarial embeddings as a second view")


@register("supcon_margin")
class SupConMargin(Method):
    """CE (adversarial logits under an attack, else clean) + weight * SupConMarginLoss over the clean
    embeddings and, with --supcon_margin_adversarial_views, the adversarial ones as a second view.
    The attack (--attack none, fgsm or pgd) maximizes cross-entropy.

    Choice: the paper family leaves which logits the CE sees open; under an attack we train the
    classifier on adversarial examples, as PGD-AT does, since robust accuracy is the goal.
    """

    embedding_head = "mlp"  # SimCLR/SupCon's projection head
    embedding_dim = 128
    Params = SupConMarginParams
    uses_clean = True
    uses_adversarial = True
    loss_names = ("ce", "supcon")

    def losses(self, labels, clean, adversarial, augmented=None):
        p = self.params
        features = _stacked_embeddings(clean, adversarial if p.adversarial_views else None)
        values, weights = _global_supcon(self, labels, features, p.margin)
        return {"ce": _classification_term(labels, clean, adversarial), "supcon": LossTerm(p.weight * values, weights)}


@dataclasses.dataclass(frozen=True)
class AnchorParams:
    temperature: float = param(0.1, "temperature of the contrastive loss", above=0)
    weight: float = param(1.0, "weight of the contrastive loss beside adversarial cross-entropy", minimum=0)
    mining: str = param(
        "exp", "hard-positive rule: exp (weight exp(hardness * (1 - cos))) or none", choices=MINING_RULES
    )
    hardness: float = param(1.0, "strength of hard-positive mining (0: uniform, plain SupCon)", minimum=0)


@register("anchor")
class Anchor(Method):
    """ANCHOR (Bhattacharya et al. 2023): adversarial training + SupCon with hard-positive mining.

    Views of each image: two augmentations and the adversarial example of the first. Positives are
    all same-class views (the image's own augmentations and adversarial view included); positives
    far from the anchor in embedding space get larger weights (`mining`, `hardness`).
    Loss: CE(adversarial) + weight * weighted SupCon. The attack maximizes cross-entropy.
    Choice: the weighting exp(hardness * (1 - cos)), normalized to mean 1 per anchor, is the
    positive-side analogue of the hard-negative weighting of Robinson et al. (2021) that ANCHOR
    builds on; the weights carry no gradient.
    """

    embedding_head = "mlp"  # SimCLR/SupCon's projection head
    embedding_dim = 128
    Params = AnchorParams
    uses_clean = True
    uses_adversarial = True
    data_views = 2
    loss_names = ("ce_adv", "supcon")

    def losses(self, labels, clean, adversarial, augmented=None):
        p = self.params
        features = _stacked_embeddings(clean, augmented, adversarial)
        values, weights = _global_supcon(self, labels, features, 0.0, p.mining, p.hardness)
        return {
            "ce_adv": _classification_term(labels, clean, adversarial),
            "supcon": LossTerm(p.weight * values, weights),
        }


@dataclasses.dataclass(frozen=True)
class ContrastiveATParams:
    temperature: float = param(0.1, "temperature of the contrastive loss", above=0)
    weight: float = param(1.0, "weight of the contrastive loss beside adversarial cross-entropy", minimum=0)
    attack_ce_weight: float = param(
        1.0,
        "weight of cross-entropy inside the attack objective beside the contrastive loss (0: contrastive only)",
        minimum=0,
    )


@register("contrastive_at")
class ContrastiveAT(Method):
    """Contrastive adversarial training: the clean, augmented and adversarial views of each image
    are pulled together and other classes pushed apart (SupCon over the three views), beside CE on
    the adversarial logits.

    The perturbation maximizes the contrastive objective itself: the SupCon loss of the batch's
    (clean, adversarial) embeddings, the clean ones fixed from the inference-mode forward, plus
    `attack_ce_weight` times cross-entropy; model parameters then minimize the same loss family.
    Choice: the attack contrasts against the clean views only (not the second augmentation) so it
    needs no extra forward pass per attack step.
    """

    embedding_head = "mlp"  # SimCLR/SupCon's projection head
    embedding_dim = 128
    Params = ContrastiveATParams
    uses_clean = True
    uses_adversarial = True
    data_views = 2
    loss_names = ("ce_adv", "supcon")
    objective_uses_global_batch = True

    def objective(self, adversarial, labels, reference):
        p = self.params
        features = tf.stack([tf.stop_gradient(reference["embedding"]), adversarial["embedding"]], 1)
        values, weights = _global_supcon(self, labels, features)
        loss = values * weights
        if p.attack_ce_weight:
            loss += p.attack_ce_weight * cross_entropy_per_example(labels, adversarial["logits"])
        return loss

    def losses(self, labels, clean, adversarial, augmented=None):
        p = self.params
        values, weights = _global_supcon(self, labels, _stacked_embeddings(clean, augmented, adversarial))
        return {
            "ce_adv": _classification_term(labels, clean, adversarial),
            "supcon": LossTerm(p.weight * values, weights),
        }
