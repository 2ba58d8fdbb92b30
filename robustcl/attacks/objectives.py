"""Attack objectives: per-example losses that an attack maximizes.

Each takes the network's outputs on the perturbed input, the labels and the outputs on the clean
input (computed once, in inference mode, before the attack) and returns a float32 vector [batch].
Outputs are the network's dicts ({"features", "embedding", "logits"}), so an objective may use the
embedding as well as the logits.
"""

from robustcl.losses import cross_entropy_per_example, kl_per_example
from robustcl.registry import Registry

OBJECTIVES = Registry("attack objective")


@OBJECTIVES.register("ce")
def cross_entropy(adversarial, labels, clean=None):
    """Cross-entropy of the true label (PGD-AT, MART, most attacks)."""
    del clean
    return cross_entropy_per_example(labels, adversarial["logits"])


@OBJECTIVES.register("kl")
def kl_from_clean(adversarial, labels, clean):
    """KL(p_clean || p_adv), TRADES' inner maximization; needs no labels."""
    del labels
    return kl_per_example(clean["logits"], adversarial["logits"])
