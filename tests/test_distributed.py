"""One training step of every registered method under MirroredStrategy (2 logical CPU replicas)
equals one device on the same global batch: every logged term, the total loss, the updated weights.

The batch is split so that replica 0 holds a single sample of class 3 (no positive on its own part)
and replica 1 the other three: a contrastive term computed per replica differs from the one-device
term there, and the test fails (checked with --contrastive_scope=replica below).

Both sides use synchronized BatchNorm, which training builds under several replicas: plain BatchNorm
on one device computes the variance by another float32 formula, and after one step its weights
differ from the synchronized ones by about 3e-5 (seen), which would hide real mistakes in the
distribution logic this test is about: batch split, gathers, seeded random start, loss scaling,
gradient all-reduce and metric reduction.

The attack is L2 PGD, whose step grad/||grad|| is continuous in the gradient. An L-inf step takes
sign(grad): a pixel whose gradient is ~0 can flip sign when one device and two replicas sum in a
different order, moving that pixel by a whole step and the weights by ~2e-5 after one update (seen
once in CI) — a difference of summation order, not of distribution logic.

One MirroredStrategy serves every case: two in one process can clash ("Shape mismatch in the
collective instance").
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustcl import methods, models
from robustcl.config import AttackConfig
from robustcl.losses import global_batch
from robustcl.training.model import AdversarialModel
from tests.conftest import template_batch

BATCH = 32
# L2 budget of the training attack. At 0.5 the untrained network is fooled outright (robust accuracy
# 0) and MART's boosted CE -log(1.0001 - p_wrong), with p_wrong near 1, amplifies summation-order
# differences of float32 into weights 1.3e-4 apart (seen); at 0.25 they agree to 1.2e-7.
EPS = 0.25


def _batch():
    """32 images of 4 classes; class 3 once in the first half (replica 0), three times in the second."""
    x, _ = template_batch(n=BATCH, num_classes=4, seed=3)
    y = np.array([0, 1, 2] * 5 + [3] + [0, 1, 2] * 4 + [3, 3, 3, 0], dtype="int32")
    assert np.sum(y[:16] == 3) == 1 and np.sum(y[16:] == 3) == 3
    return x, y


def _inputs(method_class, x):
    return (x, x[:, :, ::-1]) if method_class.data_views == 2 else x


def _network(method_name, embedding):
    head = methods.get(method_name).embedding_head or "mlp"
    return models.build(
        "tiny", 4, (0.5,) * 3, (0.25,) * 3, embedding_dim=embedding, embedding_head=head, synchronized_bn=True
    )


def _one_step(strategy, method_name, x, y, initial_weights, scope="global"):
    method_class = methods.get(method_name)
    keras.utils.set_random_seed(1)  # the method's own layers (MOREL's attention) start alike
    with strategy.scope():
        network = _network(method_name, 16)
        network.set_weights(initial_weights)
        model = AdversarialModel(
            network,
            method_class(contrastive_scope=scope),
            AttackConfig(norm="l2", eps=EPS, step_size=EPS / 4, steps=3),
            AttackConfig(steps=2),
            weight_decay=5e-4,
            seed=11,
        )
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    inputs = _inputs(method_class, x)
    dataset = tf.data.Dataset.from_tensor_slices((inputs, y)).batch(len(y))
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    logs = {k: v[0] for k, v in history.history.items()}
    return logs, [w.numpy() for w in model.weights]


@pytest.fixture(scope="module")
def devices():
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) >= 2, "conftest splits the CPU into 2 logical devices"
    mirrored = tf.distribute.MirroredStrategy([cpus[0].name, cpus[1].name])
    assert mirrored.num_replicas_in_sync == 2
    return tf.distribute.OneDeviceStrategy(cpus[0].name), mirrored


def _initial(method_name):
    keras.utils.set_random_seed(0)
    return _network(method_name, 16).get_weights()


@pytest.mark.parametrize("method_name", methods.METHODS.names())
def test_mirrored_step_matches_one_device(devices, method_name):
    one_device, mirrored = devices
    x, y = _batch()
    initial = _initial(method_name)
    one_logs, one_weights = _one_step(one_device, method_name, x, y, initial)
    two_logs, two_weights = _one_step(mirrored, method_name, x, y, initial)

    loss_names = methods.get(method_name)().loss_names
    assert set(loss_names) | {"loss", "accuracy"} <= set(one_logs) == set(two_logs)
    for name in one_logs:
        np.testing.assert_allclose(
            two_logs[name], one_logs[name], rtol=2e-5, atol=1e-6, err_msg=f"{method_name}: {name}"
        )
    moved = max(np.abs(w - w0).max() for w, w0 in zip(one_weights, initial))
    assert moved > 1e-3, "the step changed the weights"
    assert len(one_weights) == len(two_weights)
    for a, b in zip(one_weights, two_weights):
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6, err_msg=method_name)


@pytest.mark.parametrize("method_name,term", [("supcon_margin", "supcon"), ("morel", "contrastive")])
def test_replica_scope_is_the_per_replica_objective(devices, method_name, term):
    """--contrastive_scope=replica trains another objective on 2 replicas (what the issue measured
    before the gather): the test above would catch a missing gather."""
    one_device, mirrored = devices
    x, y = _batch()
    initial = _initial(method_name)
    one_logs, _ = _one_step(one_device, method_name, x, y, initial, scope="replica")
    two_logs, _ = _one_step(mirrored, method_name, x, y, initial, scope="replica")
    assert abs(two_logs[term] - one_logs[term]) > 0.01 * abs(one_logs[term]), (one_logs, two_logs)


def test_gather_concatenates_uneven_parts_and_sends_back_the_global_gradient(devices):
    """5 samples on 2 replicas (3 + 2): each replica sees the whole batch in order, knows where its
    own rows are, and the gradients its rows receive add up to the one-device gradient."""
    _, mirrored = devices
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3)).astype("float32")
    labels = np.array([4, 1, 4, 2, 1], dtype="int32")
    w = rng.normal(size=(3, 2)).astype("float32")

    def loss_of(features, labels, anchors):
        # A loss coupling every pair: each anchor's softmax over all samples' similarities.
        start, count = anchors
        logits = tf.matmul(features[start : start + count], features, transpose_b=True)
        return tf.reduce_sum(tf.nn.log_softmax(logits) * tf.cast(labels[None, :], tf.float32))

    def replica_step(x, labels):
        with tf.GradientTape() as tape:
            tape.watch(x)
            (all_x, all_labels), anchors = global_batch.gather((tf.matmul(x, w), labels))
            loss = loss_of(all_x, all_labels, anchors)
        return all_x, all_labels, tf.stack(anchors), tape.gradient(loss, x)

    dataset = mirrored.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, labels)).batch(5))
    outputs = tf.function(lambda batch: mirrored.run(replica_step, args=batch))(next(iter(dataset)))
    all_x, all_labels, anchors, grads = (mirrored.experimental_local_results(o) for o in outputs)

    for replica in range(2):
        np.testing.assert_allclose(all_x[replica].numpy(), x @ w, rtol=1e-6)
        np.testing.assert_array_equal(all_labels[replica].numpy(), labels)
    assert [a.numpy().tolist() for a in anchors] == [[0, 3], [3, 2]]

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        one_device = loss_of(tf.matmul(xt, w), tf.constant(labels), (0, 5))
    np.testing.assert_allclose(
        np.concatenate([g.numpy() for g in grads]), tape.gradient(one_device, xt).numpy(), rtol=1e-5, atol=1e-6
    )
