"""What a Keras model a user brings says about itself: the images it takes, whether its last layer
is a softmax, whether a batch of its outputs are probabilities. Training and evaluation read models
the same way through these."""

import keras
import numpy as np


def symbolic(model, name):
    """A Keras model's symbolic `inputs` or `outputs`; None where it has none (a subclassed model
    raises AttributeError, an unbuilt Sequential ValueError)."""
    try:
        return getattr(model, name)
    except (AttributeError, ValueError):
        return None


class InputShapeError(ValueError):
    """The model does not take one image input."""


def image_shape(model):
    """(H, W, C) a Keras model takes, from its inputs (functional, Sequential) or the shape it was
    built with (subclassed); None where it does not say (a dimension it leaves open is None)."""
    inputs = symbolic(model, "inputs")
    if inputs:
        if len(inputs) != 1:
            raise InputShapeError(
                f"the model takes {len(inputs)} inputs; robustcl works with models of one image input"
            )
        return tuple(inputs[0].shape[1:])
    built = (model.get_build_config() or {}).get("input_shape") if model.built else None
    if built and len(built) == 4 and not isinstance(built[0], (list, tuple)):
        return tuple(built[1:])
    return None


def ends_in_softmax(model):
    """Whether the model's last layer turns scores into probabilities (a Softmax layer or a softmax
    activation), for models whose last layer is their one output (Sequential, one-output functional;
    a subclassed model has no symbolic outputs, and its layers' order says nothing about them)."""
    outputs = symbolic(model, "outputs")
    if not outputs or len(outputs) != 1 or not model.layers:
        return False
    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    return isinstance(last, keras.layers.Softmax) or activation in ("softmax", "log_softmax")


def looks_like_probabilities(outputs):
    """Rows all in [0, 1] summing to 1 (within 1e-3): softmax outputs, not logits."""
    rows = np.asarray(outputs, np.float64)
    return bool(rows.min() >= 0 and rows.max() <= 1 and np.allclose(rows.sum(-1), 1.0, atol=1e-3))
