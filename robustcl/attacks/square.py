"""Square Attack, L-inf (Andriushchenko et al., ECCV 2020): score-based, gradient-free.

Follows the reference implementation used by AutoAttack (fra31/auto-attack, square.py) for L-inf
with the margin loss: vertical-stripe start (every column and channel at +-eps), then per query a
random square (side from the p schedule, p_init 0.8 rescaled to the query budget) set to x +- eps
per channel, the same square and signs for every image still correctly classified; a candidate is
kept when it lowers the margin or misclassifies. Only scores are used: `logits_fn` maps a NumPy
batch to NumPy logits, so it may be a local model, a SavedModel or a model server, and a model
that masks gradients is attacked as any other.
"""

import math

import numpy as np

from robustcl.attacks.objectives import margin_per_example


def p_selection(p_init, iteration, n_queries):
    """Fraction of pixels changed per query, halved on the reference's schedule (for 10000 queries,
    rescaled to n_queries)."""
    it = int(iteration / n_queries * 10000)
    for bound, divisor in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
                           (6000, 128), (8000, 256)):
        if it <= bound:
            return p_init / divisor
    return p_init / 512


def square_linf(logits_fn, x, y, eps, n_queries=5000, p_init=0.8, seed=0):
    """Returns (x_adv, correct [B] bool, queries [B]): queries counts model evaluations per image,
    the first (the stripe start) included."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    n, height, width, channels = x.shape
    n_features = height * width * channels

    def margin(images, labels):
        return np.array(margin_per_example(np.asarray(logits_fn(images), np.float32), labels))

    signs = rng.choice([-1.0, 1.0], size=(n, 1, width, channels)).astype(np.float32)
    x_best = np.clip(x + eps * signs, 0.0, 1.0)
    margin_min = margin(x_best, y)
    queries = np.ones(n, np.int64)
    for iteration in range(n_queries):
        active = np.flatnonzero(margin_min > 0.0)
        if not len(active):
            break
        p = p_selection(p_init, iteration, n_queries)
        side = max(int(round(math.sqrt(p * n_features / channels))), 1)
        top = int(rng.integers(0, max(height - side, 1)))
        left = int(rng.integers(0, max(width - side, 1)))
        delta = np.zeros((height, width, channels), np.float32)
        delta[top:top + side, left:left + side] = 2.0 * eps * rng.choice([-1.0, 1.0], size=(1, 1, channels))
        x_curr = x[active]
        x_new = np.clip(np.clip(x_best[active] + delta, x_curr - eps, x_curr + eps), 0.0, 1.0)
        new_margin = margin(x_new, y[active])
        improved = (new_margin < margin_min[active]) | (new_margin <= 0.0)
        margin_min[active] = np.where(improved, new_margin, margin_min[active])
        x_best[active] = np.where(improved[:, None, None, None], x_new, x_best[active])
        queries[active] += 1
    return x_best, margin_min > 0.0, queries
