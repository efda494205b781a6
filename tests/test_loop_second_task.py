"""ReST-EM on a task other than addition, run as the demo runs (a real MCP stdio client, the embedded backend, a
weak seed model built offline): two-digit subtraction (``73-48=?``, a ≥ b), with the demo's sizes (400 seed
examples, 2,000 train and 500 held-out problems) and the committed ``loop.toml``. The loop must gain at least 25
points of held-out greedy accuracy over its seed model within 10 minutes on a 2-core machine (issue 9).

Marked slow (about 5 minutes on an idle 2-core machine): ``bash tests/run.sh -m slow``. Measured figures for this
task and others, seeds and loop options are in README *Results*."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 600


@pytest.mark.slow
def test_restem_gains_25_points_on_subtraction_within_10_minutes(tmp_path):
    out = tmp_path / "sub"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "restem_arithmetic" / "demo.py"), "--task", "sub",
         "--out", str(out), "--min-gain", "25"],
        capture_output=True, text=True, timeout=LIMIT_S + 60)
    seconds = time.monotonic() - started
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert summary["task"] == "sub" and summary["gain_points"] >= 25, summary
    assert seconds <= LIMIT_S, f"took {seconds:.0f} s"
    assert "trunc" in proc.stdout  # the per-iteration table's truncated column
