import numpy as np
import pytest
import tensorflow as tf

from robustcl import attacks

CE = attacks.OBJECTIVES.get("ce")


def _loss_fn(network, y):
    return lambda x_adv: CE(network(x_adv, training=False), y)


def _accuracy(network, x, y):
    return float(np.mean(np.argmax(network(x, training=False)["logits"], -1) == y))


def _linf(x, x_adv):
    return np.abs(np.asarray(x_adv) - x).reshape(len(x), -1).max(1)


def _l2(x, x_adv):
    return np.sqrt(((np.asarray(x_adv) - x).reshape(len(x), -1) ** 2).sum(1))


THREATS = [(attacks.LinfBall, 8 / 255, _linf), (attacks.L2Ball, 0.5, _l2)]


@pytest.mark.parametrize("threat_class", [attacks.LinfBall, attacks.L2Ball])
def test_eps_zero_returns_input(undefended, threat_class):
    network, x, y = undefended
    threat = threat_class(0.0)
    for x_adv in (
        attacks.pgd(_loss_fn(network, y), x, threat, 5, 0.01, True, (1, 2)),
        attacks.fgsm(_loss_fn(network, y), x, threat),
    ):
        np.testing.assert_array_equal(np.asarray(x_adv), x)


@pytest.mark.parametrize("threat_class,eps,distance", THREATS)
def test_outputs_inside_ball_and_unit_box(undefended, threat_class, eps, distance):
    network, x, y = undefended
    threat = threat_class(eps)
    # Start near the box edges so clipping to [0, 1] matters.
    x = np.where(x > 0.5, 1.0 - x * 0.01, x * 0.01).astype("float32")
    results = {
        "random start only": attacks.pgd(_loss_fn(network, y), x, threat, 0, eps, True, (3, 4)),
        "pgd": attacks.pgd(_loss_fn(network, y), x, threat, 7, eps / 2, True, (3, 4)),
        "fgsm": attacks.fgsm(_loss_fn(network, y), x, threat),
    }
    for name, x_adv in results.items():
        x_adv = np.asarray(x_adv)
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0, name
        assert distance(x, x_adv).max() <= eps * (1 + 1e-5), name
        assert np.isfinite(x_adv).all(), name
    # The random start really moves the point (it is not a no-op) and is seeded.
    start = np.asarray(results["random start only"])
    assert distance(x, start).mean() > 0.2 * eps
    again = attacks.pgd(_loss_fn(network, y), x, threat, 0, eps, True, (3, 4))
    np.testing.assert_array_equal(np.asarray(again), start)


def test_l2_random_start_fills_the_ball():
    threat = attacks.L2Ball(1.0)
    delta = np.asarray(threat.sample_start(tf.constant([2000, 2, 2, 1]), tf.constant([5, 6])))
    radius = np.sqrt((delta.reshape(2000, -1) ** 2).sum(1))
    # Uniform in a 4-d ball: P(r <= t) = t^4.
    for t in (0.5, 0.8, 0.95):
        assert abs(np.mean(radius <= t) - t**4) < 0.04


def test_pgd_breaks_undefended_model_far_more_than_fgsm(undefended):
    network, x, y = undefended
    threat = attacks.LinfBall(1 / 255)
    clean = _accuracy(network, x, y)
    fgsm = _accuracy(network, attacks.fgsm(_loss_fn(network, y), x, threat), y)
    pgd = _accuracy(network, attacks.pgd(_loss_fn(network, y), x, threat, 20, 0.25 / 255, True, (7, 8)), y)
    assert clean == 1.0
    assert pgd <= fgsm - 0.25, (clean, fgsm, pgd)
    assert pgd <= clean - 0.4, (clean, fgsm, pgd)


def test_attack_changes_no_model_state_or_input(undefended):
    network, x, y = undefended
    before = [v.numpy() for v in network.variables]
    x_tensor = tf.constant(x)
    x_copy = x.copy()
    attacks.pgd(_loss_fn(network, y), x_tensor, attacks.LinfBall(8 / 255), 3, 2 / 255, True, (1, 1))
    after = [v.numpy() for v in network.variables]
    bn_moving = [v.path for v in network.variables if "moving" in v.path]
    assert bn_moving, "the tiny network has BatchNorm moving statistics to check"
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(x_tensor), x_copy)
    np.testing.assert_array_equal(x, x_copy)


def test_kl_objective_is_zero_at_clean_point_and_positive_elsewhere():
    logits = tf.constant([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    kl = attacks.OBJECTIVES.get("kl")
    clean = {"logits": logits}
    np.testing.assert_allclose(kl(clean, None, clean), [0.0, 0.0], atol=1e-7)
    assert np.all(np.asarray(kl({"logits": logits[::-1]}, None, clean)) > 0)


def test_attack_from_config():
    from robustcl.attacks.settings import AttackConfig

    assert attacks.attack_from_config(AttackConfig(name="none")) is None
    x = tf.fill([2, 4, 4, 3], 0.5)
    loss_fn = lambda x_adv: tf.reduce_sum(x_adv, axis=[1, 2, 3])  # noqa: E731  ascent: every pixel up
    fgsm = attacks.attack_from_config(AttackConfig(name="fgsm", eps=0.1))
    np.testing.assert_allclose(np.asarray(fgsm(loss_fn, x, (0, 0))), 0.6, atol=1e-6)
    pgd = attacks.attack_from_config(AttackConfig(name="pgd", eps=0.1, step_size=0.03, steps=2, random_start=False))
    np.testing.assert_allclose(np.asarray(pgd(loss_fn, x, (0, 0))), 0.56, atol=1e-6)
