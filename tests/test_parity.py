"""bench/parity.py end to end at a tiny size: the robustcl side always; the reference side (the
authors' package) where ROBUSTCL_REFERENCE_PYTHON names an environment with torch==2.13.0+cpu and
advermorel==0.1.6 (CI does not install it). Both sides give a record whose verdicts agree with their
intervals, and the reference's weights copied into the Keras network give its own clean logits."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_PYTHON = os.environ.get("ROBUSTCL_REFERENCE_PYTHON", "")
DATA = os.environ.get("ROBUSTCL_CIFAR10_DIR", "")
PAIRS = [(m, k) for m in ("morel", "mart") for k in ("clean", "pgd", "autoattack")]


def _run(tmp_path, *extra):
    command = [
        sys.executable,
        "bench/parity.py",
        f"--data_dir={DATA}",
        f"--runs_dir={tmp_path / 'runs'}",
        f"--record={tmp_path / 'record'}",
        "--train_images=256",
        "--epochs=1",
        "--eval_points=32",
        "--seeds=0",
        *extra,
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads((tmp_path / "record.json").read_text())


@pytest.mark.skipif(not DATA, reason="ROBUSTCL_CIFAR10_DIR (set by .ci/run) names CIFAR-10")
def test_parity_bench_robustcl_side(tmp_path):
    record = _run(tmp_path, "--sides=robustcl")
    assert {(c["method"], c["implementation"]) for c in record["cells"]} == {
        ("morel", "robustcl"),
        ("mart", "robustcl"),
    }
    assert all(0 <= c["autoattack"] <= c["pgd20"] + 1e-9 and c["pgd20"] <= c["clean"] for c in record["cells"])
    assert [(r["method"], r["metric"]) for r in record["parity"]] == PAIRS
    assert all(r["verdict"] == "pending" for r in record["parity"])  # no reference to compare with
    assert {"model", "params", "train_examples", "epochs", "precision", "cpu"} <= set(record["protocol"])


@pytest.mark.skipif(
    not (REFERENCE_PYTHON and DATA),
    reason="the reference side needs ROBUSTCL_REFERENCE_PYTHON: an environment with torch==2.13.0+cpu and "
    "advermorel==0.1.6 (pip install torch==2.13.0+cpu advermorel==0.1.6)",
)
def test_parity_bench_both_sides(tmp_path):
    record = _run(tmp_path, f"--reference_python={REFERENCE_PYTHON}")
    assert [(r["method"], r["metric"]) for r in record["parity"]] == PAIRS
    for row in record["parity"]:
        within = -1.5 <= row["ci_low"] and row["ci_high"] <= 1.5
        outside = row["ci_low"] > 1.5 or row["ci_high"] < -1.5
        assert row["verdict"] == ("parity" if within else "differs" if outside else "not resolved")
    for method in ("morel", "mart"):
        evaluation = json.loads((tmp_path / "runs" / method / "seed0" / "reference_evaluation.json").read_text())
        assert evaluation["probe_logit_gap"] < 1e-3
