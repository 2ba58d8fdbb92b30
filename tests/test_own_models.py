"""Evaluating models robustcl did not train: a Keras model file, any SavedModel, and training and
evaluating on a 64-px dataset of files."""

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
from robustcl.settings import ConfigError
from robustcl.evaluation.settings import EvaluationConfig
from robustcl.evaluation.run import evaluate_run
from tests.image_files import write_tiny_imagenet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = dict(
    attacks=("fgsm", "pgd"),
    pgd_steps=2,
    sweep=False,
    num_examples=40,
    projector_examples=0,
    batch_size=20,
    download=False,
)


def _test_points(cifar_path, n=40):
    return data.first_test_images(data.load_dataset("cifar10", cifar_path, download=False), n)


def _keras_classifier(seed=0, pixel_scale=1.0, softmax=False, size=32):
    """A plain Keras CNN (no robustcl parts) taking pixels in [0, pixel_scale]."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1.0 / pixel_scale)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax" if softmax else None)(x)
    return keras.Model(inputs, outputs, name="users_cnn")


@pytest.mark.slow
def test_keras_model_file_evaluated_through_the_script(synthetic_cifar10, tmp_path):
    model = _keras_classifier(pixel_scale=255.0, softmax=True)
    model.save(tmp_path / "model.keras")
    x, y = _test_points(synthetic_cifar10)
    own_accuracy = float(np.mean(np.argmax(model.predict(x * 255.0, verbose=0), -1) == y))
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "evaluate.py"),
            f"--keras_model={tmp_path / 'model.keras'}",
            "--dataset=cifar10",
            f"--data_dir={synthetic_cifar10}",
            "--input_range=0,255",
            "--outputs=probabilities",
            f"--output_dir={tmp_path / 'report'}",
            "--num_examples=40",
            "--attacks=fgsm,pgd",
            "--pgd_steps=2",
            "--nosweep",
            "--batch_size=20",
            "--nodownload",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["clean_accuracy"] == pytest.approx(own_accuracy)
    assert report["num_points"] == 40 and report["eps"] == pytest.approx(8 / 255)
    assert report["threat_model_from"].startswith("default")
    assert any("probabilities" in note for note in report["model_notes"])
    assert any("[0, 255]" in note for note in report["model_notes"])
    assert "probabilities: the attacks use their logarithm" in (tmp_path / "report" / "report.md").read_text()
    assert "note: the model outputs probabilities" in result.stdout


class _ForeignModule(tf.Module):
    """A SavedModel robustcl did not write: one signature with named inputs and two outputs."""

    def __init__(self, model, image_size=32):
        super().__init__()
        self.model = model
        spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="pixels")
        self.predict = tf.function(self._predict, input_signature=[spec])
        self.as_uint8 = tf.function(
            self._uint8, input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, name="pixels")]
        )

    def _predict(self, pixels):
        scores = self.model(pixels)
        return {"scores": scores, "top": tf.argmax(scores, -1)}

    def _uint8(self, pixels):
        return {"scores": self.model(tf.cast(pixels, tf.float32) / 255.0)}


def test_any_saved_model_through_its_signature(synthetic_cifar10, tmp_path):
    model = _keras_classifier(seed=1)
    module = _ForeignModule(model)
    path = str(tmp_path / "foreign")
    tf.saved_model.save(module, path, signatures={"predict": module.predict, "as_uint8": module.as_uint8})
    x, y = _test_points(synthetic_cifar10)
    own_accuracy = float(np.mean(np.argmax(model(x), -1) == y))
    config = EvaluationConfig(
        saved_model=path,
        signature="predict",
        output_key="scores",
        dataset="cifar10",
        data_dir=synthetic_cifar10,
        output_dir=str(tmp_path / "report"),
        eps=4 / 255,
        **QUICK,
    ).validate()
    report, _ = evaluate_run(config, progress=False)
    assert report["clean_accuracy"] == pytest.approx(own_accuracy)
    assert report["eps"] == pytest.approx(4 / 255) and report["threat_model_from"] == "flags"
    assert "signature predict, pixels -> scores" in report["model"]

    def run(**overrides):
        fields = dict(vars(config), **overrides)
        evaluate_run(EvaluationConfig(**fields).validate(), progress=False)

    with pytest.raises(classifiers.ModelLoadError, match=r"no signature 'serve'; it has as_uint8, predict"):
        run(signature="serve")
    with pytest.raises(classifiers.ModelLoadError, match=r"--output_key: .* has 2 of them \(scores, top\)"):
        run(output_key="")
    with pytest.raises(classifiers.ModelLoadError, match="takes uint8 'pixels'"):
        run(signature="as_uint8")
    with pytest.raises(classifiers.ModelLoadError, match=r"outputs do not sum to 1"):
        run(outputs="probabilities")
    with pytest.raises(ConfigError, match="--dataset: required"):
        run(dataset="")


def test_mismatches_are_named(synthetic_cifar10, tmp_path):
    wide = _ForeignModule(_keras_classifier(size=64), image_size=64)
    path = str(tmp_path / "wide")
    tf.saved_model.save(wide, path, signatures={"serving_default": wide.predict})
    config = EvaluationConfig(
        saved_model=path,
        output_key="scores",
        dataset="cifar10",
        data_dir=synthetic_cifar10,
        output_dir=str(tmp_path / "r"),
        **QUICK,
    )
    with pytest.raises(
        classifiers.ModelLoadError, match=r"takes images of shape \[64, 64, 3\]; the data's are \[32, 32, 3\]"
    ):
        evaluate_run(config.validate(), progress=False)
    inputs = keras.Input((32, 32, 3))
    five = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Flatten()(inputs)))
    five.save(tmp_path / "five.keras")
    config = EvaluationConfig(
        keras_model=str(tmp_path / "five.keras"),
        dataset="cifar10",
        data_dir=synthetic_cifar10,
        output_dir=str(tmp_path / "r"),
        **QUICK,
    )
    with pytest.raises(classifiers.ModelLoadError, match=r"outputs have shape \[2, 5\].* 10 classes"):
        evaluate_run(config.validate(), progress=False)
    with pytest.raises(ConfigError, match=r"--input_range: must be 0,1 or 0,255, got '0,256'"):
        EvaluationConfig(keras_model="m.keras", input_range="0,256", output_dir="r").validate()
    with pytest.raises(ConfigError, match="exactly one of --model_dir"):
        EvaluationConfig(keras_model="m.keras", saved_model="s", output_dir="r").validate()


@pytest.mark.slow
def test_64px_file_dataset_trains_evaluates_and_exports(tmp_path):
    path, _ = write_tiny_imagenet(str(tmp_path / "data"), per_class=40, val=30)
    run_dir = tmp_path / "run"
    train = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "train.py"),
            "--flagfile=configs/pgd_at_cifar10.flags",
            "--flagfile=configs/data_tiny_imagenet.flags",
            "--flagfile=configs/smoke.flags",
            f"--data_dir={path}",
            f"--model_dir={run_dir}",
            "--train_examples=0",
            "--val_size=24",
            "--projector_examples=16",
            "--nodownload",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    facts = json.loads((run_dir / "dataset.json").read_text())
    assert facts["image_shape"] == [64, 64, 3] and facts["num_classes"] == 3
    assert json.loads((run_dir / "class_names.json").read_text()) == ["thing0", "thing1", "thing2"]
    classifier = classifiers.load_run(str(run_dir), "last")
    assert classifier.network.input.shape[1:] == (64, 64, 3)
    report, _ = evaluate_run(
        EvaluationConfig(model_dir=str(run_dir), checkpoint="last", data_dir=path, **QUICK).validate(), progress=False
    )
    assert report["num_points"] == 30 and "tiny_imagenet" in report["data"]
    assert report["eps"] == pytest.approx(8 / 255) and report["threat_model_from"] == "the training config"
