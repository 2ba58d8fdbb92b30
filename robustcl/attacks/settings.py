"""The settings of a norm-ball attack that training runs (the training attack and the validation
attack are two of them)."""

import dataclasses

from robustcl.attacks.threat import THREATS
from robustcl.registry import Registry
from robustcl.settings import check_fields, option

TRAIN_ATTACKS = Registry("attack", ("none", "fgsm", "pgd"))


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """A norm-ball attack: `name` is none, fgsm (one step of size eps, no random start) or pgd."""

    name: str = option(
        "pgd", "Training attack (methods without an attack ignore it).", flag="attack", choices=TRAIN_ATTACKS
    )
    norm: str = option("linf", "Threat model norm (training and validation).", choices=THREATS)
    eps: float = option(8 / 255, "Perturbation budget in [0,1] pixel units, e.g. 8/255.", minimum=0, finite=True)
    step_size: float = option(2 / 255, "Training PGD step size, e.g. 2/255.", above=0, finite=True)
    steps: int = option(10, "Training PGD steps.", flag="attack_steps", minimum=1)
    random_start: bool = option(True, "Training PGD starts uniformly in the ball.")

    # The validation attack is a second AttackConfig: its own flags for what differs from training's.
    VALIDATION_FLAGS = {"name": "val_attack", "step_size": "val_step_size", "steps": "val_attack_steps"}

    def validate(self, flags=None):
        check_fields(self, flags=flags)
