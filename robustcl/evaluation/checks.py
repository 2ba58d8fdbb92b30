"""Checks run with every evaluation (after fra31/auto-attack's checks.py, extended).

Hard failures (EvaluationError): an adversarial input outside the eps-ball or [0, 1] or with NaN;
an example robust under an attack but not correct clean. Warnings, each with the figure behind it,
point at gradient masking or a broken evaluation.
"""

import numpy as np
import tensorflow as tf
from scipy import stats

from robustcl.models.keras_models import looks_like_probabilities
from robustcl.attacks.threat import perturbation_norms
from robustcl.losses import cross_entropy_per_example

TOLERANCE = 1e-5  # float32 rounding of x +- eps


class EvaluationError(RuntimeError):
    pass


def check_adversarial_inputs(result, x):
    """Hard check: inside the eps-ball (norm of the result) and [0, 1], and finite."""
    adv = result.x_adv
    if not np.isfinite(adv).all():
        raise EvaluationError(f"{result.name}: {int((~np.isfinite(adv)).sum())} NaN/inf values in adversarial inputs")
    if adv.min() < -TOLERANCE or adv.max() > 1 + TOLERANCE:
        raise EvaluationError(
            f"{result.name}: adversarial inputs outside [0, 1] (min {adv.min():.6g}, max {adv.max():.6g})"
        )
    distance = perturbation_norms(x, adv, result.norm)
    worst = float(distance.max()) if len(distance) else 0.0
    if worst > result.eps * (1 + TOLERANCE) + 1e-7:
        raise EvaluationError(f"{result.name}: perturbation {worst:.6g} exceeds eps {result.eps:.6g} ({result.norm})")


def check_robust_not_above_clean(result, clean_correct):
    bad = int(np.sum(result.robust & ~clean_correct))
    if bad:
        raise EvaluationError(f"{result.name}: {bad} examples robust but misclassified clean")


def warn_probabilities(logits):
    """Outputs that look like probabilities (rows in [0, 1] summing to 1) instead of logits."""
    if looks_like_probabilities(logits):
        return (
            "model outputs look like probabilities (all in [0, 1], rows sum to 1 within 1e-3): "
            "attacks on softmax outputs are weak; the model must return logits"
        )
    return None


def _input_gradient(attacker, x, y):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(cross_entropy_per_example(y, attacker.logits_fn(x)))
    return tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO).numpy()


def warn_nondeterministic(attacker, x, y, max_examples=32, eot=False):
    """Logits or input gradients that change across repeated calls, logits that change with the
    batch size (randomness hides gradients; a model may even keep its outputs exact and randomize
    only its gradients). With `eot` (AutoAttack's rand version, which averages gradients over
    draws) repeated calls may differ, as the reference skips its check_randomized then."""
    x, y = x[:max_examples], y[:max_examples]
    first = attacker.logits(x)
    second = attacker.logits(x)
    one_by_one = np.concatenate([attacker._logits(tf.constant(x[i : i + 1])).numpy() for i in range(len(x))])
    repeat_diff = float(np.abs(first - second).max())
    batch_diff = float(np.abs(first - one_by_one).max())
    scale = max(float(np.abs(first).max()), 1.0)
    messages = []
    if repeat_diff > 1e-4 * scale and not eot:
        messages.append(
            f"logits change across repeated calls (max difference {repeat_diff:.3g}): "
            "a randomized model needs EOT attacks: evaluate it with --version=rand"
        )
    elif not eot:
        grads = [_input_gradient(attacker, x, y) for _ in range(2)]
        grad_diff = float(np.abs(grads[0] - grads[1]).max())
        if grad_diff > 1e-4 * max(float(np.abs(grads[0]).max()), 1e-12):
            messages.append(
                f"input gradients change across repeated calls (max difference "
                f"{grad_diff:.3g}) while the logits do not: randomized gradients need "
                "EOT attacks: evaluate it with --version=rand"
            )
    # A randomized model differs between any two calls: the batch-size comparison says nothing then.
    if batch_diff > 1e-3 * scale and repeat_diff <= 1e-4 * scale:
        messages.append(
            f"logits depend on the batch size (max difference {batch_diff:.3g} between "
            "batch and one-by-one): BatchNorm in training mode?"
        )
    return messages


def warn_gradients(attacker, x, y, max_examples=256):
    """Zero or non-finite input gradients of the cross-entropy at clean points."""
    # An input the logits do not depend on differentiably has zero gradient, not None.
    grad = _input_gradient(attacker, x[:max_examples], y[:max_examples])
    grad = grad.reshape(len(grad), -1)
    messages = []
    non_finite = int(np.sum(~np.isfinite(grad).all(1)))
    zero = int(np.sum(np.all(grad == 0, axis=1)))
    if non_finite:
        messages.append(f"non-finite input gradients for {non_finite} of {len(grad)} examples")
    if zero:
        messages.append(
            f"zero input gradients for {zero} of {len(grad)} examples (gradient masking or saturated softmax)"
        )
    return messages


SIGNIFICANCE = 0.01


def one_sided_sign_test(wins, losses):
    """P(at least `wins` of the wins + losses discordant points go one way) if each went either way
    with probability 1/2: the exact one-sided McNemar (sign) test."""
    return _above_rate(wins, wins + losses, 0.5)


def _beats(stronger, weaker):
    """(points `stronger` breaks and `weaker` does not, the reverse, p-value of the first exceeding
    the second by chance)."""
    wins = int(np.sum(~stronger.robust & weaker.robust))
    losses = int(np.sum(stronger.robust & ~weaker.robust))
    return wins, losses, one_sided_sign_test(wins, losses)


def _above_rate(count, n, rate):
    """One-sided exact binomial p-value of `count` of `n` points when each is one with prob. `rate`."""
    return float(stats.binomtest(count, n, rate, alternative="greater").pvalue) if n else 1.0


def warn_sweep(sweep, num_classes, norm):
    """Accuracy must not rise with eps, and must be near 0 (at most chance) at a large eps.

    `sweep`: [{"eps", "robust"}] with each point's verdict at that eps. Every point is attacked at
    every eps, so a rise is judged on the points where two budgets disagree: it warns when more
    points are robust only at the larger eps than only at the smaller one beyond chance (exact
    one-sided sign test, p < 0.01); above chance at a large eps, when the robust count exceeds
    chance by more than a binomial draw would (exact one-sided binomial test, p < 0.01)."""
    messages = []
    ordered = sorted(sweep, key=lambda point: point["eps"])
    for before, after in zip(ordered, ordered[1:]):
        before_robust, after_robust = np.asarray(before["robust"], bool), np.asarray(after["robust"], bool)
        rises = int(np.sum(after_robust & ~before_robust))
        falls = int(np.sum(before_robust & ~after_robust))
        p = one_sided_sign_test(rises, falls)
        if p < SIGNIFICANCE:
            messages.append(
                f"accuracy rises with eps: {before_robust.mean():.4f} at eps {before['eps']:.4g} -> "
                f"{after_robust.mean():.4f} at eps {after['eps']:.4g} ({rises} points robust only at "
                f"the larger eps, {falls} only at the smaller; sign test p = {p:.2g})"
            )
    large = [p for p in ordered if norm == "linf" and p["eps"] >= 0.5]
    for point in large:
        robust = np.asarray(point["robust"], bool)
        p = _above_rate(int(robust.sum()), len(robust), 1.0 / num_classes)
        if p < SIGNIFICANCE:
            messages.append(
                f"accuracy {robust.mean():.4f} at eps {point['eps']:.3g} is above "
                f"chance ({1.0 / num_classes:.4f}; binomial test p = {p:.2g}): at this eps any image "
                "can be turned into any other, so the attack is failing"
            )
    return messages


def warn_attack_ordering(by_name, white_box_names, square_rate=0.002):
    """FGSM beating PGD; more PGD steps and restarts raising accuracy; Square beating the
    white-box attacks.

    The first two compare the same points under two attacks, so sampling noise is judged on the
    points where the attacks disagree: a warning needs the unexpected attack to break more points
    the other leaves robust than the reverse, by more than chance allows (exact one-sided sign test,
    p < 0.01). A 1-point difference out of 100 (1 point to 0) has p = 0.5 and does not warn; 7 to 0
    (p = 0.008) does. Square breaking points every white-box attack left robust warns when there are
    more of them than a rate of `square_rate` (Square's random search finding a rare point first)
    explains (exact one-sided binomial test, p < 0.01): 1 point of 100 has p = 0.18 and does not
    warn, 3 of 100 (p = 0.001) do.
    """
    messages = []
    fgsm, pgd_, pgd_strong = by_name.get("fgsm"), by_name.get("pgd"), by_name.get("pgd-strong")
    if fgsm is not None and pgd_ is not None:
        wins, losses, p = _beats(fgsm, pgd_)
        if p < SIGNIFICANCE:
            messages.append(
                f"FGSM ({fgsm.robust.mean():.4f}) beats PGD ({pgd_.robust.mean():.4f}): "
                f"FGSM breaks {wins} points PGD leaves robust, PGD {losses} the other way "
                f"(sign test p = {p:.2g}): PGD is not converging (masked or noisy gradients?)"
            )
    if pgd_ is not None and pgd_strong is not None:
        wins, losses, p = _beats(pgd_, pgd_strong)
        if p < SIGNIFICANCE:
            messages.append(
                f"more PGD steps/restarts raised accuracy by "
                f"{100 * (pgd_strong.robust.mean() - pgd_.robust.mean()):.2f} points "
                f"({pgd_.robust.mean():.4f} -> {pgd_strong.robust.mean():.4f}; PGD breaks "
                f"{wins} points the stronger PGD does not, {losses} the other way, sign "
                f"test p = {p:.2g})"
            )
    square = by_name.get("square")
    if square is not None and square.seconds > 0:
        white = np.ones_like(square.robust)
        for name in white_box_names:
            if name in by_name:
                white &= by_name[name].robust
        # Any point only the black-box attack breaks is evidence against the gradients; the rate
        # leaves room for Square's random search finding a rare point first.
        extra = int(np.sum(white & ~square.robust))
        p = _above_rate(extra, len(square.robust), square_rate)
        if p < SIGNIFICANCE:
            messages.append(
                f"Square (black-box) breaks {extra} of {len(square.robust)} points "
                f"({100 * extra / len(square.robust):.2f}%) that every white-box attack "
                f"left robust (binomial test against a {100 * square_rate:.1f}% rate: p = {p:.2g}): "
                "gradients are masked"
            )
    return messages
