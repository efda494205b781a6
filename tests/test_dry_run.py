"""create_job(dry_run=True) refuses what a real create_job would refuse about the files it names (a fresh-user
trial found a dry run approving a training_file_id that does not exist)."""

from __future__ import annotations

import pytest

from conftest import arithmetic_rows, write_jsonl
from test_mcp_server import connect, mode, server, sft_toml  # noqa: F401 (fixtures)


@pytest.mark.anyio
async def test_dry_run_checks_the_file_ids_it_would_send(server, tiny_model, tmp_path, mode, anyio_backend):
    train = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(8))
    async with connect(server, mode) as s:
        await s.fails("create_job", {"config": sft_toml(str(tiny_model)), "training_file_id": "file-nope",
                                     "dry_run": True}, "file_not_found", "training_file_id", "upload_file")
        await s.fails("create_job", {"config": sft_toml(str(tiny_model)), "dataset": str(train),
                                     "validation_file_id": "file-nope", "dry_run": True},
                      "file_not_found", "validation_file_id")
        up = await s.ok("upload_file", {"path": str(train)})
        out = await s.ok("create_job", {"config": sft_toml(str(tiny_model)), "training_file_id": up["file_id"],
                                        "dry_run": True})
        assert out["dry_run"] and out["job_id"] is None
