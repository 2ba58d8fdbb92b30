"""Attacks: threat models x optimizers x objectives. Attacks never change model state.

Imports losses (objectives) and the bottom layer; its settings: attacks/settings.py.
"""

from robustcl.attacks.objectives import OBJECTIVES
from robustcl.attacks.pgd import attack_from_config, fgsm, pgd
from robustcl.attacks.threat import L2Ball, LinfBall, threat_model

__all__ = ["OBJECTIVES", "attack_from_config", "fgsm", "pgd", "L2Ball", "LinfBall", "threat_model"]
