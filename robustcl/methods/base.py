"""What a training method supplies to the one `train_step`: an attack objective and named losses.

A method never runs its own loop. `AdversarialModel.train_step` makes the adversarial batch with the
configured threat model, maximizing the method's `objective`, forwards clean, augmented and/or
adversarial images in training mode as the method asks, and minimizes the sum of the loss terms the
method returns. Hyperparameters are a frozen `Params` dataclass of `param` fields; `robustcl.cli.flags` turns each
into a flag `--<method>_<field>` (help text and constraints from the field's metadata).
"""

import dataclasses
from typing import Dict, NamedTuple, Optional

import tensorflow as tf

from robustcl.attacks.objectives import OBJECTIVES, OBJECTIVES_READING_CLEAN
from robustcl.losses.global_batch import CONTRASTIVE_SCOPES
from robustcl.settings import check_fields, check_name, option
from robustcl.losses import global_batch
from robustcl.registry import Registry

METHODS = Registry("method")

# A Params field: a config option (default, help text, constraints as keywords: minimum, above,
# below, maximum, choices), so its flag --<method>_<field> and its checks come from one place.
param = option


def check_params(method_name, params):
    """ConfigError naming --<method>_<field> for the first field that breaks its constraints; then
    the Params' own `validate()`, if it has one (constraints across fields)."""
    check_fields(params, prefix=f"{method_name}_")
    if hasattr(params, "validate"):
        params.validate()


@dataclasses.dataclass(frozen=True)
class NoParams:
    """Hyperparameters of a method that has none."""


class LossTerm(NamedTuple):
    """Per-example loss values [B] (already multiplied by the term's weight) and optional weights [B].

    The term's value is sum(values * weights) / sum(weights) over the global batch, so examples with
    weight 0 (e.g. contrastive anchors without positives) are left out of the mean.
    """

    values: tf.Tensor
    weights: Optional[tf.Tensor] = None


class PassCounts(NamedTuple):
    """The passes of the network one training step makes per image, by the kernels each runs."""

    inference: int  # forward only (the clean pass before the attack)
    attack: int  # forward and a backward to the input
    trained: int  # forward and a backward to activations and weights


class Method:
    """Base class. Subclasses set the class attributes and implement `losses`."""

    name = None  # set by `register`
    Params = NoParams
    # Objective (robustcl.attacks.OBJECTIVES) that training's attack maximizes; None: no attack.
    attack_objective: Optional[str] = "ce"
    # Gaussian random start of this std instead of the threat model's uniform one (None: uniform);
    # the methods following the TRADES/MART code read it from their `start_sigma` parameter.
    attack_start_sigma: Optional[float] = None
    uses_clean = False  # losses need the training-mode forward pass of the clean batch
    uses_adversarial = True  # losses need the training-mode forward pass of the adversarial batch
    data_views = 1  # 2: the data pipeline yields two augmentations; the second is `augmented`
    loss_names = ()  # names of the terms `losses` returns, in display order
    # The network the method needs: an embedding head of this kind ("mlp", "linear") and width over
    # the backbone's features; None: the pooled features serve as the embedding.
    embedding_head: Optional[str] = None
    embedding_dim = 0
    # The attack objective compares examples with each other (it calls `global_batch`), so under
    # several replicas every attack step exchanges embeddings between them.
    objective_uses_global_batch = False

    def __init__(self, params=None, contrastive_scope="global"):
        self.params = params if params is not None else self.Params()
        check_params(self.name, self.params)
        check_name(CONTRASTIVE_SCOPES, "contrastive_scope", contrastive_scope)
        self.contrastive_scope = contrastive_scope

    def build(self, embedding_dim):
        """Creates the method's own trainable layers (called once, inside the strategy scope)."""

    @property
    def layers(self):
        """Keras layers the method owns; AdversarialModel tracks, trains and saves their weights."""
        return []

    @property
    def objective_reads_clean(self):
        """Whether the attack objective reads the clean batch's inference-mode outputs (TRADES' KL
        does, cross-entropy does not). A method with its own `objective` is taken to read them."""
        own_objective = type(self).objective is not Method.objective
        return own_objective or self.attack_objective in OBJECTIVES_READING_CLEAN

    @property
    def needs_reference_pass(self):
        """Whether a training step runs the clean batch through the network in inference mode before
        its attack: for the objective, or for the clean accuracy of a method without a clean pass."""
        return self.attack_objective is not None and (self.objective_reads_clean or not self.uses_clean)

    def passes_per_step(self, attack_steps):
        """PassCounts of one training step: the inference pass before the attack where there is one
        (needs_reference_pass), one attack pass per attack step, and one trained pass per view
        trained on."""
        attacks = self.attack_objective is not None
        trained = int(self.uses_clean) + int(self.uses_adversarial and attacks) + int(self.data_views == 2)
        return PassCounts(int(self.needs_reference_pass), attack_steps if attacks else 0, trained)

    def forward_passes_per_step(self, attack_steps):
        """Forward-pass equivalents per image of one training step (passes_per_step): an inference
        pass is 1, an attack pass 2 (a forward and an input-gradient backward), a trained pass 3 (a
        forward and a backward to activations and weights). The FLOPs of a step are this times the
        network's forward FLOPs (robustcl.models.forward_flops)."""
        passes = self.passes_per_step(attack_steps)
        return passes.inference + 2 * passes.attack + 3 * passes.trained

    def global_batch(self, tensors):
        """(tensors of the global batch, anchors): what every loss over pairs of examples compares,
        gathered across replicas and workers unless --contrastive_scope=replica; anchors = (start,
        count) of this replica's own samples in it (see robustcl.losses.global_batch)."""
        return global_batch.gather(tensors, self.contrastive_scope)

    def objective(self, adversarial, labels, reference):
        """Per-example loss the training attack maximizes (outputs dicts in inference mode)."""
        return OBJECTIVES.get(self.attack_objective)(adversarial, labels, reference)

    def losses(self, labels, clean, adversarial, augmented=None) -> Dict[str, LossTerm]:
        """Returns {name: LossTerm}; clean/adversarial/augmented are output dicts or None."""
        raise NotImplementedError


def register(name):
    """Registers a Method subclass under `name` (its `name` attribute comes from here). Public: a
    user's module registers its own methods with it (scripts/train.py --extra_modules=MODULE)."""

    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"robustcl.methods.register({name!r}) decorates a Method subclass, got {cls!r}")
        cls.name = name
        return METHODS.register(name)(cls)

    return decorator


def get(name):
    return METHODS.get(name)
