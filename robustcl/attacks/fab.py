"""FAB (Croce & Hein, ICML 2020), L-inf and L2, untargeted ("fab") and targeted ("fab-t") as
AutoAttack runs them.

Follows fra31/auto-attack (fab_base.py). Each iteration linearizes f_t - f_y at the current point
x1 (targeted: t is the given target; untargeted: the class whose linearized boundary is closest,
min_k |f_k - f_y| / ||grad(f_k - f_y)||_dual), projects both x1 and the
original x0 onto that hyperplane intersected with [0, 1]^d (the step of minimal norm), and moves to
    x1 = clip((x1 + eta d1)(1 - alpha) + (x0 + eta d2) alpha),  alpha = min(max(a1/(a1+a2), 0), alpha_max)
with a1, a2 the norms of d1, d2. Whenever x1 is misclassified, it is kept if closer to x0 than the
best so far, and x1 is pulled back towards x0 by beta. A point counts as broken if the closest
adversarial found is within eps. Defaults: 100 iterations, eta 1.05, beta 0.9, alpha_max 0.1.
The first restart starts at x; each further one at x + eps / 2 * unit(noise) (the threat model's
noise and unit, as APGD's start), clipped to [0, 1].

The projection: min ||d|| subject to w.(p + d) = b and 0 <= p + d <= 1. For both norms the minimizer
moves each coordinate in the direction s_i that brings w.(p + d) towards b, by
    L-inf: |d_i| = min(t, room_i)          L2: |d_i| = min(t |w_i|, room_i)
(room_i: distance to the box in that direction; for L2 the KKT conditions give d = clip(-lambda w)),
with the smallest t >= 0 that reaches b. The reached value g(t) is piecewise linear, nondecreasing
and concave in t, with breakpoints where coordinates hit the box. The reference's routines sort the
breakpoints; here Newton's method on g from t = 0 solves it exactly without a sort: by concavity
every step stays at or below the solution, and a step taken on the solution's linear piece lands on
it, so a row is done after as many steps as pieces it crosses (3 or 4 in FAB-T on CIFAR-10, where
the sort made the projection 2.5x slower; rows still open after `_NEWTON_STEPS` are solved by
sorting).
Where the box cannot reach the hyperplane, every coordinate moves to the box (the reference does
the same). L2 ignores coordinates with |w_i| < 1e-8, as the reference does.
"""

import concurrent.futures
import functools
import os

import numpy as np
import tensorflow as tf

from robustcl.attacks.threat import THREATS, perturbation_norms

NORMS = tuple(THREATS)


def project_onto_hyperplane(points, w, b, norm):
    """Minimal-norm steps d [N, D] (float64) onto {z : w.z = b} within [0, 1]^D.

    Rows are independent: a large batch is split over the cores this process may use (NumPy's
    arithmetic releases the GIL). The projection is most of FAB's own work per iteration."""
    if norm not in NORMS:
        raise ValueError(f"FAB supports norms {NORMS}, got {norm!r}")
    points = np.asarray(points, np.float64)
    w = np.asarray(w, np.float64)
    b = np.asarray(b, np.float64)
    parts = min(_CORES, len(points))
    if parts < 2 or points.size < _PARALLEL_MIN_SIZE:
        return _project_rows(points, w, b, norm)
    splits = zip(np.array_split(points, parts), np.array_split(w, parts), np.array_split(b, parts))
    return np.concatenate(list(_thread_pool().map(lambda part: _project_rows(*part, norm), splits)))


# Below this many values a batch is projected in one piece: a thread's hand-off costs more than it saves.
_PARALLEL_MIN_SIZE = 1 << 16
# The cores this process may run on (sched_getaffinity is Linux's; elsewhere all of them).
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def _thread_pool():
    return concurrent.futures.ThreadPoolExecutor(_CORES, thread_name_prefix="fab-projection")


# Newton steps before a row still open is solved by sorting its breakpoints (FAB-T on CIFAR-10: 3-14).
_NEWTON_STEPS = 32


def _project_rows(points, w, b, norm):
    needed = b - np.einsum("ij,ij->i", w, points)  # w.d must equal this
    if norm == "l2":
        w = np.where(np.abs(w) < 1e-8, 0.0, w)
    direction = np.sign(needed)[:, None] * np.sign(w)
    room = np.where(direction > 0, 1.0 - points, points)
    weight = np.abs(w)
    # |d_i| = min(t * rate_i, room_i), so g(t) = sum_i weight_i min(t rate_i, room_i); an unsaturated
    # coordinate adds weight_i * rate_i to g's slope. A zero rate only comes with a zero weight.
    rate = None if norm == "linf" else weight
    slope_of = weight if norm == "linf" else np.square(weight)
    target = np.minimum(np.abs(needed), np.einsum("ij,ij->i", weight, room))
    t = np.zeros(len(points))
    reached = np.zeros(len(points))
    slope = slope_of.sum(axis=1)  # an upper bound at t = 0 (coordinates with no room), still safe
    open_rows = np.flatnonzero(slope > 0)
    for _ in range(_NEWTON_STEPS):
        if not len(open_rows):
            break
        rows_t = t[open_rows] + (target[open_rows] - reached[open_rows]) / slope[open_rows]
        rows_room = room[open_rows]
        moved = rows_t[:, None] if rate is None else rows_t[:, None] * rate[open_rows]
        rows_reached = np.einsum("ij,ij->i", weight[open_rows], np.minimum(moved, rows_room))
        rows_slope = np.einsum("ij,ij->i", slope_of[open_rows], moved < rows_room)
        # Done: reached, or the step stayed on one linear piece (then it landed on the solution).
        done = (rows_reached >= target[open_rows]) | (rows_slope == slope[open_rows]) | (rows_slope == 0)
        t[open_rows], reached[open_rows], slope[open_rows] = rows_t, rows_reached, rows_slope
        open_rows = open_rows[~done]
    if len(open_rows):
        t[open_rows] = _solve_by_sorting(
            room[open_rows], weight[open_rows], None if rate is None else rate[open_rows], target[open_rows]
        )
    moved = t[:, None] if rate is None else t[:, None] * rate
    return direction * np.minimum(moved, room)


def _solve_by_sorting(room, weight, rate, target):
    """The smallest t with g(t) = target, g's breakpoints sorted (the reference's way)."""
    rate = np.ones_like(weight) if rate is None else rate
    breakpoint_ = np.where(rate > 0, room / np.where(rate > 0, rate, 1.0), 0.0)
    order = np.argsort(breakpoint_, axis=1)
    sorted_breaks = np.take_along_axis(breakpoint_, order, axis=1)
    saturated = np.cumsum(np.take_along_axis(weight * room, order, axis=1), axis=1)
    slope_all = np.sum(weight * rate, axis=1, keepdims=True)
    slope_after = slope_all - np.cumsum(np.take_along_axis(weight * rate, order, axis=1), axis=1)
    reached_at_break = saturated + sorted_breaks * slope_after
    # Segment k: between breakpoints k-1 and k, where the value first reaches the target.
    k = np.minimum(np.sum(reached_at_break < target[:, None], axis=1), room.shape[1] - 1)
    rows = np.arange(len(room))
    saturated_before = np.where(k > 0, saturated[rows, k - 1], 0.0)
    slope = np.where(k > 0, slope_after[rows, k - 1], slope_all[:, 0])
    floor = np.where(k > 0, sorted_breaks[rows, k - 1], 0.0)
    t = np.where(slope > 0, (target - saturated_before) / np.where(slope > 0, slope, 1.0), floor)
    return np.maximum(t, floor)


def make_difference_and_grad(logits_fn):
    """tf.function (x, y, target) -> (logits, f_target - f_y, its gradient): FAB-T's linearization."""

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


def make_differences_and_grads(logits_fn):
    """tf.function x -> (logits [N, C], d logits / dx [N, C, ...]): untargeted FAB's linearization
    of every class (one backward pass per class; the examples are independent in inference mode)."""

    @tf.function(reduce_retracing=True)
    def differences_and_grads(x):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            logits = tf.cast(logits_fn(x), tf.float32)
            per_class = [tf.reduce_sum(logits[:, k]) for k in range(logits.shape[-1])]
        grads = [tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO) for total in per_class]
        del tape
        return logits, tf.stack(grads, axis=1)

    return differences_and_grads


def _untargeted_linearization(differences_and_grads, threat):
    """(x1, y, target) -> (diff, w) of the class with the closest linearized boundary."""

    def linearize(x1, y, _):
        logits, grads = differences_and_grads(x1)
        logits, grads = logits.numpy().astype(np.float64), grads.numpy()
        n, classes = logits.shape
        grads = grads.reshape(n, classes, -1).astype(np.float64)
        rows = np.arange(n)
        df = logits - logits[rows, y][:, None]
        dg = grads - grads[rows, y][:, None]
        df[rows, y] = 1e10  # never the true class
        chosen = np.argmin(np.abs(df) / (threat.dual_norm(dg) + 1e-12), axis=1)
        return df[rows, chosen], dg[rows, chosen]

    return linearize


def _targeted_linearization(difference_and_grad):
    def linearize(x1, y, target):
        _, diff, grad = difference_and_grad(
            tf.constant(x1, tf.float32), tf.constant(y, tf.int32), tf.constant(target, tf.int32)
        )
        return diff.numpy().astype(np.float64), grad.numpy().reshape(len(y), -1).astype(np.float64)

    return linearize


def fab_single_run(
    linearize, predict, x, y, threat, n_iter=100, target=None, start=None, eta=1.05, beta=0.9, alpha_max=0.1
):
    """One FAB run from `start` (default x). Returns (closest adversarial found [N, ...], its
    distance in the threat model's norm [N]; 1e10 where none)."""
    shape = x.shape
    n = len(x)
    norm = threat.norm
    x0 = x.reshape(n, -1).astype(np.float64)
    x1 = x0.copy() if start is None else np.asarray(start, np.float64).reshape(n, -1)
    best = x.copy()
    closest = np.full(n, 1e10)
    for _ in range(n_iter):
        diff, w = linearize(x1.reshape(shape).astype(np.float32), y, target)
        b = -diff + np.sum(w * x1, axis=1)
        steps = project_onto_hyperplane(np.concatenate([x1, x0]), np.concatenate([w, w]), np.concatenate([b, b]), norm)
        sizes = np.maximum(perturbation_norms(np.zeros_like(steps), steps, norm), 1e-8)[:, None]
        d1, d2, a1, a2 = steps[:n], steps[n:], sizes[:n], sizes[n:]
        alpha = np.minimum(np.maximum(a1 / (a1 + a2), 0.0), alpha_max)
        x1 = np.clip((x1 + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha, 0.0, 1.0)
        adversarial = predict(x1.reshape(shape).astype(np.float32)) != y
        if adversarial.any():
            t = perturbation_norms(x0, x1, norm)
            closer = adversarial & (t < closest)
            best[closer] = x1[closer].reshape((-1,) + shape[1:]).astype(np.float32)
            closest[closer] = t[closer]
            x1[adversarial] = x0[adversarial] + (x1[adversarial] - x0[adversarial]) * beta
    return best, closest


def fab(logits_fn, predict, x, y, threat, n_iter=100, n_restarts=1, targets_by_rank=None, seed=0, linearization=None):
    """FAB in `threat`: untargeted, or FAB-T over `targets_by_rank` (one array of targets per target
    rank, each rank tried in turn), every run on the points still robust; restart r > 0 starts
    from a random point (seed (seed, r)). Returns (x_adv, robust [N] bool); x_adv is within eps
    where robust is False. `linearization`: a compiled make_difference_and_grad (targeted) or
    make_differences_and_grads (untargeted) to reuse across calls."""
    if threat.norm not in NORMS:
        raise ValueError(f"FAB supports norms {NORMS}, got {threat.norm!r}")
    targeted = targets_by_rank is not None
    if targeted:
        linearize = _targeted_linearization(linearization or make_difference_and_grad(logits_fn))
    else:
        linearize = _untargeted_linearization(linearization or make_differences_and_grads(logits_fn), threat)
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    robust = predict(x) == y
    x_adv = x.copy()
    for targets in targets_by_rank if targeted else [None]:
        for restart in range(n_restarts):
            idx = np.flatnonzero(robust)
            if not len(idx):
                break
            start = None
            if restart > 0:
                noise = threat.unit(threat.noise(x[idx].shape, (seed, restart))).numpy()
                start = np.clip(x[idx] + 0.5 * threat.eps * noise, 0.0, 1.0)
            adv, _ = fab_single_run(
                linearize,
                predict,
                x[idx],
                y[idx],
                threat,
                n_iter,
                None if targets is None else np.asarray(targets)[idx],
                start,
            )
            # The reference's test: misclassified and within eps (float32 rounding of the stored point).
            broken = (predict(adv) != y[idx]) & (perturbation_norms(x[idx], adv, threat.norm) <= threat.eps)
            x_adv[idx[broken]] = adv[broken]
            robust[idx[broken]] = False
    return x_adv, robust
