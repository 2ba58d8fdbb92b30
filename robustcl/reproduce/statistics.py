"""Paired comparisons of two cells of a grid over the same test points and seeds.

Every cell x seed is evaluated on the same test points, so two cells are compared point by point:
for each point, the difference of the two cells' verdicts (1 correct or robust, 0 not) averaged over
the seeds both have; the difference of accuracies is the mean of those, and its 95% interval comes
from a bootstrap over the points (scipy.stats.bootstrap, BCa). The interval measures what another
draw of test points could do to the difference at these seeds; it does not measure what other
training seeds would do (two or three seeds cannot), which the record says beside the verdicts.

Verdicts: "holds" where the whole interval lies above 0, "contradicted" where it lies below 0, and
"not resolved" where it contains 0. A comparison with fewer than `min_seeds` seeds in common is
"pending": its interval would speak for one training run.
"""

import base64

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 10_000


def pack(verdicts):
    """A boolean vector as text (base64 of its bits), so records keep per-point verdicts compactly."""
    verdicts = np.asarray(verdicts, bool)
    return {"n": int(verdicts.size), "bits": base64.b64encode(np.packbits(verdicts).tobytes()).decode("ascii")}


def unpack(packed):
    bits = np.unpackbits(np.frombuffer(base64.b64decode(packed["bits"]), np.uint8))
    return bits[: packed["n"]].astype(bool)


def point_differences(a, b):
    """Per point, the mean over seeds of a's verdict minus b's. `a` and `b` map seed -> verdict
    vector over the same points; only the seeds both have count."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("the two cells have no seed in common")
    sizes = {len(a[s]) for s in seeds} | {len(b[s]) for s in seeds}
    if len(sizes) != 1:
        raise ValueError(f"the cells were evaluated on different numbers of points: {sorted(sizes)}")
    return np.mean([np.asarray(a[s], float) - np.asarray(b[s], float) for s in seeds], axis=0), seeds


def verdict_of(low, high):
    if low > 0:
        return "holds"
    if high < 0:
        return "contradicted"
    return "not resolved"


def compare(a, b, min_seeds=2, seed=0):
    """{diff, ci_low, ci_high, verdict, seeds, points} of accuracy(a) - accuracy(b), in points (%).

    `a`, `b`: seed -> boolean verdict per test point (the same points in the same order)."""
    differences, seeds = point_differences(a, b)
    diff = float(np.mean(differences))
    if np.all(differences == differences[0]):  # no spread to resample: the interval is the value
        low = high = diff
    else:
        result = stats.bootstrap(
            (differences,),
            np.mean,
            confidence_level=CONFIDENCE,
            n_resamples=RESAMPLES,
            method="BCa",
            random_state=np.random.default_rng(seed),
            batch=500,  # resamples at a time: all 10,000 over 10,000 points would hold 800 MB
        )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    verdict = verdict_of(low, high) if len(seeds) >= min_seeds else "pending"
    return {
        "diff": 100 * diff,
        "ci_low": 100 * low,
        "ci_high": 100 * high,
        "verdict": verdict,
        "seeds": seeds,
        "points": int(differences.size),
    }
