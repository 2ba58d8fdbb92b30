"""One pgd_at step under MirroredStrategy (2 logical CPU replicas) equals one device.

Both sides use synchronized BatchNorm, which training builds under several replicas: plain BatchNorm
on one device computes the variance by another float32 formula, and after one step its weights
differ from the synchronized ones by about 3e-5 (seen), which would hide real mistakes in the
distribution logic this test is about: batch split, seeded random start, loss scaling, gradient
all-reduce and metric reduction.

The attack is L2 PGD, whose step grad/||grad|| is continuous in the gradient. An L-inf step takes
sign(grad): a pixel whose gradient is ~0 can flip sign when one device and two replicas sum in a
different order, moving that pixel by a whole step and the weights by ~2e-5 after one update (seen
once in CI) — a difference of summation order, not of distribution logic.
"""

import keras
import numpy as np
import tensorflow as tf

from robustcl import methods, models
from robustcl.config import AttackConfig
from robustcl.training.model import AdversarialModel
from tests.conftest import template_batch


def _one_step(strategy, x, y, initial_weights):
    with strategy.scope():
        network = models.build("tiny", 10, (0.5,) * 3, (0.25,) * 3, synchronized_bn=True)
        network.set_weights(initial_weights)
        model = AdversarialModel(network, methods.get("pgd_at")(),
                                 AttackConfig(norm="l2", eps=0.5, step_size=0.125, steps=3),
                                 AttackConfig(steps=2), weight_decay=5e-4, seed=11)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x))
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    logs = {k: v[0] for k, v in history.history.items()}
    return logs, [w.numpy() for w in network.weights]


def test_mirrored_step_matches_one_device():
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) >= 2, "conftest splits the CPU into 2 logical devices"
    x, y = template_batch(n=32, seed=3)
    keras.utils.set_random_seed(0)
    initial = models.build("tiny", 10, (0.5,) * 3, (0.25,) * 3).get_weights()

    one_logs, one_weights = _one_step(tf.distribute.OneDeviceStrategy(cpus[0].name), x, y, initial)
    mirrored = tf.distribute.MirroredStrategy([cpus[0].name, cpus[1].name])
    assert mirrored.num_replicas_in_sync == 2
    two_logs, two_weights = _one_step(mirrored, x, y, initial)

    assert set(one_logs) == set(two_logs) == {"loss", "ce_adv", "accuracy", "robust_accuracy"}
    for name in one_logs:
        np.testing.assert_allclose(two_logs[name], one_logs[name], rtol=1e-5, atol=1e-6, err_msg=name)
    moved = max(np.abs(w - w0).max() for w, w0 in zip(one_weights, initial))
    assert moved > 1e-3, "the step changed the weights"
    for a, b in zip(one_weights, two_weights):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
