"""Evaluation: attack properties for every attack, independent cross-checks, masking detection,
reproducible reports."""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustcl.attacks.apgd import apgd
from robustcl.attacks import fab as fab_module
from robustcl.attacks.fab import fab, project_onto_hyperplane
from robustcl.attacks.square import margins_of, square
from robustcl.attacks.threat import threat_model
from robustcl.settings import ConfigError
from robustcl.evaluation import evaluate
from robustcl.evaluation.classifiers import ModelLoadError
from robustcl.evaluation.engine import TIMING_FIELDS
from robustcl.evaluation.suite import Attacker
from tests.conftest import cleverhans_pgd

EPS = 1 / 255


def _logits_fn(network):
    return lambda z: network(z, training=False)["logits"]


def _accuracy(network, x, y):
    return float(np.mean(np.argmax(_logits_fn(network)(tf.constant(x)), -1) == y))


def _all_attacks(network, x, y, eps, norm="linf"):
    """name -> x_adv for every attack of the suite, small budgets."""
    attacker = Attacker(network, batch_size=64, progress=False)
    threat = threat_model(norm, eps)
    out = {
        "fgsm": attacker.gradient_attack("fgsm", x, y, norm, eps, 1, eps, 1, "ce", 0, False).x_adv,
        "pgd": attacker.gradient_attack("pgd", x, y, norm, eps, 5, eps / 2, 2, "ce", 0).x_adv,
        "cw": attacker.gradient_attack("cw", x, y, norm, eps, 5, eps / 2, 1, "cw", 0).x_adv,
        "apgd-ce": np.asarray(apgd(_logits_fn(network), x, y, threat, 10)[0]),
        "apgd-dlr": np.asarray(apgd(_logits_fn(network), x, y, threat, 10, loss="dlr")[0]),
        "apgd-t": np.asarray(apgd(_logits_fn(network), x, y, threat, 10, loss="dlr-targeted", targets=(y + 1) % 10)[0]),
        "apgd-ce-eot": np.asarray(apgd(_logits_fn(network), x, y, threat, 5, eot_iterations=3)[0]),
    }
    out["square"] = square(attacker.margins, x, y, threat, n_queries=50)[0]
    order = np.argsort(attacker.logits(x), -1)
    out["fab-t"] = fab(attacker.logits_fn, attacker.predict, x, y, threat, 10, targets_by_rank=[order[:, -2]])[0]
    # Two restarts: the second starts from a random point.
    out["fab"] = fab(attacker.logits_fn, attacker.predict, x, y, threat, 10, n_restarts=2)[0]
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
        distance = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta**2).sum(1))
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
    _, apgd_correct = apgd(_logits_fn(network), x, y, threat_model("linf", EPS), n_iter=50)
    assert apgd_correct.mean() <= pgd.robust.mean() + 1e-9, (apgd_correct.mean(), pgd.robust.mean())


def test_fgsm_and_pgd_match_cleverhans(undefended):
    pytest.importorskip("cleverhans.tf2.attacks.projected_gradient_descent")
    from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method

    network, x, y = undefended
    model_fn = _logits_fn(network)
    attacker = Attacker(network, progress=False)
    ours_fgsm = attacker.gradient_attack("fgsm", x, y, "linf", EPS, 1, EPS, 1, "ce", 0, False)
    theirs_fgsm = fast_gradient_method(
        model_fn, tf.constant(x), EPS, np.inf, clip_min=0.0, clip_max=1.0, y=tf.constant(y)
    )
    # Same seed-free settings: FGSM is deterministic, so the points agree to float rounding.
    np.testing.assert_allclose(ours_fgsm.x_adv, theirs_fgsm.numpy(), atol=1e-6)
    ours_pgd = attacker.gradient_attack("pgd", x, y, "linf", EPS, 20, EPS / 4, 1, "ce", 0, False)
    theirs_pgd = cleverhans_pgd(model_fn, x, y, EPS, 20)
    ours, theirs = ours_pgd.robust.mean(), _accuracy(network, theirs_pgd, y)
    assert abs(ours - theirs) <= 0.03, (ours, theirs)


class RoundingLayer(keras.layers.Layer):
    """Quantizes inputs to 8 levels with no gradient: a textbook gradient-masking defence."""

    def call(self, x):
        return tf.stop_gradient(tf.round(x * 7.0) / 7.0)


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 1.0)])
def test_gradient_masking_model_triggers_warnings_and_falls_to_square(undefended, norm, eps):
    network, x, y = undefended
    images = keras.Input((32, 32, 3))
    masked = keras.Model(images, network(RoundingLayer()(images)), name="masked")
    keras_logits = _logits_fn(masked)
    correct = np.argmax(keras_logits(tf.constant(x)), -1) == y
    x, y = x[correct][:48], y[correct][:48]
    report = evaluate(
        masked,
        x,
        y,
        [str(i) for i in range(10)],
        norm=norm,
        eps=eps,
        pgd_steps=5,
        apgd_iterations=10,
        square_queries=300,
        sweep=False,
        progress=False,
    )
    warnings = " | ".join(report["warnings"])
    assert "zero input gradients" in warnings
    assert "Square (black-box) breaks" in warnings
    rows = {a["attack"]: a for a in report["attacks"]}
    assert rows["apgd-t"]["robust_accuracy"] > 0.5  # the white-box attacks see no gradient
    assert rows["square"]["robust_accuracy"] < rows["apgd-t"]["robust_accuracy"] - 0.3


class Defence(keras.layers.Layer):
    """Input transformations of published defences that mask gradients (Athalye et al. 2018)."""

    def __init__(self, kind, **kwargs):
        super().__init__(**kwargs)
        self.kind = kind

    def call(self, x):
        if self.kind == "input_noise":  # randomized: fresh Gaussian noise at every call
            return tf.clip_by_value(x + tf.random.normal(tf.shape(x), stddev=0.05), 0.0, 1.0)
        if self.kind == "quantizer":  # no gradient at all
            return tf.stop_gradient(tf.round(x * 7.0) / 7.0)
        if self.kind == "resize_and_pad":  # randomized (Xie et al. 2018): random size and offset
            size = tf.random.uniform([], 26, 33, dtype=tf.int32)
            offset = tf.random.uniform([], 0, 33 - size, dtype=tf.int32)
            return tf.image.pad_to_bounding_box(tf.image.resize(x, [size, size]), offset, offset, 32, 32)
        if self.kind == "shattered":  # differentiable but useless gradients: a fast oscillation
            return x + 0.03 * tf.sin(2000.0 * x)
        return x


@pytest.mark.parametrize(
    "defence, expected",
    [
        ("scaled_logits", "zero input gradients"),
        ("softmax_output", "--outputs=probabilities"),  # refused before any attack runs
        ("input_noise", "logits change across repeated calls"),
        ("quantizer", "Square (black-box) breaks"),
        ("resize_and_pad", "EOT attacks"),  # its logits or its gradients change between calls
        ("shattered", "accuracy rises with eps"),
    ],
)
def test_every_masking_defence_is_still_flagged(undefended, defence, expected):
    """The warnings judge sampling noise (exact tests on per-point verdicts) and still fire on each
    kind of masked model."""
    network, x, y = undefended
    images = keras.Input((32, 32, 3))
    logits = network(Defence(defence)(images))["logits"]
    if defence == "scaled_logits":  # softmax saturates in float32: zero gradients
        logits = keras.layers.Rescaling(1000.0)(logits)
    if defence == "softmax_output":
        logits = keras.layers.Softmax()(logits)
    model = keras.Model(images, {"logits": logits})
    settings = dict(eps=8 / 255, pgd_steps=5, apgd_iterations=10, square_queries=300, progress=False)
    if defence == "softmax_output":
        with pytest.raises(ModelLoadError, match=expected):
            evaluate(model, x[:48], y[:48], [str(i) for i in range(10)], **settings)
        return
    report = evaluate(model, x[:48], y[:48], [str(i) for i in range(10)], **settings)
    assert any(expected in w for w in report["warnings"]), report["warnings"]


def test_report_is_reproducible_with_a_seed(undefended):
    network, x, y = undefended
    kwargs = dict(eps=EPS, pgd_steps=5, apgd_iterations=10, square_queries=30, progress=False, seed=7)
    first = evaluate(network, x[:32], y[:32], [str(i) for i in range(10)], **kwargs)
    second = evaluate(network, x[:32], y[:32], [str(i) for i in range(10)], **kwargs)
    for report in (first, second):
        report.pop("seconds")
        for row in report["attacks"]:
            for timing in TIMING_FIELDS:
                row.pop(timing, None)
    assert first == second
    assert first["worst_case_robust_accuracy"] <= min(a["robust_accuracy"] for a in first["attacks"])


def test_projection_onto_hyperplane_by_hand():
    # From p = (0.5, 0.5) onto x + y = 1.5: both norms step (0.25, 0.25).
    for norm in ("linf", "l2"):
        d = project_onto_hyperplane([[0.5, 0.5]], [[1.0, 1.0]], [1.5], norm)
        np.testing.assert_allclose(d, [[0.25, 0.25]], atol=1e-12)
    # The box binds: from (0.9, 0.1) onto x + y = 1.6, x stops at 1 (+0.1), y takes the rest.
    for norm in ("linf", "l2"):
        d = project_onto_hyperplane([[0.9, 0.1]], [[1.0, 1.0]], [1.6], norm)
        np.testing.assert_allclose(d, [[0.1, 0.5]], atol=1e-12)
    # L2 steps along w where the box does not bind: onto 2x + y = 2 from (0.5, 0.5) -> (0.2, 0.1).
    d = project_onto_hyperplane([[0.5, 0.5]], [[2.0, 1.0]], [2.0], "l2")
    np.testing.assert_allclose(d, [[0.2, 0.1]], atol=1e-12)
    # Out of reach: every coordinate goes to the box.
    d = project_onto_hyperplane([[0.5, 0.5]], [[1.0, -1.0]], [3.0], "linf")
    np.testing.assert_allclose(d, [[0.5, -0.5]], atol=1e-12)
    with pytest.raises(ValueError, match="norm"):
        project_onto_hyperplane([[0.5]], [[1.0]], [1.0], "l1")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projecting_a_large_batch_over_several_cores_changes_no_row(norm, monkeypatch):
    rng = np.random.default_rng(1)
    p, w = rng.uniform(size=(40, 3072)), rng.normal(size=(40, 3072))
    b = np.sum(w * p, 1) + rng.normal(scale=0.3, size=40)
    monkeypatch.setattr(fab_module, "_CORES", 3)  # split, unevenly, whatever this machine has
    split = project_onto_hyperplane(p, w, b, norm)
    row_by_row = [project_onto_hyperplane(p[i : i + 1], w[i : i + 1], b[i : i + 1], norm) for i in range(40)]
    np.testing.assert_array_equal(split, np.concatenate(row_by_row))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_newtons_solution_is_the_sorted_breakpoints_solution(norm, monkeypatch):
    """Image-like rows (a sixth of the pixels at 0 or 1: no room one way), zero weights, and
    hyperplanes near, far and out of the box's reach: where the hyperplane is within reach,
    Newton's steps find the step the reference's sort of the breakpoints finds; where it is out of
    reach, every coordinate goes exactly to the box (the sort's rounding left one 1.4e-6 short)."""
    rng = np.random.default_rng(2)
    p, w = rng.uniform(size=(64, 3072)), rng.normal(size=(64, 3072))
    p[:, :256], p[:, 256:512] = 0.0, 1.0
    w[:4, :1000] = 0.0
    if norm == "l2":
        w[4:8] *= 1e-9  # below L2's cut-off: those coordinates are ignored
        w = np.where(np.abs(w) < 1e-8, 0.0, w)
    b = np.sum(w * p, 1) + rng.normal(size=64) * np.geomspace(1e-3, 1e3, 64)
    needed = b - np.sum(w * p, 1)
    to_box = np.sign(needed)[:, None] * np.sign(w) * np.where(np.sign(needed)[:, None] * w > 0, 1 - p, p)
    reachable = np.abs(needed) < np.sum(w * to_box, 1) * np.sign(needed)
    assert 0 < reachable.sum() < len(p)
    newton = project_onto_hyperplane(p, w, b, norm)
    np.testing.assert_array_equal(newton[~reachable], to_box[~reachable])
    monkeypatch.setattr(fab_module, "_NEWTON_STEPS", 0)  # every row solved by sorting
    sorted_ = project_onto_hyperplane(p, w, b, norm)
    np.testing.assert_allclose(newton[reachable], sorted_[reachable], rtol=0, atol=1e-12)


def _reference_l2_projection(p, w, b):
    """Float64 reference: d = clip(mu * w, -p, 1 - p) with mu found by 200 bisection steps on the
    monotone map mu -> w.d (the KKT form of the minimal-L2 step)."""
    needed = b - w @ p
    low, high = (0.0, 1e6) if needed > 0 else (-1e6, 0.0)
    for _ in range(200):
        mid = (low + high) / 2
        if w @ np.clip(mid * w, -p, 1 - p) < needed:
            low = mid
        else:
            high = mid
    return np.clip(high * w, -p, 1 - p)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_is_feasible_and_no_feasible_point_is_closer(norm):
    rng = np.random.default_rng(0)
    p, w = rng.uniform(size=(60, 6)), rng.normal(size=(60, 6))
    w[:5, 0] = 0.0  # coordinates the hyperplane does not constrain
    b = np.sum(w * p, 1) + rng.normal(scale=0.3, size=60)
    d = project_onto_hyperplane(p, w, b, norm)
    size = np.abs(d).max(1) if norm == "linf" else np.sqrt((d**2).sum(1))
    assert np.all(p + d >= -1e-12) and np.all(p + d <= 1 + 1e-12)
    feasible = np.abs(np.sum(w * (p + d), 1) - b) < 1e-9
    assert feasible.mean() > 0.8
    for i in np.flatnonzero(feasible)[:12]:
        if norm == "l2":
            np.testing.assert_allclose(d[i], _reference_l2_projection(p[i], w[i], b[i]), atol=1e-9)
        candidates = rng.uniform(size=(20000, 6))
        on_plane = candidates - np.outer(candidates @ w[i] - b[i], w[i]) / (w[i] @ w[i])
        inside = np.all((on_plane >= 0) & (on_plane <= 1), axis=1)
        if inside.any():
            steps = on_plane[inside] - p[i]
            sizes = np.abs(steps).max(1) if norm == "linf" else np.sqrt((steps**2).sum(1))
            assert sizes.min() >= size[i] - 1e-9


@pytest.mark.parametrize(
    "norm,eps,targeted", [("linf", 2 / 255, True), ("l2", 0.2, True), ("linf", 2 / 255, False), ("l2", 0.2, False)]
)
def test_fab_finds_close_adversarials_inside_the_ball(undefended, norm, eps, targeted):
    network, x, y = undefended
    # Untargeted FAB linearizes every class each step: fewer points keep the test fast.
    x, y = (x, y) if targeted else (x[:32], y[:32])
    attacker = Attacker(network, progress=False)
    order = np.argsort(attacker.logits(x), -1)
    targets = [order[:, -rank] for rank in range(2, 5)] if targeted else None
    x_adv, robust = fab(
        attacker.logits_fn, attacker.predict, x, y, threat_model(norm, eps), 20, targets_by_rank=targets
    )
    broken = ~robust
    assert broken.mean() > 0.5
    delta = (x_adv - x).reshape(len(x), -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta**2).sum(1))
    assert size.max() <= eps * (1 + 1e-6)
    assert np.all(attacker.predict(x_adv[broken]) != y[broken])
    np.testing.assert_array_equal(x_adv[robust], x[robust])


def test_square_l2_eta_pattern_matches_the_reference_construction():
    from robustcl.attacks.square import _eta, _rectangle_profile

    # eta_rectangles(1, 3): ring 0 puts 1 at the centre, ring 1 adds 1/4 to the whole row.
    upper = np.array([[0.25, 1.25, 0.25]])
    # eta_rectangles(2, 3): centre (1, 1) gets 1, ring 1 adds 1/4 to the whole 2 x 3 block.
    lower = np.array([[0.25, 0.25, 0.25], [0.25, 1.25, 0.25]])
    np.testing.assert_allclose(_rectangle_profile(1, 3), upper / np.linalg.norm(upper))
    np.testing.assert_allclose(_rectangle_profile(2, 3), lower / np.linalg.norm(lower))
    expected = np.concatenate([upper / np.linalg.norm(upper), -lower / np.linalg.norm(lower)])
    expected /= np.linalg.norm(expected)
    patterns = [_eta(np.random.default_rng(seed), 3) for seed in range(8)]
    for pattern in patterns:
        assert np.allclose(pattern, expected, atol=1e-6) or np.allclose(pattern, expected.T, atol=1e-6)
    assert any(np.allclose(p, expected.T, atol=1e-6) for p in patterns)  # transposed half the time


def test_square_l2_proposals_keep_norm_eps_and_touch_only_two_windows():
    from robustcl.attacks.square import _L2Proposals

    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, size=(5, 32, 32, 3)).astype("float32")
    eps = 0.5
    proposals = _L2Proposals(rng, x.shape, eps)
    x_best = proposals.start(x)
    np.testing.assert_allclose(np.sqrt(((x_best - x) ** 2).sum((1, 2, 3))), eps, rtol=1e-5)
    # The start is a 5 x 5 grid of 6 x 6 windows from pixel 1: the border row/column is untouched.
    assert np.all(x_best[:, 0] == x[:, 0]) and np.all(x_best[:, :, 31] == x[:, :, 31])
    for p in (0.8, 0.1, 0.01):
        x_new = proposals.propose(x, x_best, p)
        np.testing.assert_allclose(np.sqrt(((x_new - x) ** 2).sum((1, 2, 3))), eps, rtol=1e-5)
        # Before the final rescale only two side x side windows change; the rescale is common
        # to all pixels, so the direction elsewhere is unchanged.
        side = max(int(round(np.sqrt(p * 32 * 32))), 3)
        side = min(side + 1 - side % 2, 32)
        moved = np.abs(x_new - x_best).sum(-1) > 1e-3 * eps
        assert moved.sum((1, 2)).max() <= 2 * side * side
    with pytest.raises(ValueError, match="5 x 5"):
        _L2Proposals(rng, (1, 4, 4, 3), eps)


@pytest.mark.parametrize("norm,eps", [("linf", 4 / 255), ("l2", 1.5)])
def test_square_breaks_the_undefended_model_from_scores_alone(undefended, norm, eps):
    network, x, y = undefended
    attacker = Attacker(network, progress=False)
    x_adv, still, queries = square(attacker.margins, x[:64], y[:64], threat_model(norm, eps), n_queries=300)
    assert still.mean() < 0.2, still.mean()
    assert np.all(attacker.predict(x_adv[~still]) != y[:64][~still])
    assert queries.max() <= 301 and queries.min() >= 1
    # Any scorer of logits (a model server) attacks as the margin fused into the forward pass does.
    by_logits = square(margins_of(attacker.logits), x[:64], y[:64], threat_model(norm, eps), n_queries=300)
    np.testing.assert_array_equal(by_logits[0], x_adv)
    np.testing.assert_array_equal(by_logits[2], queries)
    with pytest.raises(ValueError, match="norms"):
        square(attacker.margins, x[:2], y[:2], types.SimpleNamespace(norm="l1", eps=eps))


def test_a_new_attack_is_one_registration(undefended):
    from robustcl.evaluation import attacks as eval_attacks
    from robustcl.evaluation.suite import AttackResult

    # A random-noise "attack" at the ball's corners, registered from outside the package.
    @eval_attacks.register("zz-corner-noise", "uniform corners of the L-inf ball", norms=("linf",))
    def corner_noise(attacker, x, y, clean_correct, plan, seed, log):
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=x.shape).astype(np.float32)
        x_adv = np.clip(x + plan.eps * signs, 0, 1)
        return [
            AttackResult(
                "zz-corner-noise",
                plan.norm,
                plan.eps,
                1,
                1,
                seed,
                clean_correct & (attacker.predict(x_adv) == y),
                x_adv,
                0.0,
            )
        ]

    network, x, y = undefended
    report = evaluate(
        network,
        x[:32],
        y[:32],
        [str(i) for i in range(10)],
        eps=8 / 255,
        attacks=("pgd", "zz-corner-noise"),
        pgd_steps=3,
        sweep=False,
        progress=False,
    )
    rows = {row["attack"]: row for row in report["attacks"]}
    assert set(rows) == {"pgd", "zz-corner-noise"}
    assert rows["zz-corner-noise"]["max_perturbation"] <= 8 / 255 + 1e-6
    with pytest.raises(ConfigError, match="--attacks: zz-corner-noise supports linf, not l2"):
        eval_attacks.check("attacks", ("zz-corner-noise",), "l2")
    with pytest.raises(ConfigError, match=r"--attacks: unknown deepfool; known: autoattack, cw"):
        eval_attacks.check("attacks", ("pgd", "deepfool"))
