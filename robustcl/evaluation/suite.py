"""Running attacks over a dataset: per-attack results (the AutoAttack cascade: evaluation.autoattack).

Every attack runs in inference mode on logits, in batches, and its result for an example counts as
robust only if the example is classified correctly both clean and under the attack (AutoAttack's
convention), so no robust accuracy can exceed the clean one.
"""

import dataclasses
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from robustcl.attacks import OBJECTIVES, pgd, threat_model
from robustcl.attacks.objectives import margin_per_example


@dataclasses.dataclass
class AttackRun:
    """What an attack was run with (its report row's settings)."""

    name: str
    norm: str
    eps: float
    steps: int
    restarts: int
    seed: int


@dataclasses.dataclass
class AttackResult(AttackRun):
    robust: np.ndarray  # [N] bool: correct clean and under this attack
    x_adv: np.ndarray
    seconds: float
    queries: Optional[np.ndarray] = None
    # Of `seconds`, the time spent in the model's traced functions (ModelClock); None: not measured.
    model_seconds: Optional[float] = None


class ModelClock:
    """Seconds spent running the model: every call of a traced function the Attacker hands out
    (forward passes, and forward-backward passes with the attack's loss) is timed where the attack
    calls it from Python, so a stage's remaining time is the attack's own work (its Python and
    NumPy between model calls). On CPU a tf.function call returns when its graph has run, so the
    timer brackets the computation itself. A loop traced whole (PGD's, an APGD run) counts as
    model time, including its few in-graph vector operations per step."""

    def __init__(self):
        self.seconds = 0.0
        self.calls = 0

    def timed(self, fn):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        return call


class Attacker:
    """Attacks one network (logits in inference mode) in batches."""

    def __init__(self, network, batch_size=256, progress=True):
        self.network = network
        self.batch_size = batch_size
        self.progress = progress
        self.logits_fn = self._network_logits
        self.clock = ModelClock()
        self._logits = self.clock.timed(tf.function(self.logits_fn, reduce_retracing=True))
        self._margins = self.clock.timed(tf.function(self._network_margins, reduce_retracing=True))
        self._compiled = {}

    def _network_logits(self, images):
        """The network's logits in inference mode (a method, not a lambda: autograph reads its
        source when a traced attack loop calls it)."""
        return self.network(images, training=False)["logits"]

    def _network_margins(self, images, labels):
        """z_y - max_{j != y} z_j of the network's logits, in the forward pass's graph (Square
        queries once per step: a second dispatch for the margin cost it 0.4 ms a query)."""
        return margin_per_example(self.logits_fn(images), labels)

    def compiled(self, key, make):
        """The traced function `make()` returns, made once per key and kept (every batch, chunk
        and call of an attack setting reuses one trace), timed by the Attacker's clock."""
        if key not in self._compiled:
            self._compiled[key] = self.clock.timed(make())
        return self._compiled[key]

    def _compiled_attack(self, norm, eps, steps, step_size, objective, random_start):
        """One traced PGD function per attack setting."""

        def make():
            threat = threat_model(norm, eps)
            objective_fn = OBJECTIVES.get(objective)

            @tf.function(reduce_retracing=True)
            def run(xb, yb, seed_pair):
                loss_fn = lambda z: objective_fn({"logits": self.logits_fn(z)}, yb)  # noqa: E731
                return pgd(loss_fn, xb, threat, steps, step_size, random_start, seed_pair)

            return run

        return self.compiled(
            ("pgd", norm, float(eps), int(steps), float(step_size), objective, bool(random_start)), make
        )

    def _in_batches(self, fn, *arrays):
        """fn over the arrays' rows, batch_size at a time: NumPy in and out."""
        size = self.batch_size
        batches = range(0, len(arrays[0]), size)
        return np.concatenate([fn(*(tf.constant(a[i : i + size]) for a in arrays)).numpy() for i in batches])

    def logits(self, x):
        return self._in_batches(self._logits, x)

    def predict(self, x):
        return np.argmax(self.logits(x), -1)

    def margins(self, x, y):
        """The network's margins on x with labels y (Square's score), NumPy in and out."""
        return self._in_batches(self._margins, x, y)

    def _batches(self, n, title):
        bar = keras.utils.Progbar(n, unit_name="image", verbose=1 if self.progress else 0)
        print(title, flush=True) if self.progress else None
        for start in range(0, n, self.batch_size):
            yield slice(start, min(start + self.batch_size, n))
            bar.update(min(start + self.batch_size, n))

    def gradient_attack(
        self, name, x, y, norm, eps, steps, step_size, restarts, objective, seed, random_start=True, clean_correct=None
    ):
        """PGD-family attack (FGSM is steps=1, step eps, no random start), worst case over restarts.
        `clean_correct` ([N] bool), when the caller has it, saves a forward pass over x."""
        run = self._compiled_attack(norm, eps, steps, step_size, objective, random_start)
        start, model_start = time.perf_counter(), self.clock.seconds
        x_adv = x.copy()
        fooled = np.zeros(len(x), bool)

        for batch in self._batches(len(x), f"{name}: eps {eps:.5g} {norm}, {steps} steps, {restarts} restarts"):
            for restart in range(restarts):
                candidate = run(
                    tf.constant(x[batch]),
                    tf.constant(y[batch]),
                    tf.constant([seed, restart * 1_000_003 + batch.start], tf.int64),
                ).numpy()
                newly = (np.argmax(self.logits(candidate), -1) != y[batch]) & ~fooled[batch]
                # The first restart's point stands unless a later restart fools the example.
                keep = newly | (restart == 0)
                x_adv[batch] = np.where(keep[:, None, None, None], candidate, x_adv[batch])
                fooled[batch] |= newly
        if clean_correct is None:
            clean_correct = self.predict(x) == y
        robust = clean_correct & (self.predict(x_adv) == y)
        return AttackResult(
            name,
            norm,
            eps,
            steps,
            restarts,
            seed,
            robust,
            x_adv,
            time.perf_counter() - start,
            model_seconds=self.clock.seconds - model_start,
        )
