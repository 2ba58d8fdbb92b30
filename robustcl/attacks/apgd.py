"""Auto-PGD (Croce & Hein, ICML 2020) for L-inf and L2, untargeted (CE, DLR) and targeted (DLR).

Follows the reference implementation (fra31/auto-attack, autopgd_base.py):
  - start: x + eps * t / ||t|| (t uniform in [-1, 1]^d for L-inf, Gaussian for L2), clipped to [0, 1];
    the threat model (robustcl.attacks.threat) supplies t, the norm, the ascent direction and the
    projection, as it does for PGD;
  - step size 2 * eps per example; momentum 0.75 after the first step:
      z = P(x_k + eta * dir(grad)),  x_{k+1} = P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}));
  - checkpoints: the first after max(0.22 n, 1) iterations, each next interval shorter by
    max(0.03 n, 1) down to max(0.06 n, 1). At a checkpoint an example's step size is halved and it
    restarts from its best point if the loss rose in at most 75% of the steps since the last one, or
    if the step was not halved last time and the best loss has not improved;
  - the returned point of an example is one that is misclassified if any iterate was, else the
    start; restarts run on the examples not yet misclassified.
  - EOT (for randomized models, AutoAttack's version "rand"): each gradient is the mean over
    `eot_iterations` forward/backward passes, the logits and loss those of the last pass.
The model is only queried through `logits_fn` (inference mode, logits out). A run (every
iteration, checkpoint and EOT pass) is one traced function, `make_apgd_run`: no Python between
iterations, one trace per setting reused across batches, restarts and targets.
"""

import numpy as np
import tensorflow as tf

from robustcl.attacks.objectives import dlr_per_example, dlr_targeted_per_example
from robustcl.losses import cross_entropy_per_example
from robustcl.registry import Registry

LOSSES = Registry("APGD loss", ("ce", "dlr", "dlr-targeted"))


def _loss_and_grad(logits_fn, loss):
    """(x, y, target) -> (logits, per-example loss, d sum(loss) / dx), to be traced."""
    LOSSES.check(loss)

    def loss_and_grad(x, y, target):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = tf.cast(logits_fn(x), tf.float32)
            if loss == "ce":
                values = cross_entropy_per_example(y, logits)
            elif loss == "dlr":
                values = dlr_per_example(logits, y)
            else:
                values = dlr_targeted_per_example(logits, y, target)
            total = tf.reduce_sum(values)
        grad = tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        # A SavedModel signature's outputs and gradient come back with less static shape than x
        # has: the run's loop needs each to keep the shape it started with.
        batch = x.shape[:1]
        return (
            tf.ensure_shape(logits, batch + [None]),
            tf.ensure_shape(values, batch),
            tf.ensure_shape(grad, x.shape),
        )

    return loss_and_grad


def checkpoint_intervals(n_iter):
    """[n_iter] ints: at iteration i, the length of the interval a checkpoint closes there (0: no
    checkpoint). The first after max(0.22 n, 1) iterations, each next shorter by max(0.03 n, 1)
    down to max(0.06 n, 1)."""
    check_first = max(int(0.22 * n_iter), 1)
    check_min = max(int(0.06 * n_iter), 1)
    check_decrease = max(int(0.03 * n_iter), 1)
    out = np.zeros(n_iter, np.int32)
    interval, at = check_first, check_first - 1
    while at < n_iter:
        out[at] = interval
        interval = max(interval - check_decrease, check_min)
        at += interval
    return out


def make_apgd_run(logits_fn, loss, threat, n_iter=100, rho=0.75, eot_iterations=1):
    """One APGD run in `threat` as one traced function (the whole loop in the graph: a Python loop
    would dispatch some twenty operations per iteration). Call it with (x, y, target, seed [2]
    int64); it returns (x_best_adv, still_correct [B] bool, best loss [B]).

    With `eot_iterations` > 1 (EOT, AutoAttack's version "rand"), each gradient is the mean over
    that many forward/backward passes, the logits and loss those of the last pass."""
    single = _loss_and_grad(logits_fn, loss)
    intervals = tf.constant(checkpoint_intervals(n_iter))

    def loss_and_grad(x, y, target):
        logits, values, total = single(x, y, target)
        for _ in range(eot_iterations - 1):  # each pass draws the model's randomness anew
            logits, values, grad = single(x, y, target)
            total += grad
        return logits, values, total / float(eot_iterations)

    @tf.function(reduce_retracing=True)
    def run(x, y, target, seed):
        eps = threat.eps
        batch = tf.shape(x)[0]
        expand = lambda v: tf.reshape(v, [-1] + [1] * (len(x.shape) - 1))  # noqa: E731
        x_adv = tf.clip_by_value(x + eps * threat.unit(threat.noise(tf.shape(x), seed)), 0.0, 1.0)
        logits, loss_values, grad = loss_and_grad(x_adv, y, target)
        correct = tf.argmax(logits, -1, output_type=tf.int32) == y
        state = dict(
            x_adv=x_adv,
            x_adv_old=x_adv,
            x_best=x_adv,
            x_best_adv=x_adv,
            grad=grad,
            grad_best=grad,
            correct=correct,
            loss_best=loss_values,
            loss_steps=tf.zeros([n_iter, batch], tf.float32),
            step=tf.fill([batch], tf.constant(2.0 * eps, tf.float32)),
            loss_best_last_check=loss_values,
            reduced_last_check=tf.ones([batch], tf.bool),
        )
        for i in tf.range(n_iter):
            s = dict(state)
            momentum = tf.where(i > 0, 0.75, 1.0)
            previous_move = s["x_adv"] - s["x_adv_old"]
            s["x_adv_old"] = s["x_adv"]
            z = threat.project(x, s["x_adv"] + expand(s["step"]) * threat.ascent_direction(s["grad"]))
            x_adv = threat.project(x, s["x_adv"] + (z - s["x_adv"]) * momentum + previous_move * (1 - momentum))

            logits, values, grad = loss_and_grad(x_adv, y, target)
            predicted_correct = tf.argmax(logits, -1, output_type=tf.int32) == y
            s["correct"] = s["correct"] & predicted_correct
            s["x_best_adv"] = tf.where(expand(~predicted_correct), x_adv, s["x_best_adv"])
            s["loss_steps"] = tf.tensor_scatter_nd_update(s["loss_steps"], [[i]], values[None])
            improved = values > s["loss_best"]
            s["x_best"] = tf.where(expand(improved), x_adv, s["x_best"])
            s["grad_best"] = tf.where(expand(improved), grad, s["grad_best"])
            s["loss_best"] = tf.where(improved, values, s["loss_best"])

            # A checkpoint closes an interval of k iterations here (k = 0: none).
            k = intervals[i]
            # Rises of the loss over the last k steps; at the first checkpoint the reference
            # compares step 0 with index -1 (a not yet written zero row, the last): kept as is.
            rows = i - tf.range(k)
            later = tf.gather(s["loss_steps"], rows)
            earlier = tf.gather(s["loss_steps"], tf.math.floormod(rows - 1, n_iter))
            increases = tf.reduce_sum(tf.cast(later > earlier, tf.float32), axis=0)
            oscillating = increases <= tf.cast(k, tf.float32) * rho
            no_improvement = ~s["reduced_last_check"] & (s["loss_best_last_check"] >= s["loss_best"])
            at_check = k > 0
            reduce = at_check & (oscillating | no_improvement)
            s["reduced_last_check"] = tf.where(at_check, reduce, s["reduced_last_check"])
            s["loss_best_last_check"] = tf.where(at_check, s["loss_best"], s["loss_best_last_check"])
            s["step"] = tf.where(reduce, s["step"] / 2.0, s["step"])
            s["x_adv"] = tf.where(expand(reduce), s["x_best"], x_adv)
            s["grad"] = tf.where(expand(reduce), s["grad_best"], grad)
            state = s
        return state["x_best_adv"], state["correct"], state["loss_best"]

    return run


def apgd(
    logits_fn,
    x,
    y,
    threat,
    n_iter=100,
    n_restarts=1,
    loss="ce",
    targets=None,
    seed=0,
    run=None,
    eot_iterations=1,
):
    """APGD in `threat` with restarts on the examples still classified correctly (restart r draws
    its start from seed (seed, r)). `run`: a make_apgd_run of the same settings to reuse across
    calls (traced once); `logits_fn` serves the first clean forward pass, and makes `run` if none.

    Returns (x_adv, correct [B] bool): x_adv misclassified where `correct` is False.
    """
    run = run or make_apgd_run(logits_fn, loss, threat, n_iter, eot_iterations=eot_iterations)
    x = tf.convert_to_tensor(x, tf.float32)
    y = np.asarray(y, np.int32)
    correct = np.asarray(tf.argmax(logits_fn(x), -1, output_type=tf.int32)) == y
    x_adv = tf.identity(x)
    for restart in range(n_restarts):
        idx = np.flatnonzero(correct)
        if not len(idx):
            break
        run_targets = y[idx] if targets is None else np.asarray(targets, np.int32)[idx]
        adv, still, _ = run(
            tf.gather(x, idx),
            tf.constant(y[idx]),
            tf.constant(run_targets),
            tf.constant([seed, restart], tf.int64),
        )
        still = still.numpy()
        fooled = idx[~still]
        if len(fooled):
            x_adv = tf.tensor_scatter_nd_update(x_adv, fooled[:, None], tf.gather(adv, np.flatnonzero(~still)))
            correct[fooled] = False
    return x_adv, correct
