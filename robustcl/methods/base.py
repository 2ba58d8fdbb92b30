"""What a training method supplies to the one `train_step`: an attack objective and named losses.

A method never runs its own loop. `AdversarialModel.train_step` makes the adversarial batch with the
configured threat model, maximizing `attack_objective`, forwards clean and/or adversarial images as
the method asks, and minimizes the sum of the loss terms the method returns.
"""

import dataclasses
from typing import Dict, NamedTuple, Optional

import tensorflow as tf

from robustcl.registry import Registry

METHODS = Registry("method")


@dataclasses.dataclass(frozen=True)
class NoParams:
    """Hyperparameters of a method that has none."""

    def validate(self):
        pass


class LossTerm(NamedTuple):
    """Per-example loss values [B] (already multiplied by the term's weight) and optional weights [B].

    The term's value is sum(values * weights) / sum(weights) over the global batch, so examples with
    weight 0 (e.g. contrastive anchors without positives) are left out of the mean.
    """

    values: tf.Tensor
    weights: Optional[tf.Tensor] = None


class Method:
    """Base class. Subclasses set the class attributes and implement `losses`."""

    name = None
    Params = NoParams
    # Objective (robustcl.attacks.OBJECTIVES) that training's attack maximizes; None: no attack.
    attack_objective: Optional[str] = "ce"
    uses_clean = False  # losses need the training-mode forward pass of the clean batch
    uses_adversarial = True  # losses need the training-mode forward pass of the adversarial batch
    loss_names = ()  # names of the terms `losses` returns, in display order

    def __init__(self, params=None, num_classes=None):
        self.params = params if params is not None else self.Params()
        self.num_classes = num_classes

    def losses(self, labels, clean, adversarial) -> Dict[str, LossTerm]:
        """Returns {name: LossTerm}; `clean`/`adversarial` are the network's output dicts or None."""
        raise NotImplementedError


def get(name):
    return METHODS.get(name)
