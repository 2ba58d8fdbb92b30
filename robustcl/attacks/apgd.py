"""Auto-PGD (Croce & Hein, ICML 2020) for L-inf and L2, untargeted (CE, DLR) and targeted (DLR).

Follows the reference implementation (fra31/auto-attack, autopgd_base.py):
  - start: x + eps * t / ||t|| (t uniform in [-1, 1]^d for L-inf, Gaussian for L2), clipped to [0, 1];
  - step size 2 * eps per example; momentum 0.75 after the first step:
      z = P(x_k + eta * dir(grad)),  x_{k+1} = P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}));
  - checkpoints: the first after max(0.22 n, 1) iterations, each next interval shorter by
    max(0.03 n, 1) down to max(0.06 n, 1). At a checkpoint an example's step size is halved and it
    restarts from its best point if the loss rose in at most 75% of the steps since the last one, or
    if the step was not halved last time and the best loss has not improved;
  - the returned point of an example is one that is misclassified if any iterate was, else the
    start; restarts run on the examples not yet misclassified.
The model is only queried through `logits_fn` (inference mode, logits out).
"""

import numpy as np
import tensorflow as tf

from robustcl.attacks.objectives import dlr_per_example, dlr_targeted_per_example
from robustcl.losses import cross_entropy_per_example

LOSSES = ("ce", "dlr", "dlr-targeted")


def _expand(v, x):
    return tf.reshape(v, [-1] + [1] * (len(x.shape) - 1))


def _normalize(t, norm):
    flat = tf.reshape(t, [tf.shape(t)[0], -1])
    if norm == "linf":
        scale = tf.reduce_max(tf.abs(flat), axis=1)
    else:
        scale = tf.sqrt(tf.reduce_sum(tf.square(flat), axis=1))
    return t / _expand(scale + 1e-12, t)


def _project(x, x_adv, norm, eps):
    if norm == "linf":
        return tf.clip_by_value(tf.clip_by_value(x_adv, x - eps, x + eps), 0.0, 1.0)
    delta = x_adv - x
    length = tf.sqrt(tf.reduce_sum(tf.square(tf.reshape(delta, [tf.shape(delta)[0], -1])), axis=1))
    return tf.clip_by_value(x + _normalize(delta, "l2") * _expand(tf.minimum(eps, length), delta), 0.0, 1.0)


def make_loss_and_grad(logits_fn, loss):
    """tf.function (x, y, target) -> (logits, per-example loss, d sum(loss) / dx)."""
    if loss not in LOSSES:
        raise ValueError(f"unknown APGD loss {loss!r}; known: {', '.join(LOSSES)}")

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
        return logits, values, tape.gradient(total, x,
                                             unconnected_gradients=tf.UnconnectedGradients.ZERO)

    return loss_and_grad


def apgd_single_run(loss_and_grad, x, y, norm, eps, n_iter=100, rho=0.75, target=None, seed=(0, 0)):
    """One APGD run. Returns (x_best_adv, still_correct [B] bool, best loss [B])."""
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.convert_to_tensor(y, tf.int32)
    target = y if target is None else tf.convert_to_tensor(target, tf.int32)
    batch = int(x.shape[0])
    if norm == "linf":
        t = tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0)
    else:
        t = tf.random.stateless_normal(tf.shape(x), seed)
    x_adv = tf.clip_by_value(x + eps * _normalize(t, norm), 0.0, 1.0)
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
        direction = tf.sign(grad) if norm == "linf" else _normalize(grad, "l2")
        z = _project(x, x_adv + step_t * direction, norm, eps)
        x_adv = _project(x, x_adv + (z - x_adv) * momentum + previous_move * (1 - momentum), norm, eps)

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


def apgd(logits_fn, x, y, norm, eps, n_iter=100, n_restarts=1, loss="ce", targets=None, seed=0,
         loss_and_grad=None):
    """APGD with restarts on the examples still classified correctly.

    Returns (x_adv, correct [B] bool): x_adv misclassified where `correct` is False.
    """
    loss_and_grad = loss_and_grad or make_loss_and_grad(logits_fn, loss)
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
        adv, still, _ = apgd_single_run(loss_and_grad, tf.gather(x, idx), y[idx], norm, eps, n_iter,
                                        target=run_targets, seed=(seed, restart))
        fooled = idx[~still]
        if len(fooled):
            x_adv = tf.tensor_scatter_nd_update(x_adv, fooled[:, None], tf.gather(adv, np.flatnonzero(~still)))
            correct[fooled] = False
    return x_adv, correct
