"""Threat models: the set an adversary may move an input in, kept apart from the attack loop.

A threat model knows how to draw a random start inside its set, which direction is steepest ascent
under its norm, how to project back onto {x' : ||x' - x|| <= eps} intersected with [0, 1]^d, its
norm and dual norm (FAB's distance to a linearized boundary is |f| / ||grad||_dual), and the noise
AutoAttack's attacks start from (a draw scaled to the sphere of radius 1: `unit(noise(...))`).
Everything is computed in float32 whatever the model's compute dtype.
"""

import numpy as np
import tensorflow as tf

from robustcl.registry import Registry

_TINY = 1e-12


def _per_example_l2(t):
    return tf.sqrt(tf.reduce_sum(tf.square(t), axis=list(range(1, len(t.shape)))))


def _expand_like(v, t):
    return tf.reshape(v, [-1] + [1] * (len(t.shape) - 1))


class LinfBall:
    norm = "linf"

    def __init__(self, eps):
        self.eps = float(eps)

    def sample_start(self, shape, seed):
        """A perturbation drawn uniformly from the L-inf ball (every coordinate in [-eps, eps])."""
        return tf.random.stateless_uniform(shape, seed, minval=-self.eps, maxval=self.eps)

    def ascent_direction(self, grad):
        return tf.sign(grad)

    def project(self, x, x_adv):
        # Clipping to the eps-box and then to [0, 1] is the exact projection onto their intersection.
        x_adv = tf.clip_by_value(x_adv, x - self.eps, x + self.eps)
        return tf.clip_by_value(x_adv, 0.0, 1.0)

    def distance(self, x, x_adv):
        return tf.reduce_max(tf.abs(x_adv - x), axis=list(range(1, len(x.shape))))

    def noise(self, shape, seed):
        """Uniform in [-1, 1]^d (APGD's and FAB's start direction for L-inf)."""
        return tf.random.stateless_uniform(shape, seed, -1.0, 1.0)

    def unit(self, t):
        """t scaled per example to L-inf norm 1."""
        return t / _expand_like(tf.reduce_max(tf.abs(t), axis=list(range(1, len(t.shape)))) + _TINY, t)

    @staticmethod
    def dual_norm(g):
        """Per-row L1 norm of g [..., d] (NumPy), the dual of L-inf."""
        return np.abs(g).sum(-1)


class L2Ball:
    norm = "l2"

    def __init__(self, eps):
        self.eps = float(eps)

    def sample_start(self, shape, seed):
        """A perturbation drawn uniformly from the L2 ball: Gaussian direction, radius eps * U^(1/d)."""
        direction_seed, radius_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
        direction = tf.random.stateless_normal(shape, direction_seed)
        direction /= _expand_like(_per_example_l2(direction) + _TINY, direction)
        dim = tf.cast(tf.reduce_prod(shape[1:]), tf.float32)
        radius = self.eps * tf.random.stateless_uniform(shape[:1], radius_seed) ** (1.0 / dim)
        return direction * _expand_like(radius, direction)

    def ascent_direction(self, grad):
        # A zero gradient gives a zero step rather than NaN.
        return grad / _expand_like(_per_example_l2(grad) + _TINY, grad)

    def project(self, x, x_adv):
        delta = x_adv - x
        norm = _per_example_l2(delta)
        scale = tf.minimum(1.0, self.eps / tf.maximum(norm, _TINY))
        # Clipping to [0, 1] after scaling moves every coordinate towards x, so the norm stays <= eps.
        return tf.clip_by_value(x + delta * _expand_like(scale, delta), 0.0, 1.0)

    def distance(self, x, x_adv):
        return _per_example_l2(x_adv - x)

    def noise(self, shape, seed):
        """Standard Gaussian (APGD's and FAB's start direction for L2)."""
        return tf.random.stateless_normal(shape, seed)

    def unit(self, t):
        """t scaled per example to L2 norm 1."""
        return t / _expand_like(_per_example_l2(t) + _TINY, t)

    @staticmethod
    def dual_norm(g):
        """Per-row L2 norm of g [..., d] (NumPy), its own dual."""
        return np.sqrt(np.square(g).sum(-1))


THREATS = Registry("norm")
THREATS.register("linf")(LinfBall)
THREATS.register("l2")(L2Ball)


def perturbation_norms(x, x_adv, norm):
    """Per-example L-inf or L2 size of x_adv - x, in float64 (NumPy arrays of any rank)."""
    delta = np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)
    delta = delta.reshape(len(delta), -1)
    if norm == "linf":
        return np.abs(delta).max(1) if delta.shape[1] else np.zeros(len(delta))
    if norm == "l2":
        return np.sqrt(np.sum(delta**2, axis=1))
    raise ValueError(THREATS.unknown_message(norm))


def threat_model(norm, eps):
    THREATS.check(norm)
    return THREATS.get(norm)(eps)
