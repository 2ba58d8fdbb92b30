"""Losses against float64 NumPy references: values, gradients, degenerate batches, invariances."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustcl import losses
from robustcl.losses.mining import hard_positive_weights

RNG = np.random.default_rng(0)


# ---- float64 NumPy references, written from the papers' formulas ----------------------------


def ref_supcon_margin(labels, features, temperature, margin=0.0, pair_weights=None):
    """Per-anchor loop: returns (per-sample values, per-sample valid fraction)."""
    features = features[:, None, :] if features.ndim == 2 else features
    b, v, _ = features.shape
    z = features.reshape(b * v, -1)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    z = np.where(norms > 0, z / np.maximum(norms, 1e-300), 0.0)
    lab = np.repeat(labels, v)
    n = b * v
    per_anchor, valid = np.zeros(n), np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        pos = [j for j in others if lab[j] == lab[i]]
        w = {j: (1.0 if pair_weights is None else pair_weights[i, j]) for j in pos}
        if not pos or sum(w.values()) <= 0:
            continue
        logit = {j: (z[i] @ z[j] - (margin if j in w else 0.0)) / temperature for j in others}
        m = max(logit.values())
        log_denominator = m + np.log(sum(np.exp(logit[j] - m) for j in others))
        per_anchor[i] = -sum(w[p] * (logit[p] - log_denominator) for p in pos) / sum(w.values())
        valid[i] = 1.0
    per_anchor, valid = per_anchor.reshape(b, v), valid.reshape(b, v)
    count = valid.sum(1)
    return per_anchor.sum(1) / np.maximum(count, 1), count / v


def ref_softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def ref_ce(labels, logits):
    return -np.log(ref_softmax(logits)[np.arange(len(labels)), labels])


def ref_kl(clean, adv):
    p, q = ref_softmax(clean), ref_softmax(adv)
    return (p * (np.log(p) - np.log(q))).sum(-1)


def ref_cosine(a, b):
    out = []
    for x, y in zip(a, b):
        nx, ny = np.linalg.norm(x), np.linalg.norm(y)
        out.append(1.0 - (x @ y / (nx * ny) if nx > 0 and ny > 0 else 0.0))
    return np.array(out)


def ref_mart(labels, clean, adv, beta):
    p_adv, p_clean = ref_softmax(adv), ref_softmax(clean)
    out_boost, out_robust = [], []
    for i, y in enumerate(labels):
        order = np.argsort(p_adv[i])
        wrong = order[-2] if order[-1] == y else order[-1]
        out_boost.append(-np.log(p_adv[i, y]) - np.log(1.0001 - p_adv[i, wrong] + 1e-12))
        kl = np.sum(p_clean[i] * (np.log(p_clean[i]) - np.log(p_adv[i] + 1e-12)))
        out_robust.append(beta * kl * (1.0000001 - p_clean[i, y]))
    return np.array(out_boost), np.array(out_robust)


# ---- helpers ---------------------------------------------------------------------------------


def tf_values_and_grad(fn, *inputs, wrt=0):
    inputs = [tf.constant(x) for x in inputs]
    with tf.GradientTape() as tape:
        tape.watch(inputs[wrt])
        values = fn(*inputs)
        weights = None
        if isinstance(values, tuple):
            values, weights = values
        total = tf.reduce_sum(values if weights is None else values * weights)
    return values.numpy(), (None if weights is None else weights.numpy()), tape.gradient(total, inputs[wrt]).numpy()


def numeric_grad(fn, x, eps=1e-6):
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        idx = it.multi_index
        plus, minus = x.copy(), x.copy()
        plus[idx] += eps
        minus[idx] -= eps
        grad[idx] = (fn(plus) - fn(minus)) / (2 * eps)
    return grad


def supcon_total(labels, temperature, margin=0.0, pair_weights=None):
    def total(features):
        values, weights = ref_supcon_margin(labels, features, temperature, margin, pair_weights)
        return float(np.sum(values * weights))

    return total


# ---- contrastive --------------------------------------------------------------------------------


@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_supcon_margin_matches_reference(views, margin):
    labels = np.array([0, 1, 0, 2, 1, 0, 3])  # class 2 and 3 have a single member
    features = RNG.normal(size=(7, views, 5))
    fn = lambda l, f: losses.supcon_margin_per_example(l, f, 0.2, margin)  # noqa: E731
    values, weights, grad = tf_values_and_grad(fn, labels, features, wrt=1)
    ref_values, ref_weights = ref_supcon_margin(labels, features, 0.2, margin)
    np.testing.assert_allclose(values, ref_values, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(weights, ref_weights)
    np.testing.assert_allclose(grad, numeric_grad(supcon_total(labels, 0.2, margin), features), rtol=1e-5, atol=1e-7)
    if views == 1:  # singletons have no positive: left out of the mean
        assert weights[3] == 0 and weights[6] == 0 and values[3] == 0


def test_positive_weights_match_reference():
    labels = np.array([0, 0, 1, 1, 0])
    features = RNG.normal(size=(5, 2, 4))
    pair_weights = RNG.uniform(0.1, 3.0, size=(10, 10))
    fn = lambda l, f: losses.supcon_margin_per_example(l, f, 0.5, 0.1, pair_weights)  # noqa: E731
    values, _, grad = tf_values_and_grad(fn, labels, features, wrt=1)
    np.testing.assert_allclose(values, ref_supcon_margin(labels, features, 0.5, 0.1, pair_weights)[0], rtol=1e-10)
    np.testing.assert_allclose(
        grad, numeric_grad(supcon_total(labels, 0.5, 0.1, pair_weights), features), rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("start,count", [(0, 3), (3, 4), (6, 1)])
def test_anchor_subset_scores_against_the_whole_batch(start, count):
    """A replica's anchors (rows start..start+count-1 of the gathered global batch) get exactly the
    values, weights and mining weights the whole batch gives those rows."""
    labels = np.array([0, 1, 0, 2, 1, 0, 3])
    features = RNG.normal(size=(7, 2, 5))
    pair_weights = hard_positive_weights(labels, features, "exp", 1.5).numpy()
    rows = slice(2 * start, 2 * (start + count))
    sub_weights = hard_positive_weights(labels, features, "exp", 1.5, (start, count)).numpy()
    np.testing.assert_allclose(sub_weights, pair_weights[rows], rtol=1e-12)
    values, weights = losses.supcon_margin_per_example(labels, features, 0.2, 0.1, pair_weights)
    sub_values, sub_valid = losses.supcon_margin_per_example(
        labels, features, 0.2, 0.1, sub_weights, anchors=(start, count)
    )
    np.testing.assert_allclose(sub_values.numpy(), values.numpy()[start : start + count], rtol=1e-12)
    np.testing.assert_allclose(sub_valid.numpy(), weights.numpy()[start : start + count])
    ref_values, _ = ref_supcon_margin(labels, features, 0.2, 0.1, pair_weights)
    np.testing.assert_allclose(sub_values.numpy(), ref_values[start : start + count], rtol=1e-10)


def test_margin_zero_equals_supcon_exactly():
    labels = RNG.integers(0, 4, size=16)
    features = RNG.normal(size=(16, 2, 8)).astype("float32")
    margin0 = losses.SupConMarginLoss(temperature=0.07, margin=0.0)(labels, features)
    supcon = losses.SupConLoss(temperature=0.07)(labels, features)
    assert float(margin0) == float(supcon)
    assert float(losses.SupConMarginLoss(0.07, margin=0.5)(labels, features)) > float(supcon)


def test_multi_positive_matches_morel_formula():
    # MOREL: cross-entropy of softmax(z z^T / t, self masked) against target uniform over positives.
    labels = np.array([0, 1, 0, 1, 1, 2, 2, 0])
    z = RNG.normal(size=(8, 6))
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    logits = zn @ zn.T / 0.1
    np.fill_diagonal(logits, -np.inf)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    mask = (labels[:, None] == labels[None, :]) & ~np.eye(8, dtype=bool)
    target = mask / mask.sum(1, keepdims=True)
    expected = -(target * np.where(mask, log_softmax, 0.0)).sum(1)
    values, weights = losses.multi_positive_per_example(labels, z, 0.1)
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-10)
    np.testing.assert_array_equal(weights.numpy(), np.ones(8))


@pytest.mark.parametrize(
    "labels,features",
    [
        (np.array([3]), RNG.normal(size=(1, 4))),  # one sample
        (np.array([2, 2, 2, 2]), RNG.normal(size=(4, 4))),  # one class
        (np.array([0, 1, 2]), RNG.normal(size=(3, 4))),  # every class a single member
        (np.array([0, 0, 1]), np.zeros((3, 4))),  # zero-norm features
        (np.array([0, 0, 1, 1]), RNG.normal(size=(4, 2, 4))),  # views, one sample per class
    ],
)
@pytest.mark.parametrize("temperature", [0.5, 0.01, 1e-3])
def test_degenerate_batches_are_finite(labels, features, temperature):
    for dtype in ("float32", "bfloat16"):
        f = tf.constant(features, dtype=dtype)
        with tf.GradientTape() as tape:
            tape.watch(f)
            loss = losses.SupConMarginLoss(temperature, margin=0.2)(labels, f)
        grad = tape.gradient(loss, f)
        assert loss.dtype == tf.float32
        assert np.isfinite(loss.numpy()) and np.isfinite(grad.numpy().astype("float32")).all()
    ref_values, ref_weights = ref_supcon_margin(labels, features.astype(float), temperature, 0.2)
    values, weights = losses.supcon_margin_per_example(labels, features.astype(float), temperature, 0.2)
    np.testing.assert_allclose(values.numpy(), ref_values, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(weights.numpy(), ref_weights)


def test_no_positive_anywhere_gives_zero_not_nan():
    loss = losses.SupConLoss()(np.array([0, 1, 2]), RNG.normal(size=(3, 4)).astype("float32"))
    assert float(loss) == 0.0


def test_batch_permutation_invariance():
    labels = RNG.integers(0, 3, size=12)
    features = RNG.normal(size=(12, 2, 5))
    perm = RNG.permutation(12)
    for loss in (losses.SupConMarginLoss(0.1, 0.2), losses.MultiPositiveContrastiveLoss(0.1)):
        a = loss(labels, features)
        b = loss(labels[perm], features[perm])
        np.testing.assert_allclose(float(a), float(b), rtol=1e-12)
        per = losses.supcon_margin_per_example(labels, features, 0.1, 0.2)[0].numpy()
        per_perm = losses.supcon_margin_per_example(labels[perm], features[perm], 0.1, 0.2)[0].numpy()
        np.testing.assert_allclose(per[perm], per_perm, rtol=1e-12)


def test_mean_skips_anchors_without_positives_and_sample_weights():
    labels = np.array([0, 0, 1])
    features = RNG.normal(size=(3, 4))
    values, weights = ref_supcon_margin(labels, features, 0.1)
    loss = losses.SupConLoss(0.1)
    np.testing.assert_allclose(float(loss(labels, features)), values[:2].mean(), rtol=1e-12)
    np.testing.assert_allclose(
        float(loss(labels, features, sample_weight=np.array([1.0, 3.0, 1.0]))),
        (values[0] + 3 * values[1]) / 4,
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        float(losses.SupConLoss(0.1, reduction="sum")(labels, features)), values.sum(), rtol=1e-12
    )
    np.testing.assert_allclose(losses.SupConLoss(0.1, reduction=None)(labels, features).numpy(), values, rtol=1e-12)


# ---- alignment / TRADES / MART ------------------------------------------------------------------


def test_cosine_alignment_matches_reference():
    a, b = RNG.normal(size=(6, 5)), RNG.normal(size=(6, 5))
    b[2] = 0.0  # zero-norm
    values, _, grad = tf_values_and_grad(losses.cosine_alignment_per_example, a, b, wrt=0)
    np.testing.assert_allclose(values, ref_cosine(a, b), rtol=1e-10)
    np.testing.assert_allclose(grad, numeric_grad(lambda x: ref_cosine(x, b).sum(), a), rtol=1e-5, atol=1e-7)
    assert values[2] == 1.0
    np.testing.assert_allclose(losses.cosine_alignment_per_example(a, 3 * a).numpy(), 0, atol=1e-12)
    np.testing.assert_allclose(losses.cosine_alignment_per_example(a, -a).numpy(), 2, atol=1e-12)


def test_trades_matches_reference():
    labels = RNG.integers(0, 4, size=6)
    clean, adv = RNG.normal(size=(6, 4)), RNG.normal(size=(6, 4))
    fn = lambda l, c, a: losses.trades_per_example(l, c, a, 6.0)  # noqa: E731
    values, _, grad = tf_values_and_grad(fn, labels, clean, adv, wrt=2)
    np.testing.assert_allclose(values, ref_ce(labels, clean) + 6.0 * ref_kl(clean, adv), rtol=1e-10)
    ref_total = lambda a: float(np.sum(ref_ce(labels, clean) + 6.0 * ref_kl(clean, a)))  # noqa: E731
    np.testing.assert_allclose(grad, numeric_grad(ref_total, adv), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(losses.kl_per_example(clean, clean).numpy(), 0, atol=1e-12)
    stacked = np.stack([clean, adv], axis=1)
    np.testing.assert_allclose(float(losses.TradesLoss(6.0)(labels, stacked)), values.mean(), rtol=1e-12)


def test_mart_matches_reference():
    labels = RNG.integers(0, 5, size=8)
    clean, adv = RNG.normal(size=(8, 5)) * 3, RNG.normal(size=(8, 5)) * 3
    boosted, robust = losses.mart_terms(labels, clean, adv, 6.0)
    ref_boosted, ref_robust = ref_mart(labels, clean, adv, 6.0)
    np.testing.assert_allclose(boosted.numpy(), ref_boosted, rtol=1e-10)
    np.testing.assert_allclose(robust.numpy(), ref_robust, rtol=1e-9)
    fn = lambda l, c, a: losses.mart_per_example(l, c, a, 6.0)  # noqa: E731
    _, _, grad = tf_values_and_grad(fn, labels, clean, adv, wrt=2)
    ref_total = lambda a: float(np.sum(np.add(*ref_mart(labels, clean, a, 6.0))))  # noqa: E731
    np.testing.assert_allclose(grad, numeric_grad(ref_total, adv), rtol=1e-5, atol=1e-6)
    _, _, grad_clean = tf_values_and_grad(fn, labels, clean, adv, wrt=1)
    ref_total_clean = lambda c: float(np.sum(np.add(*ref_mart(labels, c, adv, 6.0))))  # noqa: E731
    np.testing.assert_allclose(grad_clean, numeric_grad(ref_total_clean, clean), rtol=1e-5, atol=1e-6)


def test_one_sample_and_bfloat16_inputs_are_finite_float32():
    labels = np.array([1])
    clean = tf.constant([[0.0, 50.0, -50.0]], tf.bfloat16)
    adv = tf.constant([[50.0, -50.0, 0.0]], tf.bfloat16)
    for fn in (losses.trades_per_example, losses.mart_per_example):
        value = fn(labels, clean, adv)
        assert value.dtype == tf.float32 and np.isfinite(value.numpy()).all()
    value = losses.cosine_alignment_per_example(tf.zeros([1, 4], tf.bfloat16), tf.ones([1, 4], tf.bfloat16))
    assert value.dtype == tf.float32 and float(value[0]) == 1.0


LOSS_CLASSES = [
    losses.SupConLoss(temperature=0.2),
    losses.SupConMarginLoss(0.2, margin=0.3),
    losses.MultiPositiveContrastiveLoss(0.05),
    losses.CosineAlignmentLoss(),
    losses.TradesLoss(beta=3.0),
    losses.MartLoss(beta=5.0),
]


@pytest.mark.parametrize("loss", LOSS_CLASSES, ids=lambda loss: type(loss).__name__)
def test_serialization_round_trip(loss):
    config = keras.losses.serialize(loss)
    restored = keras.losses.deserialize(config)
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    restored_direct = type(loss).from_config(loss.get_config())
    assert restored_direct.get_config() == loss.get_config()


def _example_inputs(loss):
    labels = np.array([0, 1, 0, 2, 1, 1])
    if isinstance(loss, losses.CosineAlignmentLoss):
        return RNG.normal(size=(6, 5)), RNG.normal(size=(6, 5))
    if isinstance(loss, (losses.TradesLoss, losses.MartLoss)):
        return labels, RNG.normal(size=(6, 2, 3))
    return labels, RNG.normal(size=(6, 2, 4))


@pytest.mark.parametrize("loss", LOSS_CLASSES, ids=lambda loss: type(loss).__name__)
def test_a_restored_loss_computes_the_same_values(loss):
    """As Keras' losses_test.py: the serialized loss, restored, is the same function; `call` is the
    per-example values `__call__` reduces; every reduction and the dtype survive the round trip."""
    y_true, y_pred = _example_inputs(loss)
    for reduction in ("sum_over_batch_size", "sum", None):
        original = type(loss).from_config({**loss.get_config(), "reduction": reduction})
        restored = keras.losses.deserialize(keras.losses.serialize(original))
        np.testing.assert_allclose(
            np.asarray(restored(y_true, y_pred)), np.asarray(original(y_true, y_pred)), rtol=1e-12
        )
    per_example = loss.call(y_true, y_pred)
    np.testing.assert_allclose(
        per_example.numpy(),
        np.asarray(type(loss).from_config({**loss.get_config(), "reduction": None})(y_true, y_pred)),
        rtol=1e-12,
    )
    assert per_example.shape == (6,)
    typed = type(loss).from_config({**loss.get_config(), "dtype": "float64"})
    assert typed(y_true, tf.constant(y_pred, tf.float32)).dtype == tf.float64
    assert keras.losses.deserialize(keras.losses.serialize(typed)).dtype == "float64"
