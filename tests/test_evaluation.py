"""Evaluation: attack properties for every attack, independent cross-checks, masking detection,
reproducible reports."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustcl import attacks, models
from robustcl.attacks.apgd import apgd
from robustcl.attacks.square import square_linf
from robustcl.evaluation import evaluate
from robustcl.evaluation.suite import Attacker, autoattack_cascade

EPS = 1 / 255


def _logits_fn(network):
    return lambda z: network(z, training=False)["logits"]


def _accuracy(network, x, y):
    return float(np.mean(np.argmax(_logits_fn(network)(tf.constant(x)), -1) == y))


def _all_attacks(network, x, y, eps, norm="linf"):
    """name -> x_adv for every attack of the suite, small budgets."""
    attacker = Attacker(network, batch_size=64, progress=False)
    out = {
        "fgsm": attacker.gradient_attack("fgsm", x, y, norm, eps, 1, eps, 1, "ce", 0, False).x_adv,
        "pgd": attacker.gradient_attack("pgd", x, y, norm, eps, 5, eps / 2, 2, "ce", 0).x_adv,
        "cw": attacker.gradient_attack("cw", x, y, norm, eps, 5, eps / 2, 1, "cw", 0).x_adv,
        "apgd-ce": np.asarray(apgd(_logits_fn(network), x, y, norm, eps, 10)[0]),
        "apgd-dlr": np.asarray(apgd(_logits_fn(network), x, y, norm, eps, 10, loss="dlr")[0]),
        "apgd-t": np.asarray(apgd(_logits_fn(network), x, y, norm, eps, 10, loss="dlr-targeted",
                                  targets=(y + 1) % 10)[0]),
    }
    if norm == "linf":
        out["square"] = square_linf(attacker.logits, x, y, eps, n_queries=50)[0]
    return out


@pytest.mark.parametrize("norm,eps", [("linf", 2 / 255), ("l2", 0.3)])
def test_every_attack_stays_in_the_ball_and_changes_nothing(undefended, norm, eps):
    network, x, y = undefended
    x = x[:48]
    y = y[:48]
    # Near the box edges, so clipping matters.
    x = np.where(x > 0.5, 1 - 0.001 * x, 0.001 * x).astype("float32")
    x_copy = x.copy()
    weights = [v.numpy() for v in network.variables]
    for name, x_adv in _all_attacks(network, x, y, eps, norm).items():
        x_adv = np.asarray(x_adv)
        assert np.isfinite(x_adv).all(), name
        assert x_adv.min() >= 0 and x_adv.max() <= 1, name
        delta = (x_adv - x).reshape(len(x), -1)
        distance = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta ** 2).sum(1))
        assert distance.max() <= eps * (1 + 1e-5) + 1e-7, (name, distance.max())
    np.testing.assert_array_equal(x, x_copy)
    for before, variable in zip(weights, network.variables):
        np.testing.assert_array_equal(variable.numpy(), before)


def test_eps_zero_attacks_return_the_input(undefended):
    network, x, y = undefended
    for name, x_adv in _all_attacks(network, x[:16], y[:16], 0.0).items():
        np.testing.assert_allclose(np.asarray(x_adv), x[:16], atol=0, err_msg=name)


def test_apgd_ce_at_least_as_strong_as_pgd_with_the_same_budget(undefended):
    network, x, y = undefended
    attacker = Attacker(network, progress=False)
    pgd = attacker.gradient_attack("pgd", x, y, "linf", EPS, 50, EPS / 4, 1, "ce", 0)
    _, apgd_correct = apgd(_logits_fn(network), x, y, "linf", EPS, n_iter=50)
    assert apgd_correct.mean() <= pgd.robust.mean() + 1e-9, (apgd_correct.mean(), pgd.robust.mean())


def test_fgsm_and_pgd_match_cleverhans(undefended):
    cleverhans = pytest.importorskip("cleverhans.tf2.attacks.projected_gradient_descent")
    from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method

    network, x, y = undefended
    model_fn = _logits_fn(network)
    attacker = Attacker(network, progress=False)
    ours_fgsm = attacker.gradient_attack("fgsm", x, y, "linf", EPS, 1, EPS, 1, "ce", 0, False)
    theirs_fgsm = fast_gradient_method(model_fn, tf.constant(x), EPS, np.inf, clip_min=0.0,
                                       clip_max=1.0, y=tf.constant(y))
    # Same seed-free settings: FGSM is deterministic, so the points agree to float rounding.
    np.testing.assert_allclose(ours_fgsm.x_adv, theirs_fgsm.numpy(), atol=1e-6)
    ours_pgd = attacker.gradient_attack("pgd", x, y, "linf", EPS, 20, EPS / 4, 1, "ce", 0, False)
    theirs_pgd = cleverhans.projected_gradient_descent(
        model_fn, tf.constant(x), EPS, EPS / 4, 20, np.inf, clip_min=0.0, clip_max=1.0,
        y=tf.constant(y), rand_init=False, sanity_checks=False)
    ours, theirs = ours_pgd.robust.mean(), _accuracy(network, theirs_pgd.numpy(), y)
    assert abs(ours - theirs) <= 0.03, (ours, theirs)


class RoundingLayer(keras.layers.Layer):
    """Quantizes inputs to 8 levels with no gradient: a textbook gradient-masking defence."""

    def call(self, x):
        return tf.stop_gradient(tf.round(x * 7.0) / 7.0)


def test_gradient_masking_model_triggers_warnings_and_falls_to_square(undefended):
    network, x, y = undefended
    images = keras.Input((32, 32, 3))
    masked = keras.Model(images, network(RoundingLayer()(images)), name="masked")
    keras_logits = _logits_fn(masked)
    correct = np.argmax(keras_logits(tf.constant(x)), -1) == y
    x, y = x[correct][:48], y[correct][:48]
    report = evaluate(masked, x, y, [str(i) for i in range(10)], eps=8 / 255, pgd_steps=5,
                      apgd_iterations=10, square_queries=300, sweep=False, progress=False)
    warnings = " | ".join(report["warnings"])
    assert "zero input gradients" in warnings
    assert "Square (black-box) breaks" in warnings
    rows = {a["attack"]: a for a in report["attacks"]}
    assert rows["apgd-t"]["robust_accuracy"] > 0.5  # the white-box attacks see no gradient
    assert rows["square"]["robust_accuracy"] < rows["apgd-t"]["robust_accuracy"] - 0.3


def test_report_is_reproducible_with_a_seed(undefended):
    network, x, y = undefended
    kwargs = dict(eps=EPS, pgd_steps=5, apgd_iterations=10, square_queries=30, progress=False,
                  seed=7)
    first = evaluate(network, x[:32], y[:32], [str(i) for i in range(10)], **kwargs)
    second = evaluate(network, x[:32], y[:32], [str(i) for i in range(10)], **kwargs)
    for report in (first, second):
        report.pop("seconds")
        for row in report["attacks"]:
            row.pop("seconds")
    assert first == second
    assert first["worst_case_robust_accuracy"] <= min(a["robust_accuracy"] for a in first["attacks"])


def test_linf_projection_onto_hyperplane_and_box():
    from robustcl.attacks.fab import project_linf

    # 2-D by hand: from p = (0.5, 0.5) reach x + y = 1.5 -> d = (0.25, 0.25).
    d = project_linf(np.array([[0.5, 0.5]]), np.array([[1.0, 1.0]]), np.array([1.5]))
    np.testing.assert_allclose(d, [[0.25, 0.25]], atol=1e-12)
    # The box binds: from (0.9, 0.1), x + y = 1.6 -> x stops at 1 (+0.1), y takes the rest (+0.5).
    d = project_linf(np.array([[0.9, 0.1]]), np.array([[1.0, 1.0]]), np.array([1.6]))
    np.testing.assert_allclose(d, [[0.1, 0.5]], atol=1e-12)
    rng = np.random.default_rng(0)
    p, w = rng.uniform(size=(50, 6)), rng.normal(size=(50, 6))
    b = np.sum(w * p, 1) + rng.normal(scale=0.3, size=50)
    d = project_linf(p, w, b)
    assert np.all(p + d >= -1e-12) and np.all(p + d <= 1 + 1e-12)
    feasible = np.abs(np.sum(w * (p + d), 1) - b) < 1e-9
    assert feasible.mean() > 0.8
    # No random feasible point in the box is closer in L-inf.
    for i in np.flatnonzero(feasible)[:10]:
        candidates = rng.uniform(size=(20000, 6))
        on_plane = candidates - np.outer(candidates @ w[i] - b[i], w[i]) / (w[i] @ w[i])
        inside = np.all((on_plane >= 0) & (on_plane <= 1), axis=1)
        if inside.any():
            assert np.abs(on_plane[inside] - p[i]).max(1).min() >= np.abs(d[i]).max() - 1e-9


def test_fab_t_finds_close_adversarials_inside_the_ball(undefended):
    from robustcl.attacks.fab import fab_targeted

    network, x, y = undefended
    attacker = Attacker(network, progress=False)
    order = np.argsort(attacker.logits(x), -1)
    eps = 2 / 255
    x_adv, robust = fab_targeted(attacker.logits_fn, attacker.predict, x, y, eps,
                                 [order[:, -rank] for rank in range(2, 5)], n_iter=20)
    broken = ~robust
    assert broken.mean() > 0.5
    assert np.abs(x_adv - x).reshape(len(x), -1).max(1).max() <= eps + 1e-7
    assert np.all(attacker.predict(x_adv[broken]) != y[broken])
    np.testing.assert_array_equal(x_adv[robust], x[robust])
