import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustcl import hardware, models
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


def _batchnorm_pair(channels, seed=0):
    """Keras's BatchNormalization and the fused one, built with the same non-trivial weights."""
    rng = np.random.default_rng(seed)
    stock = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    fused = models.BatchNormalization(momentum=0.9, epsilon=1e-5)
    weights = [
        rng.uniform(0.5, 1.5, channels),  # gamma
        rng.normal(size=channels),  # beta
        rng.normal(size=channels),  # moving mean
        rng.uniform(0.5, 2.0, channels),  # moving variance
    ]
    for layer in (stock, fused):
        layer.build((None, 4, 4, channels))
        layer.set_weights([w.astype("float32") for w in weights])
    return stock, fused


def _forward_and_gradients(layer, x, training):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        # A loss that weighs each output differently, so the gradients through the batch moments
        # are not the trivial ones of a plain sum.
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.linspace(-1.0, 2.0, y.shape[-1]) * tf.cast(y, tf.float32))
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return [y] + grads


@pytest.mark.parametrize(
    "policy, shape",
    [
        ("float32", (8, 5, 5, 6)),
        ("float32", (1, 1, 1, 3)),  # one value per channel: batch variance 0
        ("float32", (2, 1, 1, 3)),  # two values: the biased and unbiased variance differ by 2x
        ("mixed_bfloat16", (8, 5, 5, 6)),
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_fused_batchnorm_computes_what_keras_batchnorm_computes(policy, shape, training):
    keras.mixed_precision.set_global_policy(policy)
    try:
        stock, fused = _batchnorm_pair(shape[-1])
        x = tf.constant(np.random.default_rng(1).normal(2.0, 3.0, shape).astype("float32"))
        if policy == "mixed_bfloat16":
            x = tf.cast(x, tf.bfloat16)  # as the previous layer hands it on
        tolerance = dict(rtol=2e-2, atol=2e-2) if policy == "mixed_bfloat16" else dict(rtol=1e-4, atol=1e-4)
        expected = _forward_and_gradients(stock, x, training)
        got = _forward_and_gradients(fused, x, training)
        assert got[0].dtype == expected[0].dtype
        for name, e, g in zip(["outputs", "input gradient", "gamma gradient", "beta gradient"], expected, got):
            np.testing.assert_allclose(
                np.asarray(tf.cast(g, tf.float32)), np.asarray(tf.cast(e, tf.float32)), err_msg=name, **tolerance
            )
        # The moving statistics move (training) or stay (inference) alike, at float32 precision.
        np.testing.assert_allclose(fused.moving_mean.numpy(), stock.moving_mean.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(fused.moving_variance.numpy(), stock.moving_variance.numpy(), rtol=1e-4, atol=1e-5)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_fused_batchnorm_leaves_what_it_cannot_fuse_to_keras():
    # Synchronized moments, a non-channels-last axis and float64: Keras's own computation, unchanged.
    x = tf.random.stateless_normal([4, 3, 3, 2], seed=[0, 1])
    for layer, inputs in [
        (models.BatchNormalization(synchronized=True), x),
        (models.BatchNormalization(axis=1), x),
        (models.BatchNormalization(dtype="float64"), tf.cast(x, tf.float64)),
    ]:
        assert not layer._fused(inputs, None)
        y = layer(inputs, training=True)
        mean = tf.reduce_mean(tf.cast(y, tf.float32), axis=[a for a in range(4) if a != layer.axis % 4])
        np.testing.assert_allclose(mean.numpy(), 0.0, atol=1e-5)


def test_backbones_use_the_fused_batchnorm_where_it_pays_and_never_under_synchronized_moments():
    def batchnorms(**kwargs):
        network = models.build("tiny", 10, (0.5,) * 3, (0.25,) * 3, **kwargs)
        return {type(layer) for layer in network.layers if isinstance(layer, keras.layers.BatchNormalization)}

    assert batchnorms(fused_batchnorm=True) == {models.BatchNormalization}
    for kwargs in [dict(synchronized_bn=True, fused_batchnorm=True), dict(fused_batchnorm=False)]:
        assert batchnorms(**kwargs) == {keras.layers.BatchNormalization}
    chosen = models.BatchNormalization if hardware.detect().fused_batchnorm else keras.layers.BatchNormalization
    assert batchnorms() == {chosen}


@pytest.mark.parametrize(
    "flags, onednn, cap, gpu, fused",
    [
        (("avx512_bf16", "avx512f", "avx2"), True, "", None, True),  # measured 1.25x / 1.07x
        (("avx512_bf16", "avx512f", "avx2"), True, "AVX2", None, False),  # measured 0.92x
        (("avx512f", "avx2"), True, "avx2_vnni", None, False),
        (("avx512f", "avx2"), True, "AVX512_CORE", None, True),
        (("avx2",), True, "", None, True),  # an AVX2-only CPU: measured 1.05x
        (("avx2",), True, "AVX2", None, True),  # capped at its own instructions
        (("avx2",), True, "SSE41", None, False),  # capped below them: not measured, Keras's layer
        (("avx512f", "avx2"), False, "", None, False),  # Eigen kernels: measured 0.90x
        (("avx2",), False, "", None, False),
        (("avx2",), False, "", (8, 0), True),  # cuDNN's fused kernel
    ],
)
def test_the_fused_batchnorm_is_chosen_where_it_measured_faster(flags, onednn, cap, gpu, fused):
    machine = hardware.Hardware("cpu", flags, gpu, onednn, "", cap)
    assert machine.fused_batchnorm is fused


def test_weights_of_a_keras_batchnorm_network_load_into_the_fused_one_and_back(tmp_path):
    # Runs trained before the fused layer resume, evaluate and export unchanged; .keras files round-trip.
    keras.utils.set_random_seed(0)
    stock = models.build("tiny", 10, (0.5,) * 3, (0.25,) * 3, fused_batchnorm=False)
    x = tf.random.stateless_uniform([4, 32, 32, 3], seed=[2, 3])
    stock(x, training=True)  # moves the BatchNorm statistics off their initial values
    stock.save_weights(tmp_path / "stock.weights.h5")
    fused = models.build("tiny", 10, (0.5,) * 3, (0.25,) * 3, fused_batchnorm=True)
    fused.load_weights(tmp_path / "stock.weights.h5")
    np.testing.assert_allclose(fused(x)["logits"], stock(x)["logits"], rtol=1e-4, atol=1e-5)
    fused.save(tmp_path / "fused.keras")
    loaded = keras.saving.load_model(tmp_path / "fused.keras")
    assert any(isinstance(layer, models.BatchNormalization) for layer in loaded.layers)
    np.testing.assert_allclose(loaded(x)["logits"], stock(x)["logits"], rtol=1e-4, atol=1e-5)
