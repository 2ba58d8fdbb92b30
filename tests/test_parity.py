"""bench/parity.py end to end at a tiny size: both sides train, the reference's weights copied into
the Keras network give its own clean logits, and the record has a verdict per method and metric.
Needs the reference's environment (torch==2.13.0+cpu, advermorel==0.1.6), named by
ROBUSTCL_REFERENCE_PYTHON; CI does not install it."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_PYTHON = os.environ.get("ROBUSTCL_REFERENCE_PYTHON", "")


@pytest.mark.skipif(
    not (REFERENCE_PYTHON and os.environ.get("ROBUSTCL_CIFAR10_DIR")),
    reason="ROBUSTCL_REFERENCE_PYTHON (an environment with torch 2.13 CPU and advermorel 0.1.6) and "
    "ROBUSTCL_CIFAR10_DIR name the reference and the data",
)
def test_parity_bench_runs_both_sides_and_judges_each_metric(tmp_path):
    command = [
        sys.executable,
        "bench/parity.py",
        f"--data_dir={os.environ['ROBUSTCL_CIFAR10_DIR']}",
        f"--reference_python={REFERENCE_PYTHON}",
        f"--runs_dir={tmp_path / 'runs'}",
        f"--record={tmp_path / 'record'}",
        "--train_images=256",
        "--epochs=1",
        "--eval_points=32",
        "--seeds=0",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    record = json.loads((tmp_path / "record.json").read_text())
    assert [(r["method"], r["metric"]) for r in record["rows"]] == [
        (m, k) for m in ("morel", "mart") for k in ("clean", "pgd", "autoattack")
    ]
    assert all(r["verdict"] in ("parity", "differs", "not resolved") for r in record["rows"])
    for method in ("morel", "mart"):
        evaluation = json.loads((tmp_path / "runs" / method / "seed0" / "reference_evaluation.json").read_text())
        assert evaluation["probe_logit_gap"] < 1e-3
