"""The README's main job, scaled down: the ReST-EM demo over stdio must show the coarse ReST-EM trends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_improves_the_seed_model(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "restem_arithmetic" / "demo.py"), "--out", str(out),
         "--train-problems", "800", "--val-problems", "200", "--iterations", "2"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    table = summary["table"]
    assert "val pass@1" in proc.stdout and "held-out greedy accuracy" in proc.stdout  # the printed table
    assert table[0]["val_pass_at_1"] > summary["base_val_pass_at_1"]  # iteration 1 beats the seed model
    if len(table) > 1:
        assert table[1]["kept"] > table[0]["kept"]  # a better sampler keeps more of its samples
    assert summary["gain_points"] >= 10
    # the backend the demo's server started detached was stopped again
    info = json.loads((out / "data" / "backend.json").read_text()) if (out / "data" / "backend.json").exists() else None
    if info:
        import psutil

        assert not psutil.pid_exists(info["pid"]) or psutil.Process(info["pid"]).status() == psutil.STATUS_ZOMBIE
