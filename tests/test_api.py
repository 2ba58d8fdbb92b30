"""The Python API a Keras user writes: robustcl.AdversarialModel around any Keras classifier, trained
with model.fit; robustcl.evaluate on a Keras model, a saved model or a callable."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import robustcl
from robustcl.data.settings import DataConfig
from robustcl.settings import ConfigError
from robustcl.training.classifier import ClassifierError
from tests.conftest import cleverhans_pgd, template_batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = (32, 32, 3)
CLASSES = 4


@keras.saving.register_keras_serializable(package="robustcl_tests")
class SubclassedClassifier(keras.Model):
    """Images -> logits, as a subclass: no symbolic inputs or outputs, its layers read while it runs."""

    def __init__(self, num_classes=CLASSES, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.conv = keras.layers.Conv2D(8, 3, padding="same")
        self.norm = keras.layers.BatchNormalization()
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.head = keras.layers.Dense(num_classes)

    def call(self, images, training=False):
        return self.head(self.pool(keras.activations.relu(self.norm(self.conv(images), training=training))))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def _layers():
    return [
        keras.layers.Conv2D(8, 3, padding="same"),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(CLASSES),
    ]


def classifier_of(kind):
    keras.utils.set_random_seed(0)
    if kind == "sequential":
        return keras.Sequential([keras.Input(IMAGE), *_layers()])
    if kind == "functional":
        images = keras.Input(IMAGE)
        x = images
        for layer in _layers():
            x = layer(x)
        return keras.Model(images, x)
    model = SubclassedClassifier()
    model(np.zeros((1, *IMAGE), np.float32))
    return model


def _data(n=32, seed=0):
    x, y = template_batch(n=n, num_classes=CLASSES, seed=seed)
    return x, y


@pytest.mark.parametrize("method", ["pgd_at", "trades", "morel"])
@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed"])
def test_a_keras_classifier_trains_and_evaluates(kind, method, tmp_path):
    classifier = classifier_of(kind)
    own_weights = len(classifier.weights)
    before = [w.numpy().copy() for w in classifier.trainable_weights]
    model = robustcl.AdversarialModel(classifier, method=method, embedding_layer="pool", eps=8 / 255, attack_steps=2)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    x, y = _data()
    history = model.fit(x, y, batch_size=16, epochs=1, validation_data=_data(16, seed=1), verbose=0)

    assert np.isfinite(history.history["loss"][0])
    assert {"robust_accuracy", "val_accuracy", "val_robust_accuracy"} <= set(history.history)
    # The user's model is what trained, in place, and is still only the user's model: a projection
    # head (MOREL's) lives in the wrapper.
    assert model.classifier is classifier
    assert len(classifier.weights) == own_weights
    assert all(np.abs(w.numpy() - b).max() > 0 for w, b in zip(classifier.trainable_weights, before))
    if method == "morel":
        assert len(model.trainable_weights) > len(classifier.trainable_weights)
    np.testing.assert_allclose(model.network(x)["logits"], classifier(x), atol=1e-6)

    path = str(tmp_path / "robust.keras")
    classifier.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), classifier.predict(x, verbose=0), atol=1e-5)

    report = robustcl.evaluate(classifier, x, y, eps=8 / 255, attacks=("fgsm", "pgd"), sweep=False, progress=False)
    predicted = np.argmax(classifier.predict(x, verbose=0), -1)
    assert report.clean_accuracy == pytest.approx(np.mean(predicted == y))
    assert set(report.per_attack) == {"fgsm", "pgd"}
    assert report.robust_accuracy <= min(report.per_attack.values()) <= report.clean_accuracy
    # An independent attack finds no fewer adversarial points than a margin above ours.
    x_adv = cleverhans_pgd(classifier, x, y, eps=8 / 255, steps=20)
    independent = np.mean(np.argmax(classifier.predict(x_adv, verbose=0), -1) == y)
    assert report.robust_accuracy <= independent + 2 / len(y)


USERS_METHOD = "users_scaled_pgd_at"
EVERY_METHOD = [n for n in robustcl.methods.METHODS.names() if n not in ("pgd_at", "trades", "morel")]


@pytest.fixture
def users_method():
    """A user's method registered by name for one test (registered at import, it would join every
    test that lists the registered methods, as a method without a flagfile)."""

    @robustcl.methods.register(USERS_METHOD)
    class ScaledPGDAT(robustcl.methods.get("pgd_at")):
        def losses(self, labels, clean, adversarial, augmented=None):
            ((name, term),) = super().losses(labels, clean, adversarial, augmented).items()
            return {name: robustcl.methods.LossTerm(2.0 * term.values, term.weights)}

    yield USERS_METHOD
    del robustcl.methods.METHODS._entries[USERS_METHOD]  # the registry has no public removal


@pytest.mark.parametrize("method", EVERY_METHOD + [USERS_METHOD])
def test_every_registered_method_trains_a_keras_classifier(method, request):
    """The methods the test above leaves out, and a user's own: one step each on a functional
    classifier; two-view methods get their second augmentation as the pair (x, flipped x)."""
    if method == USERS_METHOD:
        request.getfixturevalue("users_method")
    classifier = classifier_of("functional")
    before = [w.numpy().copy() for w in classifier.trainable_weights]
    model = robustcl.AdversarialModel(classifier, method=method, embedding_layer="pool", attack_steps=2)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    x, y = _data(16)
    inputs = (x, x[:, :, ::-1]) if model.method.data_views == 2 else x
    logs = model.train_on_batch(inputs, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    assert any(np.abs(w.numpy() - b).max() > 0 for w, b in zip(classifier.trainable_weights, before))


def test_model_evaluate_reports_clean_and_adversarial_accuracy():
    classifier = classifier_of("functional")
    model = robustcl.AdversarialModel(classifier, method="pgd_at", eps=8 / 255, attack_steps=2)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    x, y = _data()
    logs = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert logs["accuracy"] == pytest.approx(np.mean(np.argmax(classifier.predict(x, verbose=0), -1) == y))
    assert logs["robust_accuracy"] <= logs["accuracy"]


def test_settings_are_checked_as_the_flags_are():
    classifier = classifier_of("functional")
    with pytest.raises(ConfigError, match="--eps"):
        robustcl.AdversarialModel(classifier, eps=-1.0)
    with pytest.raises(ConfigError, match="--method: unknown"):
        robustcl.AdversarialModel(classifier, method="moral")
    with pytest.raises(ConfigError, match="--trades_gamma"):
        robustcl.AdversarialModel(classifier, method="trades", method_params={"gamma": 1.0})
    with pytest.raises(ConfigError, match="--trades_beta"):
        robustcl.AdversarialModel(classifier, method="trades", method_params={"beta": -1.0})
    with pytest.raises(ConfigError, match="embedding_layer"):
        robustcl.AdversarialModel(classifier, method="morel")
    with pytest.raises(ConfigError, match="not both"):
        robustcl.AdversarialModel(classifier, train_attack=robustcl.AttackConfig(), eps=0.1)
    with pytest.raises(ClassifierError, match="no layer 'avg'"):
        robustcl.AdversarialModel(classifier, method="morel", embedding_layer="avg")
    softmax = keras.Sequential([keras.Input(IMAGE), keras.layers.Flatten(), keras.layers.Dense(CLASSES, "softmax")])
    with pytest.raises(ClassifierError, match="softmax"):
        robustcl.AdversarialModel(softmax)


def test_a_method_instance_and_attack_configs_are_taken_as_given():
    classifier = classifier_of("sequential")
    trades = robustcl.methods.get("trades")
    attack = robustcl.AttackConfig(norm="l2", eps=0.5, step_size=0.1, steps=3)
    model = robustcl.AdversarialModel(classifier, method=trades(trades.Params(beta=3.0)), train_attack=attack)
    assert model.method.params.beta == 3.0
    assert model.train_attack == attack and model.val_attack.norm == "l2"


def test_evaluate_takes_a_callable_a_saved_model_and_resumes(tmp_path):
    classifier = classifier_of("functional")
    x, y = _data()
    kwargs = dict(eps=8 / 255, attacks=("pgd",), sweep=False, progress=False, chunk_size=16)
    in_memory = robustcl.evaluate(classifier, x, y, **kwargs)
    function = robustcl.evaluate(lambda images: classifier(images, training=False), x, y, **kwargs)
    assert function.per_attack == in_memory.per_attack

    export = str(tmp_path / "export")
    classifier.export(export)
    saved = robustcl.evaluate(export, x, y, **kwargs)
    assert saved.clean_accuracy == in_memory.clean_accuracy
    assert saved.per_attack["pgd"] == pytest.approx(in_memory.per_attack["pgd"], abs=1 / len(y))

    state = str(tmp_path / "state")
    first = robustcl.evaluate(classifier, x, y, state_dir=state, **kwargs)
    os.remove(os.path.join(state, "chunks", "chunk_00000016.npz"))  # an interruption after the first chunk
    second = robustcl.evaluate(classifier, x, y, state_dir=state, **kwargs)
    assert second["per_point"] == first["per_point"]
    other = classifier_of("functional")  # the same network with other weights
    other.layers[-1].bias.assign(other.layers[-1].bias + 1.0)
    with pytest.raises(ConfigError, match="--state_dir: .* other settings .*model"):
        robustcl.evaluate(other, x, y, state_dir=state, **kwargs)
    assert first.to_json().startswith("{") and first.warnings == list(first["warnings"])


def test_evaluate_names_bad_inputs():
    classifier = classifier_of("functional")
    x, y = _data(8)
    with pytest.raises(ValueError, match=r"x: pixels must be in \[0, 1\].*divide uint8 images by 255"):
        robustcl.evaluate(classifier, x * 255, y, progress=False)
    with pytest.raises(ValueError, match="y: labels must be in"):
        robustcl.evaluate(classifier, x, y + CLASSES, progress=False)
    with pytest.raises(ValueError, match="y: expected 8 integer labels"):
        robustcl.evaluate(classifier, x, y[:4], progress=False)
    with pytest.raises(ConfigError, match="--attacks"):
        robustcl.evaluate(classifier, x, y, attacks=("pgd", "apgd-t"), progress=False)


def _readme_example():
    text = open(os.path.join(REPO, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    found = [b for b in blocks if "robustcl.AdversarialModel(" in b and "robustcl.evaluate(" in b]
    assert len(found) == 1, "README has one example of the Python API"
    return found[0]


def _small_classifier():
    """What the README example's ResNet50V2 stands in for in CI: the same interface (images in
    [-1, 1] -> 10 logits) and the same name of the pooling layer ("avg_pool"). ResNet50V2's graphs
    take minutes to trace on 2 cores, once per attack."""
    images = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(images)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(images, keras.layers.Dense(10)(x))


@pytest.mark.skipif(
    not os.environ.get("ROBUSTCL_CIFAR10_DIR"), reason="ROBUSTCL_CIFAR10_DIR (set by .ci/run) names CIFAR-10"
)
def test_the_readme_example_runs(tmp_path, monkeypatch):
    """README's example as written, with its sizes made small (the names at its top) and a small
    network in ResNet50V2's place."""
    code = _readme_example()
    sizes = {
        "DATA_DIR": repr(os.environ["ROBUSTCL_CIFAR10_DIR"]),
        "TRAIN_IMAGES": "32",
        "TEST_IMAGES": "4",
        "EPOCHS": "1",
    }
    for name, value in sizes.items():
        code, count = re.subn(rf"^{name} = .*$", f"{name} = {value}", code, flags=re.M)
        assert count == 1, f"README's example sets {name} once at its top"
    code, count = re.subn(
        r"keras\.applications\.ResNet50V2\([^#]*?classifier_activation=None\s*\)",
        "small_classifier()",
        code,
        flags=re.S,
    )
    assert count == 1, "README's example builds keras.applications.ResNet50V2"
    monkeypatch.chdir(tmp_path)
    namespace = {"small_classifier": _small_classifier}
    exec(compile(code, "README.md", "exec"), namespace)
    report = namespace["report"]
    assert 0 <= report.robust_accuracy <= report.clean_accuracy <= 1
    assert report["autoattack"]["version"] == "standard"
    assert os.path.isfile(tmp_path / "robust.keras")
    assert any(name.startswith("events") for name in os.listdir(tmp_path / "logs" / "train"))
    assert os.path.isfile(tmp_path / "logs" / "projector" / "projector_config.pbtxt")


@pytest.mark.skipif(
    not os.environ.get("ROBUSTCL_CIFAR10_DIR"), reason="ROBUSTCL_CIFAR10_DIR (set by .ci/run) names CIFAR-10"
)
def test_the_script_and_the_api_train_the_same_weights(tmp_path):
    """scripts/train.py builds its model through this API: one step from the same seed gives the same
    weights either way."""
    data_dir = os.environ["ROBUSTCL_CIFAR10_DIR"]
    seed = 5
    command = [
        sys.executable,
        "scripts/train.py",
        "--flagfile=configs/pgd_at_cifar10.flags",
        "--flagfile=configs/smoke.flags",
        f"--data_dir={data_dir}",
        f"--model_dir={tmp_path / 'run'}",
        f"--seed={seed}",
        "--epochs=1",
        "--steps_per_epoch=1",
        "--lr_schedule=constant",
        "--noaugment",
        "--projector_every_epochs=0",
        "--precision=float32",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    # The same, written as a Keras user writes it (the smoke flagfile's sizes).
    keras.utils.set_random_seed(seed)
    splits = robustcl.data.load(
        DataConfig(data_dir=data_dir, val_size=64, train_examples=256, batch_size=32, augment=False)
    )
    train = robustcl.data.train_dataset(splits.train, splits.info.image_shape, 32, augment=False, seed=seed)
    network = robustcl.models.build("tiny", 10, splits.info.mean, splits.info.std, splits.info.image_shape)
    model = robustcl.AdversarialModel(
        network, method="pgd_at", eps=8 / 255, step_size=2 / 255, attack_steps=2, weight_decay=5e-4, seed=seed
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    initial = network.get_weights()
    model.fit(train, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
    assert max(float(np.abs(w - v).max()) for w, v in zip(network.get_weights(), initial)) > 1e-3

    scripted = robustcl.models.build("tiny", 10, splits.info.mean, splits.info.std, splits.info.image_shape)
    scripted.load_weights(str(tmp_path / "run" / "last.weights.h5"))
    moved = max(float(np.abs(w - v).max()) for w, v in zip(network.get_weights(), scripted.get_weights()))
    assert moved < 1e-6, f"the script's weights differ from the API's by up to {moved}"


class _StopAfter(keras.callbacks.Callback):
    """Interrupts training at the end of an epoch, as a killed process would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_fit_resumes_with_backup_and_restore_under_mixed_precision(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        classifier = classifier_of("functional")
        assert classifier.layers[1].compute_dtype == "bfloat16"
        model = robustcl.AdversarialModel(classifier, method="trades", attack_steps=2)
        model.compile(optimizer=keras.optimizers.SGD(0.05))
        x, y = _data(32)
        backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
        with pytest.raises(KeyboardInterrupt):
            model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[backup, _StopAfter(0)])
        history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[backup])
        assert history.epoch == [1, 2]  # the finished first epoch is not trained again
        assert all(np.isfinite(history.history["loss"]))
    finally:
        keras.mixed_precision.set_global_policy("float32")


REPLICAS = """
import json, sys
import tests.conftest  # splits the CPU into 2 logical devices before TensorFlow starts
import keras, numpy as np, tensorflow as tf
import robustcl
from tests.test_api import _data

def classifier():
    keras.utils.set_random_seed(0)
    images = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(images)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(synchronized=True)(x))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(images, keras.layers.Dense(4)(x))

cpus = tf.config.list_logical_devices("CPU")
x, y = _data(32)
found = {}
for name, strategy in (("one", tf.distribute.OneDeviceStrategy(cpus[0].name)),
                       ("two", tf.distribute.MirroredStrategy([c.name for c in cpus[:2]]))):
    with strategy.scope():
        model = robustcl.AdversarialModel(
            classifier(), method="morel", embedding_layer="pool", norm="l2", eps=0.25, step_size=0.0625,
            attack_steps=2, method_params={"alpha": 1.0}, seed=3)
        keras.utils.set_random_seed(1)
        model.compile(optimizer=keras.optimizers.SGD(0.05))
    logs = model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False).history
    found[name] = ({k: v[0] for k, v in logs.items()}, [w.numpy().tolist() for w in model.classifier.weights])
print(json.dumps(found))
"""


@pytest.mark.slow
def test_a_keras_classifier_trains_alike_on_two_replicas():
    """MOREL on a user's classifier (synchronized BatchNorm) on 2 replicas against one device, in a
    fresh process: the same logged terms and weights (seen: weights within 1.5e-6; with the
    classifier's BatchNorm per replica instead, 2.2e-5 apart, which this tolerance refuses)."""
    result = subprocess.run([sys.executable, "-c", REPLICAS], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    (one_logs, one_weights), (two_logs, two_weights) = found["one"], found["two"]
    for name, value in one_logs.items():
        assert two_logs[name] == pytest.approx(value, rel=2e-4, abs=1e-7), name
    for a, b in zip(one_weights, two_weights):
        np.testing.assert_allclose(np.array(b), np.array(a), atol=5e-6)
