"""Square Attack, L-inf and L2 (Andriushchenko et al., ECCV 2020): score-based, gradient-free.

Follows the reference implementation used by AutoAttack (fra31/auto-attack, square.py) with the
margin loss. Only scores are used: `margin_fn` maps a NumPy batch [N, H, W, C] and its labels to
the NumPy margins z_y - max_{j != y} z_j of the model's logits (objectives.margin_per_example), so
it may be a local model's traced forward pass with the margin in the same graph (Attacker.margins:
one call per query), or `margins_of(logits_fn)` over any scorer of logits, a SavedModel or a model
server; a model that masks gradients is attacked as any other. Every query proposes one candidate
per image still correctly classified; a candidate is kept when it lowers the margin or
misclassifies. A query draws one square position, size and pattern for all those images, and
signs per image and channel, as the reference does.

- L-inf: start from vertical stripes (every column and channel at +-eps); a proposal sets a random
  square to x +- eps per channel.
- L2: start from a 5 x 5 grid of windows, each holding the reference's "eta" pattern (two
  rectangles of opposite sign with mass decaying from their centres) with a random sign per
  channel, scaled to norm eps. A proposal takes two random windows, moves the second window's
  perturbation mass into the first (new eta pattern plus the first window's old direction) and
  spends the budget left below eps there, then rescales the whole perturbation to norm eps.

The square size follows the reference's p schedule (p_init 0.8, halved at fixed query counts).
AutoAttack runs Square with `resc_schedule=False`: the counts are used as written (for 10000
queries), not rescaled to the query budget; `rescale_schedule=True` gives the rescaled schedule.
"""

import math

import numpy as np

from robustcl.attacks.objectives import margin_per_example
from robustcl.attacks.threat import THREATS

NORMS = tuple(THREATS)


def margins_of(logits_fn):
    """A margin_fn for `square` from any NumPy scorer of logits (a model server, say)."""

    def margin_fn(images, labels):
        return np.asarray(margin_per_example(np.asarray(logits_fn(images), np.float32), labels))

    return margin_fn


def p_selection(p_init, iteration, n_queries, rescale_schedule=False):
    """Fraction of pixels changed per query, on the reference's schedule."""
    it = int(iteration / n_queries * 10000) if rescale_schedule else iteration
    for bound, divisor in (
        (10, 1),
        (50, 2),
        (200, 4),
        (500, 8),
        (1000, 16),
        (2000, 32),
        (4000, 64),
        (6000, 128),
        (8000, 256),
    ):
        if it <= bound:
            return p_init / divisor
    return p_init / 512


def _random_signs(rng, shape):
    return rng.choice([-1.0, 1.0], size=shape).astype(np.float32)


def _random_offset(rng, length, side):
    """Top-left corner in [0, length - side), as the reference draws it (0 when side == length)."""
    return int(rng.integers(0, max(length - side, 1)))


def _l2_norms(delta):
    """Per-image L2 norm, shaped [N, 1, 1, 1]."""
    return np.sqrt(np.sum(np.square(delta, dtype=np.float64), axis=(1, 2, 3), keepdims=True))


def _rectangle_profile(rows, cols):
    """The reference's eta_rectangles (L2): nested rectangles around the centre, ring k weighted
    1/(k+1)^2 cumulatively, unit L2 norm."""
    profile = np.zeros((rows, cols))
    top, left = rows // 2, cols // 2
    for ring in range(max(rows // 2 + 1, cols // 2 + 1)):
        profile[max(top, 0) : min(top + 2 * ring + 1, rows), max(left, 0) : min(left + 2 * ring + 1, cols)] += (
            1.0 / (ring + 1) ** 2
        )
        top -= 1
        left -= 1
    return profile / np.sqrt(np.sum(profile**2))


def _eta(rng, side):
    """The reference's eta(s) (L2): upper half +profile, lower half -profile, unit L2 norm,
    transposed with probability 1/2."""
    pattern = np.zeros((side, side))
    pattern[: side // 2] = _rectangle_profile(side // 2, side)
    pattern[side // 2 :] = -_rectangle_profile(side - side // 2, side)
    pattern /= np.sqrt(np.sum(pattern**2))
    if rng.random() > 0.5:
        pattern = pattern.T
    return pattern.astype(np.float32)


class _LinfProposals:
    def __init__(self, rng, shape, eps):
        self.rng, self.eps = rng, eps
        _, self.height, self.width, self.channels = shape

    def start(self, x):
        n = len(x)
        return np.clip(x + self.eps * _random_signs(self.rng, (n, 1, self.width, self.channels)), 0, 1)

    def propose(self, x, x_best, p):
        rng, eps = self.rng, self.eps
        n_features = self.height * self.width * self.channels
        side = max(int(round(math.sqrt(p * n_features / self.channels))), 1)
        side = min(side, self.height, self.width)
        top, left = _random_offset(rng, self.height, side), _random_offset(rng, self.width, side)
        step = 2.0 * eps * _random_signs(rng, (1, 1, self.channels))
        # Only the square changes: x_best already lies in the ball and in [0, 1], where the clips
        # leave it as it is, so the rest is copied rather than recomputed.
        window = (slice(None), slice(top, top + side), slice(left, left + side))
        x_new = x_best.copy()
        x_new[window] = np.clip(np.clip(x_best[window] + step, x[window] - eps, x[window] + eps), 0.0, 1.0)
        return x_new


class _L2Proposals:
    def __init__(self, rng, shape, eps):
        self.rng, self.eps = rng, eps
        _, self.height, self.width, self.channels = shape
        if self.height < 5 or self.width < 5:
            raise ValueError(f"L2 Square needs images of at least 5 x 5 pixels, got {self.height} x {self.width}")

    def _scaled(self, x, delta):
        """x + delta rescaled to L2 norm eps, clipped to [0, 1] (clipping only shrinks it)."""
        return np.clip(x + delta / (_l2_norms(delta) + 1e-12) * self.eps, 0.0, 1.0).astype(np.float32)

    def start(self, x):
        n, side = len(x), self.height // 5
        delta = np.zeros_like(x)
        offset = (self.height - side * 5) // 2
        top = offset
        for _ in range(self.height // side):
            left = offset
            for _ in range(self.width // side):
                pattern = _eta(self.rng, side)[None, :, :, None]
                delta[:, top : top + side, left : left + side] += pattern * _random_signs(
                    self.rng, (n, 1, 1, self.channels)
                )
                left += side
            top += side
        return self._scaled(x, delta)

    def propose(self, x, x_best, p):
        rng, eps, channels = self.rng, self.eps, self.channels
        n_features = self.height * self.width * channels
        delta = (x_best - x).astype(np.float32)
        side = max(int(round(math.sqrt(p * n_features / channels))), 3)
        side += 1 - side % 2  # odd, as the reference
        side = min(side, self.height, self.width)
        top, left = _random_offset(rng, self.height, side), _random_offset(rng, self.width, side)
        top2, left2 = _random_offset(rng, self.height, side), _random_offset(rng, self.width, side)
        first = (slice(None), slice(top, top + side), slice(left, left + side))
        second = (slice(None), slice(top2, top2 + side), slice(left2, left2 + side))

        def channel_norms(t):  # per image and channel over the spatial axes, [N, 1, 1, C]
            return np.sqrt(np.sum(np.square(t, dtype=np.float64), axis=(1, 2), keepdims=True))

        window = np.zeros((1, self.height, self.width, 1), np.float32)
        window[first] = 1.0
        window[second] = 1.0
        image_norms = _l2_norms(delta)
        windows_norms = channel_norms(delta * window)
        new = _eta(rng, side)[None, :, :, None] * _random_signs(rng, (len(x), 1, 1, channels)) + delta[first] / (
            1e-12 + channel_norms(delta[first])
        )
        budget = np.sqrt(np.maximum(eps**2 - image_norms**2, 0.0) / channels + windows_norms**2)
        new = new / (1e-12 + channel_norms(new)) * budget
        delta[second] = 0.0
        delta[first] = new
        return self._scaled(x, delta)


def square(margin_fn, x, y, threat, n_queries=5000, p_init=0.8, seed=0, rescale_schedule=False):
    """Square in `threat` (a threat model of robustcl.attacks.threat; its proposals are the
    norm's own), scoring with `margin_fn(images, labels)` (see the module docstring). Returns
    (x_adv, correct [B] bool, queries [B]): queries counts model evaluations per image, the first
    (the start) included."""
    norm, eps = threat.norm, threat.eps
    if norm not in NORMS:
        raise ValueError(f"Square supports norms {NORMS}, got {norm!r}")
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    proposals = (_LinfProposals if norm == "linf" else _L2Proposals)(rng, x.shape, eps)

    def margin(images, labels):
        return np.array(margin_fn(images, labels), np.float32)

    x_best = proposals.start(x)
    margin_min = margin(x_best, y)
    queries = np.ones(len(x), np.int64)
    for iteration in range(n_queries):
        active = np.flatnonzero(margin_min > 0.0)
        if not len(active):
            break
        p = p_selection(p_init, iteration, n_queries, rescale_schedule)
        x_new = proposals.propose(x[active], x_best[active], p)
        new_margin = margin(x_new, y[active])
        improved = (new_margin < margin_min[active]) | (new_margin <= 0.0)
        margin_min[active[improved]] = new_margin[improved]
        x_best[active[improved]] = x_new[improved]
        queries[active] += 1
    return x_best, margin_min > 0.0, queries
