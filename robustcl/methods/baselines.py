"""Baselines: standard (clean) training and PGD adversarial training (Madry et al. 2018)."""

from robustcl.losses import cross_entropy_per_example as cross_entropy
from robustcl.methods.base import LossTerm, Method, register


@register("standard")
class Standard(Method):
    """Cross-entropy on clean images; no attack during training."""

    attack_objective = None
    uses_clean = True
    uses_adversarial = False
    loss_names = ("ce",)

    def losses(self, labels, clean, adversarial, augmented=None):
        return {"ce": LossTerm(cross_entropy(labels, clean["logits"]))}


@register("pgd_at")
class PGDAT(Method):
    """Cross-entropy on adversarial examples that maximize cross-entropy (Madry et al. 2018)."""

    attack_objective = "ce"
    uses_clean = False
    uses_adversarial = True
    loss_names = ("ce_adv",)

    def losses(self, labels, clean, adversarial, augmented=None):
        return {"ce_adv": LossTerm(cross_entropy(labels, adversarial["logits"]))}
