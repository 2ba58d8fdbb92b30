"""AutoAttack's versions as cascades of stages, with the reference's settings per version
(fra31/auto-attack, autoattack.py `set_version`, for L-inf and L2):

  standard  APGD-CE, APGD-T, FAB-T, Square               APGD 1 restart
  plus      APGD-CE, APGD-DLR, FAB, Square, APGD-T, FAB-T  APGD-CE/DLR and FAB 5 restarts
  rand      APGD-CE, APGD-DLR                            1 restart, EOT over 20 gradient draws
  custom    the stages listed in --attacks, in that order, with standard's settings

In every version APGD-T and FAB-T run 1 restart for each of 9 target classes (the runner-up classes
of the clean logits, fewer with fewer classes), APGD and FAB 100 iterations, Square 5000 queries and
1 restart (the reference sets no other count for any version). Each stage runs on the points still
robust after the previous ones, so the last stage's robust mask is AutoAttack's robust accuracy.
The flags --apgd_restarts, --fab_restarts, --eot_iterations and --square_restarts override a
version's counts (tests scale them down that way); the report names the settings used.
"""

import dataclasses
import time
from typing import Tuple

import numpy as np

from robustcl.attacks import threat_model
from robustcl.attacks.apgd import apgd, make_apgd_run
from robustcl.attacks.fab import fab, make_difference_and_grad, make_differences_and_grads
from robustcl.attacks.square import square
from robustcl.settings import ConfigError, check_name
from robustcl.registry import Registry
from robustcl.evaluation.suite import AttackResult

STAGES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
N_TARGET_CLASSES = 9


@dataclasses.dataclass(frozen=True)
class Version:
    stages: Tuple[str, ...]
    apgd_restarts: int  # APGD-CE and APGD-DLR
    fab_restarts: int  # untargeted FAB
    eot_iterations: int  # APGD-CE and APGD-DLR
    square_restarts: int = 1


VERSIONS = Registry("version")
VERSIONS.register("standard")(Version(("apgd-ce", "apgd-t", "fab-t", "square"), 1, 1, 1))
VERSIONS.register("plus")(Version(("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"), 5, 5, 1))
VERSIONS.register("rand")(Version(("apgd-ce", "apgd-dlr"), 1, 1, 20))
VERSIONS.register("custom")(Version((), 1, 1, 1))


@dataclasses.dataclass(frozen=True)
class Cascade:
    """A version resolved to what runs: its stages and every count."""

    version: str
    stages: Tuple[str, ...]
    iterations: int  # APGD and FAB
    apgd_restarts: int
    fab_restarts: int
    eot_iterations: int
    square_queries: int
    square_restarts: int

    def describe(self):
        return (
            f"AutoAttack {self.version}: {', '.join(self.stages)}; APGD/FAB {self.iterations} "
            f"iterations, APGD-CE/DLR {self.apgd_restarts} restart(s), EOT {self.eot_iterations}, "
            f"FAB {self.fab_restarts} restart(s), APGD-T/FAB-T {N_TARGET_CLASSES} targets x 1 "
            f"restart, Square {self.square_queries} queries x {self.square_restarts} restart(s)"
        )


def registered_attacks(attacks):
    """The registered evaluation attacks `attacks` names, in order, once each: AutoAttack stage
    names (--version=custom) stand for the one cascade, 'autoattack', where the first is listed."""
    out = []
    for name in attacks:
        name = "autoattack" if name in STAGES else name
        if name not in out:
            out.append(name)
    return out


def cascade_stages(version, attacks):
    """The stages a version runs: its own, or (custom) the stage names among `attacks`, in order."""
    if version == "custom":
        return tuple(a for a in attacks if a in STAGES)
    return VERSIONS.get(version).stages


def check(version, attacks, flag="attacks"):
    """ConfigError naming the problem when --version and --attacks do not fit together: stage names
    belong to --version=custom, which needs at least one and has no 'autoattack' entry."""
    check_name(VERSIONS, "version", version)
    stages = [a for a in attacks if a in STAGES]
    if version == "custom":
        if not stages:
            raise ConfigError(
                f"--version=custom runs the AutoAttack stages listed in --{flag}; name "
                f"at least one of {', '.join(STAGES)}"
            )
        if "autoattack" in attacks:
            raise ConfigError(f"--version=custom: list the stages themselves in --{flag}, not 'autoattack'")
    elif stages:
        raise ConfigError(
            f"--{flag}: {', '.join(stages)} are AutoAttack stages; run them alone with "
            f"--version=custom, or list 'autoattack' for version {version}'s cascade"
        )


def resolve(
    version,
    attacks=(),
    iterations=100,
    square_queries=5000,
    apgd_restarts=0,
    fab_restarts=0,
    eot_iterations=0,
    square_restarts=0,
):
    """The Cascade of `version`; a count of 0 means the version's own."""
    spec = VERSIONS.get(version)
    return Cascade(
        version,
        cascade_stages(version, attacks),
        iterations,
        apgd_restarts or spec.apgd_restarts,
        fab_restarts or spec.fab_restarts,
        eot_iterations or spec.eot_iterations,
        square_queries,
        square_restarts or spec.square_restarts,
    )


def compiled_apgd(attacker, loss, threat, n_iter, eot_iterations=1):
    """The attacker's one traced APGD run for these settings (robustcl.attacks.apgd.make_apgd_run),
    shared by every batch, chunk and stage that uses them."""
    return attacker.compiled(
        ("apgd", loss, threat.norm, float(threat.eps), int(n_iter), int(eot_iterations)),
        lambda: make_apgd_run(attacker.logits_fn, loss, threat, n_iter, eot_iterations=eot_iterations),
    )


def run(attacker, x, y, norm, eps, cascade, seed=0, log=print):
    """Runs the cascade on (x, y). Returns one AttackResult per stage; each stage's `robust` is the
    cascade's robustness after it (so the last is AutoAttack's robust accuracy)."""
    threat = threat_model(norm, eps)
    clean_logits = attacker.logits(x)
    num_classes = clean_logits.shape[-1]
    n_targets = min(N_TARGET_CLASSES, num_classes - 1)
    # Target rank k: the k-th highest clean logit (rank 1, the top, is the label when correct).
    order = np.argsort(clean_logits, axis=-1)
    targets_by_rank = [order[:, -rank] for rank in range(2, n_targets + 2)]
    robust = np.argmax(clean_logits, -1) == y
    x_adv = x.copy()
    c = cascade

    def apgd_untargeted(loss, stage_seed):
        run = compiled_apgd(attacker, loss, threat, c.iterations, c.eot_iterations)
        return lambda p: apgd(
            attacker.logits, x[p], y[p], threat, c.iterations, c.apgd_restarts, loss, seed=stage_seed, run=run
        )

    def apgd_targeted(p):
        run = compiled_apgd(attacker, "dlr-targeted", threat, c.iterations)
        still = np.ones(len(p), bool)
        adv = x[p].copy()
        for rank, targets in enumerate(targets_by_rank, start=2):
            idx = np.flatnonzero(still)
            if not len(idx):
                break
            out, correct = apgd(
                attacker.logits,
                x[p[idx]],
                y[p[idx]],
                threat,
                c.iterations,
                1,
                "dlr-targeted",
                targets=targets[p[idx]],
                seed=seed + rank,
                run=run,
            )
            out = np.asarray(out)
            adv[idx[~correct]] = out[~correct]
            still[idx[~correct]] = False
        return adv, still

    def fab_untargeted(p):
        grads = attacker.compiled(("fab",), lambda: make_differences_and_grads(attacker.logits_fn))
        return fab(
            attacker.logits_fn,
            attacker.predict,
            x[p],
            y[p],
            threat,
            c.iterations,
            c.fab_restarts,
            seed=seed,
            linearization=grads,
        )

    def fab_targeted(p):
        grad = attacker.compiled(("fab-t",), lambda: make_difference_and_grad(attacker.logits_fn))
        return fab(
            attacker.logits_fn,
            attacker.predict,
            x[p],
            y[p],
            threat,
            c.iterations,
            1,
            [t[p] for t in targets_by_rank],
            seed=seed,
            linearization=grad,
        )

    def square_restarts(p):
        adv, still = x[p].copy(), np.ones(len(p), bool)
        queries = np.zeros(len(p), np.int64)
        for restart in range(c.square_restarts):
            idx = np.flatnonzero(still)
            if not len(idx):
                break
            out, correct, used = square(
                attacker.margins, x[p[idx]], y[p[idx]], threat, c.square_queries, 0.8, seed + restart * 1_000_003
            )
            adv[idx[~correct]] = out[~correct]
            still[idx] = correct
            queries[idx] += used
        return adv, still, queries

    runners = {
        "apgd-ce": (apgd_untargeted("ce", seed), c.iterations, c.apgd_restarts),
        "apgd-dlr": (apgd_untargeted("dlr", seed + 1), c.iterations, c.apgd_restarts),
        "apgd-t": (apgd_targeted, c.iterations, 1),
        "fab": (fab_untargeted, c.iterations, c.fab_restarts),
        "fab-t": (fab_targeted, c.iterations, 1),
        "square": (square_restarts, c.square_queries, c.square_restarts),
    }
    results = []
    for name in c.stages:
        fn, steps, restarts = runners[name]
        start, model_start = time.perf_counter(), attacker.clock.seconds
        idx = np.flatnonzero(robust)
        log(f"{name}: {len(idx)} points still robust")
        stage_queries = np.zeros(0, np.int64) if name == "square" else None
        for batch_start in range(0, len(idx), attacker.batch_size):
            part = idx[batch_start : batch_start + attacker.batch_size]
            out = fn(part)
            adv, still = np.asarray(out[0]), out[1]
            if len(out) > 2:
                stage_queries = np.concatenate([stage_queries, out[2]])
            fooled = part[~still]
            x_adv[fooled] = adv[~still]
            robust[fooled] = False
        results.append(
            AttackResult(
                name,
                norm,
                eps,
                steps,
                restarts,
                seed,
                robust.copy(),
                x_adv.copy(),
                time.perf_counter() - start,
                stage_queries,
                attacker.clock.seconds - model_start,
            )
        )
    return results
