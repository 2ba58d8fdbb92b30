"""Every kind of classifier a Keras user has evaluates, with its own clean accuracy reproduced
exactly and a robust accuracy no weaker than an independent attack's (cleverhans PGD): Sequential,
functional, subclassed (its module named with --extra_modules), a keras.applications network, a
`model.export()` SavedModel, a TF SavedModel with a serving signature, and a model whose last layer
is a softmax (its outputs turned into log-probabilities, with a note; never attacked as logits)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustcl import data
from robustcl.evaluation import classifiers
from robustcl.evaluation.settings import EvaluationConfig
from robustcl.evaluation.run import evaluate_run
from tests.conftest import cleverhans_pgd
from tests.keras_user_module import SmallClassifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POINTS = 40
EPS = 32 / 255  # fitted to random images, the models keep wide margins: a large budget breaks some
STEPS = 10


def _points(cifar_path):
    return data.first_test_images(data.load_dataset("cifar10", cifar_path, download=False), POINTS)


def _conv_stack():
    # Flattened, not pooled: enough capacity to fit the evaluation points (random images) quickly.
    return [keras.layers.Conv2D(16, 3, strides=2, activation="relu"), keras.layers.Flatten()]


def _build(kind):
    keras.utils.set_random_seed(0)
    if kind == "sequential":
        return keras.Sequential([keras.Input((32, 32, 3)), *_conv_stack(), keras.layers.Dense(10)])
    if kind == "softmax":
        return keras.Sequential(
            [keras.Input((32, 32, 3)), *_conv_stack(), keras.layers.Dense(10, activation="softmax")]
        )
    if kind == "subclassed":
        model = SmallClassifier()
        model(np.zeros((1, 32, 32, 3), np.float32))
        return model
    if kind == "application":
        model = keras.applications.MobileNetV3Small(
            input_shape=(32, 32, 3),
            weights=None,
            classes=10,
            classifier_activation=None,
            include_preprocessing=False,
            dropout_rate=0.0,
            minimalistic=True,
        )
        for layer in model.layers:  # inference-mode statistics of the fitted batch after a few steps
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.0
        return model
    inputs = keras.Input((32, 32, 3))  # functional, and the two SavedModels' network
    x = inputs
    for layer in _conv_stack():
        x = layer(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def _fit(model, x, y, softmax):
    """Fitted to the evaluation points: a clean accuracy far from chance, so robustness means something."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not softmax)
    model.compile(keras.optimizers.Adam(3e-3), loss)
    model.fit(x, y, epochs=60, batch_size=len(x), verbose=0)


def _serving_module(model):
    """A TF SavedModel's module with one serving signature (float images -> {"logits"})."""
    module = tf.Module()
    module.model = model
    spec = tf.TensorSpec([None, 32, 32, 3], tf.float32, name="images")
    module.serve = tf.function(lambda images: {"logits": model(images)}, input_signature=[spec])
    return module


def _save(kind, model, root):
    """(EvaluationConfig fields that load it, saved path)."""
    if kind == "export":
        path = os.path.join(root, "exported")
        model.export(path)
        return {"saved_model": path}
    if kind == "tf_saved_model":
        path = os.path.join(root, "tf_module")
        module = _serving_module(model)
        tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
        return {"saved_model": path}
    path = os.path.join(root, f"{kind}.keras")
    model.save(path)
    return {"keras_model": path}


def _cleverhans_pgd_accuracy(model_fn, x, y):
    x_adv = cleverhans_pgd(model_fn, x, y, EPS, STEPS)
    return float(np.mean(np.argmax(model_fn(x_adv).numpy(), -1) == y))


@pytest.mark.parametrize(
    "kind", ["sequential", "functional", "subclassed", "application", "export", "tf_saved_model", "softmax"]
)
def test_every_kind_of_keras_classifier_evaluates(kind, synthetic_cifar10, tmp_path):
    pytest.importorskip("cleverhans")
    x, y = _points(synthetic_cifar10)
    model = _build(kind)
    _fit(model, x, y, softmax=kind == "softmax")
    own = np.asarray(model.predict(x, verbose=0))
    own_accuracy = float(np.mean(np.argmax(own, -1) == y))
    assert own_accuracy > 0.3, own_accuracy  # fitted: the comparison below is not of two zeros
    config = EvaluationConfig(
        **_save(kind, model, str(tmp_path)),
        dataset="cifar10",
        data_dir=synthetic_cifar10,
        output_dir=str(tmp_path / "report"),
        num_examples=POINTS,
        attacks=("pgd",),
        pgd_steps=STEPS,
        eps=EPS,
        sweep=False,
        projector_examples=0,
        batch_size=20,
        download=False,
    ).validate()
    report, _ = evaluate_run(config, progress=False)
    assert report["clean_accuracy"] == pytest.approx(own_accuracy, abs=1e-9)
    ours = report["attacks"][0]["robust_accuracy"]
    model_fn = (lambda z: tf.math.log(tf.maximum(model(z), 1e-30))) if kind == "softmax" else model
    theirs = _cleverhans_pgd_accuracy(model_fn, x, y)
    assert ours <= theirs + 1.5 / POINTS, (ours, theirs)  # no weaker than the independent PGD
    assert ours < own_accuracy or own_accuracy == 0, (ours, own_accuracy)
    if kind == "softmax":
        assert any("is a softmax" in note for note in report["model_notes"]), report["model_notes"]


def test_probabilities_from_a_model_that_cannot_be_inspected_are_refused(synthetic_cifar10, tmp_path):
    """A SavedModel hides its last layer: outputs that are probabilities are refused, naming the flag."""
    x, y = _points(synthetic_cifar10)
    model = _build("softmax")
    path = os.path.join(tmp_path, "probabilities")
    model.export(path)
    config = EvaluationConfig(
        saved_model=path,
        dataset="cifar10",
        data_dir=synthetic_cifar10,
        output_dir=str(tmp_path / "r"),
        num_examples=POINTS,
        attacks=("pgd",),
        pgd_steps=2,
        sweep=False,
        projector_examples=0,
        download=False,
    ).validate()
    with pytest.raises(classifiers.ModelLoadError, match="--outputs=probabilities"):
        evaluate_run(config, progress=False)


@pytest.mark.slow
def test_a_subclassed_model_evaluates_through_the_script_with_its_module(synthetic_cifar10, tmp_path):
    x, y = _points(synthetic_cifar10)
    model = _build("subclassed")
    _fit(model, x, y, softmax=False)
    model.save(tmp_path / "small.keras")
    own_accuracy = float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))
    common = [
        sys.executable,
        os.path.join(REPO, "scripts", "evaluate.py"),
        f"--keras_model={tmp_path / 'small.keras'}",
        "--dataset=cifar10",
        f"--data_dir={synthetic_cifar10}",
        f"--output_dir={tmp_path / 'report'}",
        f"--num_examples={POINTS}",
        "--attacks=pgd",
        "--pgd_steps=2",
        "--nosweep",
        "--nodownload",
    ]
    without = subprocess.run(common, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert without.returncode != 0 and "--extra_modules" in without.stderr, without.stderr[-2000:]
    result = subprocess.run(
        common + ["--extra_modules=tests.keras_user_module"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["clean_accuracy"] == pytest.approx(own_accuracy, abs=1e-9)
