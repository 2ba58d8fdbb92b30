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
The model is only queried through `logits_fn` (inference mode, logits out).
"""

import numpy as np
import tensorflow as tf

from robustcl.attacks.objectives import dlr_per_example, dlr_targeted_per_example
from robustcl.losses import cross_entropy_per_example
from robustcl.registry import Registry

LOSSES = Registry("APGD loss", ("ce", "dlr", "dlr-targeted"))


def _expand(v, x):
    return tf.reshape(v, [-1] + [1] * (len(x.shape) - 1))


def make_loss_and_grad(logits_fn, loss):
    """tf.function (x, y, target) -> (logits, per-example loss, d sum(loss) / dx)."""
    LOSSES.check(loss)

    @tf.function(reduce_retracing=True)
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
        return logits, values, tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    return loss_and_grad


def expectation_over_transformation(loss_and_grad, eot_iterations):
    """loss_and_grad with its gradient averaged over `eot_iterations` calls (each call draws the
    model's randomness anew); logits and loss are the last call's, as in the reference."""
    if eot_iterations == 1:
        return loss_and_grad

    def averaged(x, y, target):
        total = None
        for _ in range(eot_iterations):
            logits, values, grad = loss_and_grad(x, y, target)
            total = grad if total is None else total + grad
        return logits, values, total / float(eot_iterations)

    return averaged


def apgd_single_run(loss_and_grad, x, y, threat, n_iter=100, rho=0.75, target=None, seed=(0, 0)):
    """One APGD run in `threat` (a threat model). Returns (x_best_adv, still_correct [B] bool, best
    loss [B])."""
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.convert_to_tensor(y, tf.int32)
    target = y if target is None else tf.convert_to_tensor(target, tf.int32)
    batch = int(x.shape[0])
    eps = threat.eps
    x_adv = tf.clip_by_value(x + eps * threat.unit(threat.noise(tf.shape(x), seed)), 0.0, 1.0)
    x_best, x_best_adv = x_adv, x_adv

    check_first = max(int(0.22 * n_iter), 1)
    check_min = max(int(0.06 * n_iter), 1)
    check_decrease = max(int(0.03 * n_iter), 1)

    logits, loss_values, grad = loss_and_grad(x_adv, y, target)
    grad_best = grad
    correct = np.array(tf.argmax(logits, -1, output_type=tf.int32) == y)
    loss_best = loss_values.numpy()
    loss_steps = np.zeros((n_iter, batch), np.float32)
    step = np.full(batch, 2.0 * eps, np.float32)
    x_adv_old = x_adv
    interval, since_check = check_first, 0
    loss_best_last_check = loss_best.copy()
    reduced_last_check = np.ones(batch, bool)

    for i in range(n_iter):
        momentum = 0.75 if i > 0 else 1.0
        step_t = _expand(tf.constant(step), x)
        previous_move = x_adv - x_adv_old
        x_adv_old = x_adv
        z = threat.project(x, x_adv + step_t * threat.ascent_direction(grad))
        x_adv = threat.project(x, x_adv + (z - x_adv) * momentum + previous_move * (1 - momentum))

        logits, loss_values, grad = loss_and_grad(x_adv, y, target)
        predicted_correct = np.asarray(tf.argmax(logits, -1, output_type=tf.int32) == y)
        fooled_now = ~predicted_correct
        correct &= predicted_correct
        x_best_adv = tf.where(_expand(tf.constant(fooled_now), x), x_adv, x_best_adv)

        values = loss_values.numpy()
        loss_steps[i] = values
        improved = values > loss_best
        x_best = tf.where(_expand(tf.constant(improved), x), x_adv, x_best)
        grad_best = tf.where(_expand(tf.constant(improved), x), grad, grad_best)
        loss_best = np.where(improved, values, loss_best)

        since_check += 1
        if since_check == interval:
            # Rises of the loss over the last `interval` steps; at the first checkpoint the
            # reference compares step 0 with index -1 (a not yet written zero row): kept as is.
            increases = sum(loss_steps[i - c] > loss_steps[i - c - 1] for c in range(interval))
            oscillating = increases <= interval * rho
            no_improvement = ~reduced_last_check & (loss_best_last_check >= loss_best)
            reduce = oscillating | no_improvement
            reduced_last_check = reduce.copy()
            loss_best_last_check = loss_best.copy()
            if reduce.any():
                step = np.where(reduce, step / 2.0, step).astype(np.float32)
                mask = _expand(tf.constant(reduce), x)
                x_adv = tf.where(mask, x_best, x_adv)
                grad = tf.where(mask, grad_best, grad)
            since_check = 0
            interval = max(interval - check_decrease, check_min)
    return x_best_adv, correct, loss_best


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
    loss_and_grad=None,
    eot_iterations=1,
):
    """APGD in `threat` with restarts on the examples still classified correctly (restart r draws
    its start from seed (seed, r)).

    Returns (x_adv, correct [B] bool): x_adv misclassified where `correct` is False.
    """
    loss_and_grad = expectation_over_transformation(
        loss_and_grad or make_loss_and_grad(logits_fn, loss), eot_iterations
    )
    x = tf.convert_to_tensor(x, tf.float32)
    y = np.asarray(y, np.int32)
    logits = logits_fn(x)
    correct = np.asarray(tf.argmax(logits, -1, output_type=tf.int32)).astype(np.int32) == y
    x_adv = tf.identity(x)
    for restart in range(n_restarts):
        idx = np.flatnonzero(correct)
        if not len(idx):
            break
        run_targets = None if targets is None else np.asarray(targets)[idx]
        adv, still, _ = apgd_single_run(
            loss_and_grad, tf.gather(x, idx), y[idx], threat, n_iter, target=run_targets, seed=(seed, restart)
        )
        fooled = idx[~still]
        if len(fooled):
            x_adv = tf.tensor_scatter_nd_update(x_adv, fooled[:, None], tf.gather(adv, np.flatnonzero(~still)))
            correct[fooled] = False
    return x_adv, correct
