"""Exporting a trained network as a SavedModel in the layout TF Serving loads.

EXPORT_DIR/<model_name>/<version>/ holds only the inference path (no attack, no training step):
  serving_default  float32 images [batch, H, W, 3] in [0, 1] -> {"logits", "probabilities"}
  serving_uint8    uint8 images [batch, H, W, 3] in [0, 255] -> {"logits", "probabilities"}
  logits           float32 images -> {"logits"}: the differentiable path for white-box attacks
Inputs of the wrong rank or shape, with NaN/inf, or outside [0, 1] fail with an InvalidArgument
error that says which; nothing is clipped. assets.extra/ (TF Serving's place for files that are not
part of the graph) holds config.json, dataset.json, class_names.json and the evaluation report if
there is one (robustcl.training.rundir names them).
"""

import json
import os
import shutil

import tensorflow as tf

from robustcl.evaluation import classifiers
from robustcl.training import rundir


def _check_images(images, image_shape, low, high):
    """Returns images as [batch, H, W, C] or fails with a message saying what is wrong.

    Every condition is computable for any input (any rank, NaN included) and a NaN counts only as
    non-finite. The network's input is the output of a tf.cond whose failing branch raises, so the
    network never runs on an unchecked input whatever order the graph runs ops in.
    """
    height, width, channels = image_shape
    expected = f"[batch, {height}, {width}, {channels}]"
    rank_ok = tf.equal(tf.rank(images), 4)
    trailing = tf.concat([tf.shape(images), tf.zeros([4], tf.int32)], 0)[1:4]
    shape_ok = tf.logical_or(
        tf.logical_not(rank_ok), tf.reduce_all(tf.equal(trailing, [height, width, channels]), axis=0)
    )
    conditions = [
        (rank_ok, [f"images must have rank 4, {expected}; got shape", tf.shape(images)]),
        (shape_ok, [f"images must have shape {expected}; got", tf.shape(images)]),
    ]
    if images.dtype.is_floating:
        flat = tf.reshape(images, [-1])  # reductions over 1-D: independent of the input's rank
        nan = tf.math.is_nan(flat)
        conditions += [
            (tf.reduce_all(tf.math.is_finite(flat), axis=0), ["images contain NaN or inf"]),
            (
                tf.reduce_all(tf.logical_or(flat >= low, nan), axis=0),
                [f"pixel values below {low}: inputs must be in [{low}, {high}]"],
            ),
            (
                tf.reduce_all(tf.logical_or(flat <= high, nan), axis=0),
                [f"pixel values above {high}: inputs must be in [{low}, {high}]"],
            ),
        ]
    all_ok = tf.reduce_all(tf.stack([condition for condition, _ in conditions]), axis=0)

    def valid():
        # reshape, not ensure_shape: the graph optimizer infers the input's rank back from an
        # ensure_shape and folds the rank check above to true.
        return tf.reshape(images, [-1, height, width, channels])

    def invalid():
        asserts = [tf.debugging.Assert(condition, data) for condition, data in conditions]
        with tf.control_dependencies(asserts):
            return tf.zeros([0, height, width, channels], images.dtype)

    return tf.cond(all_ok, valid, invalid)


class InferenceModule(tf.Module):
    """The network's inference path with checked inputs, as tf.functions to save as signatures."""

    def __init__(self, network, image_shape):
        super().__init__()
        self.network = network
        self.image_shape = tuple(image_shape)
        # Unknown rank, so a wrong rank or shape reaches the checks and their message.
        float_spec = tf.TensorSpec(None, tf.float32, name="images")
        self.serving_default = tf.function(self._serving_float, input_signature=[float_spec])
        self.serving_uint8 = tf.function(
            self._serving_uint8, input_signature=[tf.TensorSpec(None, tf.uint8, name="images")]
        )
        self.logits = tf.function(self._logits_signature, input_signature=[float_spec])

    def _logits_of(self, images):
        return self.network(images, training=False)["logits"]

    def _serving_float(self, images):
        logits = self._logits_of(_check_images(images, self.image_shape, 0.0, 1.0))
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    def _serving_uint8(self, images):
        checked = _check_images(images, self.image_shape, 0, 255)
        logits = self._logits_of(tf.cast(checked, tf.float32) / 255.0)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    def _logits_signature(self, images):
        return {"logits": self._logits_of(_check_images(images, self.image_shape, 0.0, 1.0))}

    def signatures(self):
        return {"serving_default": self.serving_default, "serving_uint8": self.serving_uint8, "logits": self.logits}


def next_version(model_root):
    versions = [int(d) for d in os.listdir(model_root) if d.isdigit()] if os.path.isdir(model_root) else []
    return max(versions, default=0) + 1


def export(network, image_shape, export_dir, model_name, version=None, assets=None):
    """Writes EXPORT_DIR/model_name/version atomically (a temporary directory renamed into place, so a
    server watching the directory never loads half an export). Returns the version directory."""
    model_root = os.path.join(export_dir, model_name)
    version = next_version(model_root) if version is None else int(version)
    if version < 1:
        raise ValueError(f"--version must be >= 1, got {version}")
    final = os.path.join(model_root, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists: choose another --version (TF Serving serves the highest) or remove it")
    os.makedirs(model_root, exist_ok=True)
    tmp = os.path.join(model_root, f".tmp-{version}")
    shutil.rmtree(tmp, ignore_errors=True)
    module = InferenceModule(network, image_shape)
    tf.saved_model.save(module, tmp, signatures=module.signatures())
    extra = os.path.join(tmp, rundir.EXPORT_ASSETS)
    os.makedirs(extra, exist_ok=True)
    for file_name, text in (assets or {}).items():
        with open(os.path.join(extra, file_name), "w") as f:
            f.write(text)
    os.replace(tmp, final)
    return final


def export_run(model_dir, export_dir, model_name=None, version=None, checkpoint="best"):
    """Exports a training run's checkpoint with its config, dataset facts, class names and
    evaluation report."""
    classifier = classifiers.load_run(model_dir, checkpoint)
    name = model_name or os.path.basename(os.path.normpath(model_dir))
    assets = {
        rundir.CONFIG: classifier.config.to_json(),
        rundir.DATASET: classifier.info.to_json(),
        rundir.CLASS_NAMES: json.dumps(list(classifier.class_names)),
    }
    report = os.path.join(rundir.evaluation_dir(model_dir, checkpoint), rundir.REPORT)
    if os.path.isfile(report):
        with open(report) as f:
            assets[rundir.REPORT] = f.read()
    return export(classifier.network, classifier.info.image_shape, export_dir, name, version, assets)
