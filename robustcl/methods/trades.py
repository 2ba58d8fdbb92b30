"""TRADES (Zhang et al. 2019) and MART (Wang et al. 2020), as their public code trains."""

import dataclasses

from robustcl.losses import cross_entropy_per_example, kl_per_example, mart_terms
from robustcl.methods.base import LossTerm, Method, check_param, param, register

_START_HELP = ("std of the Gaussian random start x + sigma * N(0, 1) of the public code; 0 uses the "
               "uniform start in the eps-ball")


@dataclasses.dataclass(frozen=True)
class TradesParams:
    beta: float = param(6.0, "weight of the KL robustness term (1/lambda in the paper)")
    start_sigma: float = param(0.001, _START_HELP)

    def validate(self):
        check_param("trades", "beta", self.beta >= 0, f"must be >= 0, got {self.beta}")
        check_param("trades", "start_sigma", self.start_sigma >= 0,
                    f"must be >= 0, got {self.start_sigma}")


@register("trades")
class Trades(Method):
    """CE(clean) + beta * KL(p_clean || p_adv); the attack maximizes the same KL (objective "kl")."""

    Params = TradesParams
    attack_objective = "kl"
    uses_clean = True
    uses_adversarial = True
    loss_names = ("ce", "kl")

    def losses(self, labels, clean, adversarial, augmented=None):
        return {"ce": LossTerm(cross_entropy_per_example(labels, clean["logits"])),
                "kl": LossTerm(self.params.beta * kl_per_example(clean["logits"],
                                                                 adversarial["logits"]))}


@dataclasses.dataclass(frozen=True)
class MartParams:
    beta: float = param(6.0, "weight of the misclassification-aware KL term")
    start_sigma: float = param(0.001, _START_HELP)

    def validate(self):
        check_param("mart", "beta", self.beta >= 0, f"must be >= 0, got {self.beta}")
        check_param("mart", "start_sigma", self.start_sigma >= 0,
                    f"must be >= 0, got {self.start_sigma}")


@register("mart")
class Mart(Method):
    """Boosted CE on adversarial examples + beta * KL weighted by (1 - p_clean[y]); CE attack."""

    Params = MartParams
    attack_objective = "ce"
    uses_clean = True
    uses_adversarial = True
    loss_names = ("boosted_ce", "weighted_kl")

    def losses(self, labels, clean, adversarial, augmented=None):
        boosted, robust = mart_terms(labels, clean["logits"], adversarial["logits"], self.params.beta)
        return {"boosted_ce": LossTerm(boosted), "weighted_kl": LossTerm(robust)}
