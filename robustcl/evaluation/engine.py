"""The attack loop of an evaluation: a Plan (what to run), each chunk of points attacked by every
attack of the plan (with the preflight checks on the first chunk, the sweep and the transfer rows),
and the chunks merged into the report dict with the per-example worst case and the masking checks.
Chunks are independent (random draws keyed by the chunk's first point), so evaluation.run can
persist, shard and spread them over devices.
"""

import dataclasses
import time
from typing import Optional, Tuple

import numpy as np

from robustcl.attacks.threat import perturbation_norms, threat_model
from robustcl.evaluation.settings import EVAL_ATTACKS as ATTACKS  # the default list; names: EVALUATION_ATTACKS
from robustcl.evaluation import autoattack, checks
from robustcl.evaluation.attacks import EVALUATION_ATTACKS
from robustcl.evaluation.suite import AttackResult, AttackRun
from robustcl.attacks.apgd import apgd

LARGE_LINF_EPS = 0.5

DEVIATIONS = [
    "Random numbers come from NumPy/TensorFlow generators, so individual adversarial examples "
    "differ from the PyTorch reference (fra31/auto-attack) with the same seed.",
    "FAB-T's projections solve the same problem as the reference's (min-norm step onto the "
    "linearized boundary within [0, 1]) with a different sorted-breakpoint routine; on random "
    "inputs (2 to 3072 dimensions) the steps agree with the reference's within 4e-15.",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """What every chunk of points goes through: the threat model, the attacks and their budgets."""

    norm: str = "linf"
    eps: float = 8 / 255
    attacks: Tuple[str, ...] = ATTACKS
    pgd_steps: int = 20
    pgd_step_size: Optional[float] = None  # default 2.5 eps / steps
    pgd_restarts: int = 1
    apgd_iterations: int = 100
    square_queries: int = 5000
    # AutoAttack's version (evaluation.autoattack); a count of 0 is the version's own.
    version: str = "standard"
    apgd_restarts: int = 0
    fab_restarts: int = 0
    eot_iterations: int = 0
    square_restarts: int = 0
    sweep: bool = True
    sweep_attack: str = "pgd"
    seed: int = 0
    batch_size: int = 256
    chunk_size: int = 500  # points per unit of work: the unit of resuming, sharding and seeding
    # Transfer (black-box) rows: examples crafted on a surrogate network, scored on the model.
    transfer: bool = False
    transfer_in_worst_case: bool = False

    def cascade(self):
        """The AutoAttack cascade this plan runs (no stages when it runs none)."""
        return autoattack.resolve(
            self.version,
            self.attacks,
            self.apgd_iterations,
            self.square_queries,
            self.apgd_restarts,
            self.fab_restarts,
            self.eot_iterations,
            self.square_restarts,
        )

    def runs(self):
        """The registered attacks to run, in order: with --version=custom the listed stages are
        one cascade, run where the first of them is listed."""
        return autoattack.registered_attacks(self.attacks)

    @property
    def step_size(self):
        return self.pgd_step_size or 2.5 * self.eps / self.pgd_steps

    def sweep_eps(self):
        multiples = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
        return sorted(
            {round(m * self.eps, 8) for m in multiples} | ({LARGE_LINF_EPS} if self.norm == "linf" else set())
        )


def chunk_seed(seed, start):
    """The seed of the chunk starting at point `start`: random draws are keyed by the points'
    indices, never by which process, shard or device evaluates them."""
    return int(seed) * 1_000_003 + int(start)


def _point_stats(prefix, x, x_adv, norm):
    finite = np.isfinite(x_adv)
    return {
        f"{prefix}/distance": perturbation_norms(x, x_adv, norm).astype(np.float64),
        f"{prefix}/nan": (~finite).reshape(len(x), -1).sum(1),
        f"{prefix}/adv_min": np.nanmin(x_adv.reshape(len(x), -1), 1) if len(x) else np.zeros(0),
        f"{prefix}/adv_max": np.nanmax(x_adv.reshape(len(x), -1), 1) if len(x) else np.zeros(0),
    }


TRANSFER_PREFIX = "transfer-"


def transfer_results(attacker, surrogate, x, y, clean_correct, plan, seed):
    """PGD (every point, the plan's steps and restarts, CE) and APGD-CE (AutoAttack's settings)
    crafted on the surrogate; a point is robust if the model classifies it correctly clean and on
    the surrogate's example."""
    results = []
    crafted = surrogate.gradient_attack(
        "surrogate pgd", x, y, plan.norm, plan.eps, plan.pgd_steps, plan.step_size, plan.pgd_restarts, "ce", seed
    )
    results.append((f"{TRANSFER_PREFIX}pgd", plan.pgd_steps, plan.pgd_restarts, crafted.x_adv, crafted.seconds))
    start_time = time.perf_counter()
    threat = threat_model(plan.norm, plan.eps)
    run = autoattack.compiled_apgd(surrogate, "ce", threat, plan.apgd_iterations)
    parts = []
    for i in range(0, len(x), plan.batch_size):
        adv, _ = apgd(
            surrogate.logits,
            x[i : i + plan.batch_size],
            y[i : i + plan.batch_size],
            threat,
            plan.apgd_iterations,
            seed=seed,
            run=run,
        )
        parts.append(np.asarray(adv))
    results.append(
        (
            f"{TRANSFER_PREFIX}apgd-ce",
            plan.apgd_iterations,
            1,
            np.concatenate(parts) if parts else x.copy(),
            time.perf_counter() - start_time,
        )
    )
    return [
        AttackResult(
            name,
            plan.norm,
            plan.eps,
            steps,
            restarts,
            seed,
            clean_correct & (attacker.predict(x_adv) == y),
            x_adv,
            seconds,
        )
        for name, steps, restarts, x_adv, seconds in results
    ]


def evaluate_chunk(attacker, x, y, start, plan, log=print, preflight=False, surrogate=None):
    """Runs the plan on one chunk of points (x, y = points start .. start + len(x) - 1).

    Returns {"meta": {...}, name: array}: per point, the clean verdict and for every attack its
    robust verdict and perturbation statistics; per attack, its seconds. Hard checks run here, so a
    stored chunk has passed them. With `preflight`, the model checks that look at the first points
    (probability outputs, nondeterminism, input gradients) run too and their warnings are kept.
    `surrogate` (an Attacker on another network) makes the transfer rows the plan asks for.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    seed = chunk_seed(plan.seed, start)
    logits = attacker.logits(x)
    clean_correct = np.argmax(logits, -1) == y
    arrays = {"clean_correct": clean_correct}
    meta = {
        "start": int(start),
        "count": int(len(x)),
        "num_classes": int(logits.shape[-1]),
        "attacks": [],
        "sweep": [],
        "preflight_warnings": None,
    }
    if preflight:
        warnings = []
        message = checks.warn_probabilities(logits)
        if message:
            warnings.append(message)
        warnings += checks.warn_nondeterministic(attacker, x, y, eot=plan.version == "rand")
        warnings += checks.warn_gradients(attacker, x, y)
        meta["preflight_warnings"] = warnings

    def record(result):
        checks.check_adversarial_inputs(result, x)
        checks.check_robust_not_above_clean(result, clean_correct)
        arrays[f"{result.name}/robust"] = result.robust
        arrays.update(_point_stats(result.name, x, result.x_adv, result.norm))
        if result.queries is not None:
            arrays[f"{result.name}/queries"] = np.asarray(result.queries)
        meta["attacks"].append(
            {
                "attack": result.name,
                "steps": result.steps,
                "restarts": result.restarts,
                "seconds": result.seconds,
                "model_seconds": result.model_seconds,
                "has_queries": result.queries is not None,
            }
        )

    for name in plan.runs():
        for result in EVALUATION_ATTACKS.get(name).run(attacker, x, y, clean_correct, plan, seed, log):
            record(result)
    if plan.transfer:
        if surrogate is None:
            raise ValueError("the plan has transfer rows: give the surrogate")
        for result in transfer_results(attacker, surrogate, x, y, clean_correct, plan, seed):
            record(result)
    if plan.sweep:
        for value in plan.sweep_eps():
            robust = (
                clean_correct
                if value == 0
                else _sweep_point(
                    attacker,
                    plan.sweep_attack,
                    x,
                    y,
                    clean_correct,
                    plan.norm,
                    value,
                    plan.pgd_steps,
                    plan.apgd_iterations,
                    seed,
                )
            )
            arrays[f"sweep/{value!r}"] = robust
            meta["sweep"].append(value)
    return {"meta": meta, **arrays}


def merge(chunks, y, class_names, plan, model_name="model", data_name=""):
    """The report of a whole evaluation from its chunks (in any order; they must cover the points
    0 .. len(y) - 1 once each)."""
    chunks = sorted(chunks, key=lambda c: c["meta"]["start"])
    covered = (
        np.concatenate([np.arange(c["meta"]["start"], c["meta"]["start"] + c["meta"]["count"]) for c in chunks])
        if chunks
        else np.zeros(0, int)
    )
    if not np.array_equal(covered, np.arange(len(y))):
        raise ValueError(f"chunks cover {len(covered)} points, not each of the {len(y)} once")

    def joined(key):
        return np.concatenate([c[key] for c in chunks])

    y = np.asarray(y, np.int32)
    clean_correct = joined("clean_correct")
    first = chunks[0]["meta"]
    num_classes = first["num_classes"]
    warnings = list(first["preflight_warnings"] or [])
    results = []
    for index, spec in enumerate(first["attacks"]):
        name = spec["attack"]
        seconds = sum(c["meta"]["attacks"][index]["seconds"] for c in chunks)
        # Chunks stored before the clock existed (a resumed evaluation) leave it unmeasured.
        model_parts = [c["meta"]["attacks"][index].get("model_seconds") for c in chunks]
        model_seconds = None if None in model_parts else sum(model_parts)
        queries = joined(f"{name}/queries") if spec["has_queries"] else None
        results.append(
            MergedResult(
                name,
                plan.norm,
                plan.eps,
                spec["steps"],
                spec["restarts"],
                plan.seed,
                joined(f"{name}/robust"),
                seconds,
                queries,
                {k: joined(f"{name}/{k}") for k in ("distance", "nan", "adv_min", "adv_max")},
                model_seconds,
            )
        )
    by_name = {r.name: r for r in results}
    white_box = [n for n in ("fgsm", "pgd", "pgd-strong", "cw", "apgd-ce", "apgd-dlr", "apgd-t") if n in by_name]
    warnings += checks.warn_attack_ordering(by_name, white_box)
    worst = clean_correct.copy()
    for r in results:
        if plan.transfer_in_worst_case or not r.name.startswith(TRANSFER_PREFIX):
            worst &= r.robust
    sweep_points = []
    if first["sweep"]:
        verdicts = [{"eps": value, "robust": joined(f"sweep/{value!r}")} for value in first["sweep"]]
        sweep_points = [{"eps": v["eps"], "robust_accuracy": float(v["robust"].mean())} for v in verdicts]
        warnings += checks.warn_sweep(verdicts, num_classes, plan.norm)
    sweep_name = {
        "pgd": f"pgd-{plan.pgd_steps}",
        "fgsm": "fgsm",
        "cw": f"cw-{plan.pgd_steps}",
        "apgd-ce": f"apgd-ce-{plan.apgd_iterations}",
    }[plan.sweep_attack]
    per_class = []
    for label, class_name in enumerate(class_names):
        mask = y == label
        if mask.any():
            per_class.append(
                {
                    "class": class_name,
                    "label": label,
                    "num_points": int(mask.sum()),
                    "clean_accuracy": float(clean_correct[mask].mean()),
                    "robust_accuracy": float(worst[mask].mean()),
                }
            )
    rows = [r.summary(clean_correct) for r in results]
    if "autoattack" in plan.runs():
        # Each stage attacks the points still robust after the previous one (the first: every
        # point classified correctly): what its time was spent on.
        before = clean_correct
        for row in rows:
            if row["attack"] in plan.cascade().stages:
                row["points_attacked"] = int(before.sum())
                before = by_name[row["attack"]].robust
    return {
        "model": model_name,
        "data": data_name,
        "num_points": int(len(y)),
        "norm": plan.norm,
        "eps": float(plan.eps),
        "seed": int(plan.seed),
        "num_classes": int(num_classes),
        "chunk_size": int(plan.chunk_size),
        "clean_accuracy": float(clean_correct.mean()),
        "worst_case_robust_accuracy": float(worst.mean()),
        "attacks": rows,
        "eps_sweep": sweep_points,
        "sweep_attack": sweep_name,
        "per_class": per_class,
        "warnings": warnings,
        "checks_passed": [
            "every adversarial input is inside the eps-ball and [0, 1], without NaN",
            "no example is robust while misclassified clean",
        ],
        "deviations": DEVIATIONS if "autoattack" in plan.runs() else [],
        "seconds": round(sum(sum(a["seconds"] for a in c["meta"]["attacks"]) for c in chunks), 2),
        "per_point": {
            "clean_correct": clean_correct.tolist(),
            "worst_case_robust": worst.tolist(),
            "robust": {r.name: r.robust.tolist() for r in results},
        },
        **_autoattack_summary(plan, by_name),
    }


def _autoattack_summary(plan, by_name):
    """The cascade's settings and robust accuracy (after its last stage), when the plan ran one."""
    if "autoattack" not in plan.runs():
        return {}
    cascade = plan.cascade()
    last = by_name[cascade.stages[-1]]
    return {
        "autoattack": {
            "version": cascade.version,
            "stages": list(cascade.stages),
            "settings": cascade.describe(),
            "robust_accuracy": float(last.robust.mean()),
        }
    }


# A report row's wall-clock fields: they differ run to run where every other field is reproducible.
TIMING_FIELDS = ("seconds", "model_seconds", "attack_seconds")


@dataclasses.dataclass
class MergedResult(AttackRun):
    """One attack over every point: the verdicts and statistics of its chunks put together."""

    robust: np.ndarray
    seconds: float
    queries: Optional[np.ndarray]
    stats: dict
    model_seconds: Optional[float] = None

    def summary(self, clean_correct):
        out = {
            "attack": self.name,
            "robust_accuracy": float(self.robust.mean()),
            "num_points": int(len(self.robust)),
            "eps": self.eps,
            "norm": self.norm,
            "steps": self.steps,
            "restarts": self.restarts,
            "seed": self.seed,
            "seconds": round(self.seconds, 3),
            **(
                {}
                if self.model_seconds is None
                else {
                    "model_seconds": round(self.model_seconds, 3),
                    "attack_seconds": round(max(self.seconds - self.model_seconds, 0.0), 3),
                }
            ),
            "max_perturbation": float(np.nanmax(self.stats["distance"])) if len(self.robust) else 0.0,
            "nan_count": int(self.stats["nan"].sum()),
            "adv_min": float(np.nanmin(self.stats["adv_min"])),
            "adv_max": float(np.nanmax(self.stats["adv_max"])),
            "robust_above_clean": int(np.sum(self.robust & ~clean_correct)),
        }
        if self.queries is not None and len(self.queries):  # none when no point was left to attack
            out["queries_mean"] = float(self.queries.mean())
            out["queries_median"] = float(np.median(self.queries))
        return out


def chunk_starts(num_points, chunk_size):
    return list(range(0, num_points, chunk_size))


def _sweep_point(attacker, attack, x, y, clean_correct, norm, eps, steps, apgd_iterations, seed):
    """Robust mask of one sweep point; its adversarial inputs pass the same hard checks."""
    if attack == "apgd-ce":
        threat = threat_model(norm, eps)
        run = autoattack.compiled_apgd(attacker, "ce", threat, apgd_iterations)
        x_adv, correct = apgd(attacker.logits, x, y, threat, apgd_iterations, seed=seed, run=run)
        result = AttackResult(
            f"sweep apgd-ce eps {eps:.4g}", norm, eps, apgd_iterations, 1, seed, correct, np.asarray(x_adv), 0.0
        )
    elif attack == "fgsm":
        result = attacker.gradient_attack(
            f"sweep fgsm eps {eps:.4g}",
            x,
            y,
            norm,
            eps,
            1,
            eps,
            1,
            "ce",
            seed,
            random_start=False,
            clean_correct=clean_correct,
        )
    else:
        result = attacker.gradient_attack(
            f"sweep {attack} eps {eps:.4g}",
            x,
            y,
            norm,
            eps,
            steps,
            2.5 * eps / steps,
            1,
            "cw" if attack == "cw" else "ce",
            seed,
            clean_correct=clean_correct,
        )
    checks.check_adversarial_inputs(result, x)
    return result.robust & clean_correct
