"""Fuzz benchmark (issue 10): ≥ 10,000 adversarial JSONL lines and ≥ 1,000 configs through the MCP tools.

usage: .venv/bin/python tests/bench/bench_fuzz.py [--seed 0] [--lines 10000] [--configs 350]
(``--configs`` is per kind: SFT TOML for create_job(dry_run), loop TOML for run_sft_loop, filter TOML for
filter_traces; 350 × 3 = 1,050). Prints the counts; exits 1 on any bare error or hang.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzzing import run_fuzz  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lines", type=int, default=10_000)
    ap.add_argument("--configs", type=int, default=350)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-m", "learning_mcp", "tiny-model", str(work / "tiny")], check=True,
                       capture_output=True)
        start = time.monotonic()
        counts = asyncio.run(run_fuzz(seed=args.seed, n_lines=args.lines, n_configs=args.configs, work=work,
                                      tiny_model=str(work / "tiny")))
        counts["seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(counts, indent=2))
    return 1 if counts["bare_errors"] or counts["hangs"] or counts["server_crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
