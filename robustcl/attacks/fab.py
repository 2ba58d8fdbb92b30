"""FAB, targeted, L-inf (Croce & Hein, ICML 2020), as AutoAttack runs it ("fab-t").

Follows fra31/auto-attack (fab_base.py, targeted branch) for one restart without random start:
for target t, each iteration linearizes f_t - f_y at the current point x1, projects both x1 and the
original x0 onto that hyperplane intersected with [0, 1]^d (minimal L-inf step), and moves to
    x1 = clip((x1 + eta d1)(1 - alpha) + (x0 + eta d2) alpha),  alpha = min(max(a1/(a1+a2), 0), alpha_max)
with a1, a2 the L-inf sizes of d1, d2. Whenever x1 is misclassified, it is kept if closer to x0
than the best so far, and x1 is pulled back towards x0 by beta. A point counts as broken if the
closest adversarial found is within eps. Defaults: 100 iterations, eta 1.05, beta 0.9,
alpha_max 0.1.

The projection: min ||d||_inf subject to w.(p + d) = b and 0 <= p + d <= 1. The reference solves it
with a sort-based routine; here the same minimizer is found by bisection on t, where
d_i = s_i min(t, room_i), s_i the sign that moves w.(p + d) towards b and room_i the distance to the
box in that direction: sum_i |w_i| min(t, room_i) is nondecreasing in t.
"""

import numpy as np
import tensorflow as tf


def project_linf(points, w, b, iterations=60):
    """Minimal L-inf steps d [N, D] (float64) onto {z : w.z = b} within [0, 1]^D."""
    points = points.astype(np.float64)
    w = w.astype(np.float64)
    needed = b - np.sum(w * points, axis=1)  # w.d must equal this
    direction = np.sign(needed)[:, None] * np.sign(w)
    room = np.where(direction > 0, 1.0 - points, points)
    weight = np.abs(w)
    reachable = np.sum(weight * room, axis=1)
    target = np.minimum(np.abs(needed), reachable)  # infeasible: go as far as the box allows
    low, high = np.zeros(len(points)), np.ones(len(points))
    for _ in range(iterations):
        mid = (low + high) / 2
        reached = np.sum(weight * np.minimum(mid[:, None], room), axis=1)
        low, high = np.where(reached < target, mid, low), np.where(reached < target, high, mid)
    return direction * np.minimum(high[:, None], room)


def make_difference_and_grad(logits_fn):
    @tf.function(reduce_retracing=True)
    def difference_and_grad(x, y, target):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = tf.cast(logits_fn(x), tf.float32)
            classes = tf.shape(logits)[-1]
            # One-hot masks: tf.gather(batch_dims=1) with int64 indices passes no gradient.
            direction = tf.one_hot(tf.cast(target, tf.int32), classes) - tf.one_hot(tf.cast(y, tf.int32), classes)
            diff = tf.reduce_sum(logits * direction, axis=-1)
            total = tf.reduce_sum(diff)  # inside the tape: an op outside it is not recorded
        grad = tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return logits, diff, grad

    return difference_and_grad


def fab_targeted_single_run(difference_and_grad, predict, x, y, target, n_iter=100, eta=1.05,
                            beta=0.9, alpha_max=0.1):
    """Returns (closest adversarial found [N, ...], its L-inf distance [N]; 1e10 where none)."""
    shape = x.shape
    n = len(x)
    x0 = x.reshape(n, -1).astype(np.float64)
    x1 = x0.copy()
    best = x.copy()
    distance = np.full(n, 1e10)
    y_t, target_t = tf.constant(y, tf.int32), tf.constant(np.asarray(target, np.int32))
    for _ in range(n_iter):
        _, diff, grad = difference_and_grad(tf.constant(x1.reshape(shape), tf.float32), y_t, target_t)
        w = grad.numpy().reshape(n, -1).astype(np.float64)
        b = -diff.numpy().astype(np.float64) + np.sum(w * x1, axis=1)
        steps = project_linf(np.concatenate([x1, x0]), np.concatenate([w, w]), np.concatenate([b, b]))
        d1, d2 = steps[:n], steps[n:]
        a1 = np.maximum(np.abs(d1).max(1), 1e-8)[:, None]
        a2 = np.maximum(np.abs(d2).max(1), 1e-8)[:, None]
        alpha = np.minimum(np.maximum(a1 / (a1 + a2), 0.0), alpha_max)
        x1 = np.clip((x1 + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha, 0.0, 1.0)
        adversarial = predict(x1.reshape(shape).astype(np.float32)) != y
        if adversarial.any():
            t = np.abs(x1 - x0).max(1)
            closer = adversarial & (t < distance)
            best[closer] = x1[closer].reshape((-1,) + shape[1:]).astype(np.float32)
            distance[closer] = t[closer]
            x1[adversarial] = x0[adversarial] + (x1[adversarial] - x0[adversarial]) * beta
    return best, distance


def fab_targeted(logits_fn, predict, x, y, eps, targets_by_rank, n_iter=100, difference_and_grad=None):
    """FAB-T over the given target lists (one array of targets per target rank), each on the points
    still robust. Returns (x_adv, robust [N] bool); x_adv is within eps where robust is False."""
    difference_and_grad = difference_and_grad or make_difference_and_grad(logits_fn)
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    robust = predict(x) == y
    x_adv = x.copy()
    for targets in targets_by_rank:
        idx = np.flatnonzero(robust)
        if not len(idx):
            break
        adv, distance = fab_targeted_single_run(difference_and_grad, predict, x[idx], y[idx],
                                                np.asarray(targets)[idx], n_iter)
        # The reference's test: misclassified and within eps (float32 rounding of the stored point).
        broken = (predict(adv) != y[idx]) & (np.abs(adv - x[idx]).reshape(len(idx), -1).max(1) <= eps)
        x_adv[idx[broken]] = adv[broken]
        robust[idx[broken]] = False
    return x_adv, robust
