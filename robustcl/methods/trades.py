"""TRADES (Zhang et al. 2019) and MART (Wang et al. 2020), as their public code trains."""

import dataclasses

from robustcl.losses import cross_entropy_per_example, kl_per_example, mart_terms
from robustcl.methods.base import LossTerm, Method, param, register

START_SIGMA_HELP = (
    "std of the Gaussian random start x + sigma * N(0, 1) of the public TRADES/MART "
    "code; 0 uses the uniform start in the eps-ball"
)


class GaussianStart:
    """A method whose Params has `start_sigma`: its attack starts as the TRADES/MART code's does."""

    @property
    def attack_start_sigma(self):
        return self.params.start_sigma or None  # 0: the threat model's uniform start


@dataclasses.dataclass(frozen=True)
class RobustKLParams:
    """TRADES' and MART's hyperparameters (the same two)."""

    beta: float = param(
        6.0,
        "weight of the KL robustness term (TRADES: 1/lambda of the paper; MART: of the misclassification-aware KL)",
        minimum=0,
    )
    start_sigma: float = param(0.001, START_SIGMA_HELP, minimum=0)


@register("trades")
class Trades(GaussianStart, Method):
    """CE(clean) + beta * KL(p_clean || p_adv); the attack maximizes the same KL (objective "kl")."""

    Params = RobustKLParams
    attack_objective = "kl"
    uses_clean = True
    uses_adversarial = True
    loss_names = ("ce", "kl")

    def losses(self, labels, clean, adversarial, augmented=None):
        return {
            "ce": LossTerm(cross_entropy_per_example(labels, clean["logits"])),
            "kl": LossTerm(self.params.beta * kl_per_example(clean["logits"], adversarial["logits"])),
        }


@register("mart")
class Mart(GaussianStart, Method):
    """Boosted CE on adversarial examples + beta * KL weighted by (1 - p_clean[y]); CE attack."""

    Params = RobustKLParams
    attack_objective = "ce"
    uses_clean = True
    uses_adversarial = True
    loss_names = ("boosted_ce", "weighted_kl")

    def losses(self, labels, clean, adversarial, augmented=None):
        boosted, robust = mart_terms(labels, clean["logits"], adversarial["logits"], self.params.beta)
        return {"boosted_ce": LossTerm(boosted), "weighted_kl": LossTerm(robust)}
