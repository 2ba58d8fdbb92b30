import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustcl import models
from robustcl.training import schedules
from robustcl.training.settings import OptimizerConfig

EXPECTED_FEATURES = {"tiny": 64, "resnet18": 512, "preact_resnet18": 512, "wrn28_10": 640, "wrn34_10": 640}
# Parameter counts of the published CIFAR networks (10 classes): ResNet-18 11.17M, WRN-34-10 46.16M.
EXPECTED_PARAMS = {"resnet18": 11_173_962, "wrn34_10": 46_160_474}


@pytest.mark.parametrize("name", sorted(EXPECTED_FEATURES))
def test_every_backbone_returns_named_float32_outputs(name):
    network = models.build(name, 10, (0.5,) * 3, (0.25,) * 3)
    outputs = network(tf.random.uniform([2, 32, 32, 3]), training=False)
    assert set(outputs) == {"features", "embedding", "logits"}
    assert outputs["logits"].shape == (2, 10)
    assert outputs["features"].shape == (2, EXPECTED_FEATURES[name])
    assert all(v.dtype == tf.float32 for v in outputs.values())
    if name in EXPECTED_PARAMS:
        # Same trainable parameters as the PyTorch networks (BatchNorm statistics are buffers there).
        trainable = sum(int(np.prod(v.shape)) for v in network.trainable_variables)
        assert trainable == EXPECTED_PARAMS[name]


def test_unknown_model_lists_known_names():
    with pytest.raises(KeyError, match="known: .*resnet18.*(did you mean 'resnet18')"):
        models.build("resnet81", 10, (0.5,) * 3, (0.25,) * 3)


def test_normalization_is_inside_the_model():
    mean, std = (0.2, 0.4, 0.6), (0.1, 0.2, 0.3)
    network = models.build("tiny", 10, mean, std)
    normalize = network.get_layer("normalize")
    x = tf.random.uniform([3, 32, 32, 3])
    expected = (x.numpy() - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(np.asarray(normalize(x)), expected, rtol=1e-5, atol=1e-5)


def test_embedding_head_and_mixed_precision_outputs():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        network = models.build("tiny", 10, (0.5,) * 3, (0.25,) * 3, embedding_dim=16)
        x = tf.random.uniform([2, 32, 32, 3])
        outputs = network(x)
        assert outputs["embedding"].shape == (2, 16)
        assert all(v.dtype == tf.float32 for v in outputs.values())
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(network(x)["logits"])
        grad = tape.gradient(loss, x)
        assert grad.dtype == tf.float32 and np.isfinite(grad.numpy()).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_lr_schedules():
    piecewise = schedules.from_config(
        OptimizerConfig(epochs=100, learning_rate=0.1, lr_decay_epochs=(75, 90)), steps_per_epoch=10
    )
    for step, lr in [(0, 0.1), (749, 0.1), (750, 0.01), (899, 0.01), (900, 0.001), (999, 0.001)]:
        assert float(piecewise(step)) == pytest.approx(lr), step
    cosine = schedules.from_config(
        OptimizerConfig(epochs=10, learning_rate=0.2, lr_schedule="cosine", warmup_epochs=2), steps_per_epoch=5
    )
    assert float(cosine(0)) == pytest.approx(0.2 * 1 / 10)  # warmup: (step + 1) / warmup steps
    assert float(cosine(9)) == pytest.approx(0.2)
    assert float(cosine(10)) == pytest.approx(0.2)
    assert float(cosine(30)) == pytest.approx(0.1)  # half way through the cosine
    assert float(cosine(50)) == pytest.approx(0.0, abs=1e-9)
    config = schedules.EpochSchedule.from_config(cosine.get_config()).get_config()
    assert config == cosine.get_config()


def test_same_shaped_kernels_start_different():
    keras.utils.set_random_seed(0)
    network = models.build("resnet18", 10, (0.5,) * 3, (0.25,) * 3)
    kernels = [v.numpy() for v in network.weights if v.path.endswith("kernel") and len(v.shape) == 4]
    same_shape_pairs = [(a, b) for i, a in enumerate(kernels) for b in kernels[i + 1 :] if a.shape == b.shape]
    assert len(same_shape_pairs) >= 10  # ResNet-18 has 4 convs 64->64, 3 each of 128/256/512
    assert not any(np.array_equal(a, b) for a, b in same_shape_pairs)


def test_seeded_weights_are_the_same_in_every_process():
    # Fresh processes: an RNG drawn from at import time (before the seed is set) differs between them.
    script = (
        "import keras, numpy as np\n"
        "from robustcl import models\n"
        "keras.utils.set_random_seed(3)\n"
        "network = models.build('tiny', 10, (0.5,) * 3, (0.25,) * 3)\n"
        "print(repr([float(np.abs(w).sum()) for w in network.get_weights()]))\n"
    )
    outputs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
        .stdout.strip()
        .splitlines()[-1]
        for _ in range(2)
    ]
    assert outputs[0] == outputs[1]
