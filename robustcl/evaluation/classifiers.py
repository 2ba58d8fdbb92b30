"""Loading a classifier of any kind, as the attacks see it: a training run's checkpoint, a SavedModel
(a robustcl export or any other), a Keras model file, or a Keras model or callable in memory;
and the checks that its inputs and outputs fit the data (class scores as logits, never probabilities
attacked as if they were logits)."""

import dataclasses
import os
from typing import Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from robustcl import registry
from robustcl.models import keras_models
from robustcl.models.keras_models import looks_like_probabilities
from robustcl.training import rundir
from robustcl.training.classifier import is_network
from robustcl.training.run import load_network


class ModelLoadError(ValueError):
    """A model cannot be used as given; the message names the mismatch and the flag that fixes it."""


@dataclasses.dataclass
class Classifier:
    """A model as the attacks see it: `network(images in [0, 1]) -> {"logits": [B, classes]}`."""

    network: object
    name: str
    image_shape: Optional[Tuple[int, ...]] = None  # what the model takes, when it says
    config: object = None  # the robustcl ExperimentConfig, when there is one
    info: object = None  # the DatasetInfo, when there is one
    class_names: Optional[Tuple[str, ...]] = None
    notes: Tuple[str, ...] = ()  # how the model's outputs or inputs were adapted, for the report
    has_embedding: bool = False  # the projector needs an "embedding" output
    files: Tuple[str, ...] = ()  # what the model was loaded from (fingerprinted by evaluations)


def load_run(model_dir, checkpoint="best"):
    """A trained run's network (robustcl.training.run.load_network) as a Classifier."""
    network, config, info, class_names, weights = load_network(model_dir, checkpoint)
    return Classifier(
        network,
        f"{model_dir} ({checkpoint})",
        info.image_shape,
        config,
        info,
        class_names,
        has_embedding=True,
        files=(weights,),
    )


def load_classifier(config):
    """EvaluationConfig -> Classifier."""
    registry.import_modules(config.extra_modules)
    if config.model_dir:
        return load_run(config.model_dir, config.checkpoint)
    if config.saved_model:
        return load_saved_model(
            config.saved_model,
            config.signature,
            config.input_key,
            config.output_key,
            config.input_range,
            config.outputs,
        )
    return load_keras_model(config.keras_model, config.output_key, config.input_range, config.outputs)


def load_path(path, checkpoint="best", input_range="0,1", outputs="logits", flag=None):
    """A model named by its path: a run directory (its `checkpoint`), a SavedModel or a Keras model
    file (--transfer_from; robustcl.evaluate's path). `flag` names the setting in the error."""
    if os.path.isfile(os.path.join(path, rundir.CONFIG)):
        return load_run(path, checkpoint)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return load_saved_model(path, input_range=input_range, outputs=outputs)
    if os.path.isfile(path):
        return load_keras_model(path, input_range=input_range, outputs=outputs)
    prefix = f"--{flag}: " if flag else ""
    raise ModelLoadError(f"{prefix}{path} is not a run directory, a SavedModel or a Keras model file")


class _SignatureNetwork:
    """A SavedModel signature called like a network: images in [0, 1] -> {"logits"}."""

    def __init__(self, loaded, signature, input_key, output_key, scale, log_probabilities):
        # Keep the loaded object: its variables die with it, and the signature only refers to them.
        self.loaded = loaded
        self.signature = signature
        self.input_key, self.output_key = input_key, output_key
        self.scale, self.log_probabilities = scale, log_probabilities

    def __call__(self, images, training=False):
        del training  # a SavedModel signature holds one (inference) path
        outputs = self.signature(**{self.input_key: tf.cast(images, tf.float32) * self.scale})
        return {"logits": _as_logits(outputs[self.output_key], self.log_probabilities)}


class _KerasNetwork:
    def __init__(self, model, output_key, scale, log_probabilities):
        self.model, self.output_key = model, output_key
        self.scale, self.log_probabilities = scale, log_probabilities

    def __call__(self, images, training=False):
        outputs = self.model(tf.cast(images, tf.float32) * self.scale, training=training)
        if isinstance(outputs, dict):
            if self.output_key is None:  # a model of unknown input shape: its outputs seen only now
                self.output_key = _pick(outputs, "", "output_key", "the model's outputs", prefer="logits")
            outputs = outputs[self.output_key]
        return {"logits": _as_logits(outputs, self.log_probabilities)}


def _as_logits(outputs, log_probabilities):
    outputs = tf.cast(outputs, tf.float32)
    if log_probabilities:
        # log p: softmax(log p) = p, so cross-entropy and margins on these are the model's own.
        return tf.math.log(tf.maximum(outputs, 1e-30))
    return outputs


INPUT_RANGES = {"0,1": 1.0, "0,255": 255.0}
OUTPUT_KINDS = ("logits", "probabilities")


def _adaptation_notes(input_range, outputs):
    notes = []
    if input_range == "0,255":
        notes.append(
            "the model takes pixels in [0, 255]: images in [0, 1] and eps are in [0, 1] "
            "units and multiplied by 255 on the way in"
        )
    if outputs == "probabilities":
        notes.append(
            "the model outputs probabilities: the attacks use their logarithm as logits "
            "(softmax of log-probabilities gives the same probabilities back)"
        )
    return tuple(notes)


def _pick(keys, wanted, flag, what, prefer=None):
    keys = sorted(keys)
    if wanted:
        if wanted not in keys:
            raise ModelLoadError(f"--{flag}: {what} has no {wanted!r}; it has {', '.join(keys)}")
        return wanted
    if len(keys) == 1:
        return keys[0]
    if prefer in keys:
        return prefer
    raise ModelLoadError(f"--{flag}: {what} has {len(keys)} of them ({', '.join(keys)}); name the one to use")


def load_saved_model(path, signature="", input_key="", output_key="", input_range="0,1", outputs="logits"):
    """A robustcl export (through its differentiable `logits` signature, with the config it
    carries) or any other SavedModel (through `signature`, default serving_default)."""
    extra = os.path.join(path, rundir.EXPORT_ASSETS)
    ours = os.path.isfile(os.path.join(extra, rundir.CONFIG))
    try:
        loaded = tf.saved_model.load(path)
    except Exception as error:  # TF raises several types for unreadable SavedModels
        raise ModelLoadError(f"--saved_model: cannot load {path}: {error}") from error
    signatures = dict(loaded.signatures)
    name = signature or ("logits" if ours else "serving_default")
    if name not in signatures:
        raise ModelLoadError(
            f"--signature: {path} has no signature {name!r}; it has {', '.join(sorted(signatures)) or 'none'}"
        )
    function = signatures[name]
    inputs = function.structured_input_signature[1]
    in_key = _pick(inputs, input_key, "input_key", f"signature {name!r}'s inputs")
    spec = inputs[in_key]
    if not spec.dtype.is_floating:
        raise ModelLoadError(
            f"--signature: {name!r} takes {spec.dtype.name} {in_key!r}: attacks need "
            "gradients with respect to a float input; choose a float signature"
        )
    out_key = _pick(
        function.structured_outputs, output_key, "output_key", f"signature {name!r}'s outputs", prefer="logits"
    )
    network = _SignatureNetwork(
        loaded, function, in_key, out_key, INPUT_RANGES[input_range], outputs == "probabilities"
    )
    shape = tuple(spec.shape[1:]) if spec.shape.rank else None
    classifier = Classifier(
        network,
        f"{path} (signature {name}, {in_key} -> {out_key})",
        shape,
        notes=_adaptation_notes(input_range, outputs),
        files=(path,),
    )
    if ours:
        classifier.config = rundir.read_config(extra)
        classifier.info, classifier.class_names = rundir.read_dataset(extra, classifier.config)
    return classifier


def load_keras_model(path, output_key="", input_range="0,1", outputs="logits"):
    """A model saved with `model.save("m.keras")` (or .h5): any Keras classifier of images,
    Sequential, functional or subclassed (its class registered with
    keras.saving.register_keras_serializable in a module imported first: --extra_modules)."""
    if not os.path.isfile(path):
        raise ModelLoadError(f"--keras_model: {path} is not a file")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types (unknown layers, bad archives)
        raise ModelLoadError(
            f"--keras_model: cannot load {path}: {error} (a model of custom classes needs them "
            "registered with keras.saving.register_keras_serializable, in a module named with --extra_modules)"
        ) from error
    return keras_classifier(model, f"{path} (Keras model {model.name})", (path,), output_key, input_range, outputs)


def keras_classifier(model, name, files=(), output_key="", input_range="0,1", outputs="logits"):
    """A Keras model (in memory or loaded) as the attacks see it. A model whose last layer is a
    softmax is attacked through the logarithm of its probabilities, with a note in the report."""
    try:
        image_shape = keras_models.image_shape(model)
    except keras_models.InputShapeError as error:
        raise ModelLoadError(f"--keras_model: {error}") from None
    key = None
    # The output's structure from one call (a loaded Sequential or subclassed model has no symbolic
    # output to read); a model of unknown input shape is probed on the data later.
    if image_shape and None not in image_shape:
        probe = model(np.zeros((1, *image_shape), np.float32), training=False)
        if isinstance(probe, dict):
            key = _pick(probe, output_key, "output_key", f"{name}'s outputs", prefer="logits")
        elif output_key:
            raise ModelLoadError(f"--output_key: {name} has one unnamed output")
    notes = list(_adaptation_notes(input_range, outputs))
    if outputs == "logits" and key is None and keras_models.ends_in_softmax(model):
        # Attacked as logits, probabilities saturate and hide the gradient: use their logarithm.
        outputs = "probabilities"
        notes.append(
            f"the model's last layer ({model.layers[-1].name}) is a softmax: its outputs are probabilities, "
            "and the attacks use their logarithm as logits, as --outputs=probabilities does"
        )
    network = _KerasNetwork(model, key, INPUT_RANGES[input_range], outputs == "probabilities")
    return Classifier(network, name, image_shape, notes=tuple(notes), files=tuple(files))


class _CallableNetwork:
    """A Python callable on images in [0, 1] (NHWC float32) returning logits, as a network."""

    def __init__(self, function, scale, log_probabilities):
        self.function, self.scale, self.log_probabilities = function, scale, log_probabilities

    def __call__(self, images, training=False):
        del training  # a plain function has one path
        outputs = self.function(tf.cast(images, tf.float32) * self.scale)
        if isinstance(outputs, dict):
            outputs = outputs["logits"]
        return {"logits": _as_logits(outputs, self.log_probabilities)}


def from_model(model, input_range="0,1", outputs="logits", name=None):
    """Any model a user brings, as a Classifier: a Keras model (a robustcl network as it is), a path
    (a training run's directory, a SavedModel directory, a .keras/.h5 file) or a Python callable on
    NHWC float32 images in [0, 1] returning logits."""
    if input_range not in INPUT_RANGES:
        raise ModelLoadError(f"--input_range: must be {' or '.join(INPUT_RANGES)}, got {input_range!r}")
    if outputs not in OUTPUT_KINDS:
        raise ModelLoadError(f"--outputs: must be {' or '.join(OUTPUT_KINDS)}, got {outputs!r}")
    if isinstance(model, (str, os.PathLike)):
        return load_path(os.fspath(model), input_range=input_range, outputs=outputs)
    if is_network(model):
        return Classifier(model, name or model.name, keras_models.image_shape(model), has_embedding=True)
    if isinstance(model, keras.Model):
        return keras_classifier(model, name or f"Keras model {model.name}", (), "", input_range, outputs)
    if callable(model):
        network = _CallableNetwork(model, INPUT_RANGES[input_range], outputs == "probabilities")
        return Classifier(network, name or getattr(model, "__name__", type(model).__name__))
    raise ModelLoadError(f"expected a Keras model, a path or a callable on images, got {type(model).__name__}")


def check_against_data(classifier, image_shape, num_classes, x_probe, outputs="logits"):
    """Fails naming the mismatch when the model's input shape differs from the data's, or its
    outputs are not class scores of the dataset's classes."""
    expected = tuple(image_shape)
    if classifier.image_shape and len(classifier.image_shape) == 3:
        declared = tuple(classifier.image_shape)
        if len(declared) != len(expected) or any(d is not None and d != e for d, e in zip(declared, expected)):
            raise ModelLoadError(
                f"the model takes images of shape {list(declared)}; the data's are "
                f"{list(expected)} (--dataset, --image_size)"
            )
    elif classifier.image_shape:
        raise ModelLoadError(
            f"the model takes inputs of shape {list(classifier.image_shape)}; "
            f"expected images [batch, {', '.join(map(str, expected))}]"
        )
    try:
        result = classifier.network(x_probe, training=False)["logits"]
    except Exception as error:  # whatever the user's model raises on the data
        raise ModelLoadError(f"the model fails on {list(x_probe.shape)} images of the dataset: {error}") from error
    shape = tuple(result.shape)
    if len(shape) != 2 or shape[0] != len(x_probe) or shape[1] != num_classes:
        raise ModelLoadError(
            f"the model's outputs have shape {list(shape)} for {len(x_probe)} "
            f"images; class scores of this dataset's {num_classes} classes are "
            f"[{len(x_probe)}, {num_classes}] (--output_key picks another output)"
        )
    values = np.asarray(result)
    if not np.all(np.isfinite(values)):
        raise ModelLoadError("the model's outputs contain NaN or inf on clean test images")
    if outputs == "logits" and looks_like_probabilities(values):
        # Probabilities attacked as logits saturate and hide the gradient: robustness overstated.
        raise ModelLoadError(
            "the model's outputs are probabilities (in [0, 1], each row summing to 1), not logits: "
            "attacked as logits they overstate robustness; pass --outputs=probabilities (the attacks "
            "then use their logarithm)"
        )
    if outputs == "probabilities":
        sums = np.exp(values).sum(-1)
        if not np.allclose(sums, 1.0, atol=1e-3):
            raise ModelLoadError(
                f"--outputs=probabilities: the outputs do not sum to 1 (sums "
                f"{np.round(sums, 3).tolist()}); are they logits (--outputs=logits)?"
            )
