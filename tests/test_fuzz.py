"""Seeded fuzzing of every dataset and config tool through the real MCP server over stdio (issue 10).

Bounded to about a minute: a fixed seed and a deadline. Every answer must be a result or a ``[code]`` error —
never the SDK's bare "Error executing tool", never a traceback, never a hang. The full-size run (≥ 10,000
lines, ≥ 1,000 configs) is ``tests/bench/bench_fuzz.py``.
"""

from __future__ import annotations

import time

import pytest

from fuzzing import run_fuzz


@pytest.mark.anyio
async def test_fuzzed_inputs_never_give_a_bare_error(tiny_model, tmp_path, anyio_backend):
    counts = await run_fuzz(seed=1234, n_lines=1500, n_configs=60, work=tmp_path, tiny_model=str(tiny_model),
                            deadline_s=time.monotonic() + 75)
    assert counts["calls"] > 100, counts
    assert counts["hangs"] == counts["bare_errors"] == counts["server_crashes"] == 0, "\n".join(counts["examples"])
