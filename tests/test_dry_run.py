"""create_job(dry_run=True) warns about file ids a real create_job would refuse (a fresh-user trial found a dry run
approving a training_file_id that does not exist without a word), and flags config keys that reach no payload
(typos) with a "did you mean"."""

from __future__ import annotations

import pytest

from conftest import arithmetic_rows, write_jsonl
from test_mcp_server import connect, mode, server, sft_toml  # noqa: F401 (fixtures)


@pytest.mark.anyio
async def test_dry_run_checks_the_file_ids_it_would_send(server, tiny_model, tmp_path, mode, anyio_backend):
    train = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(8))
    async with connect(server, mode) as s:
        out = await s.ok("create_job", {"config": sft_toml(str(tiny_model)), "training_file_id": "file-nope",
                                        "dry_run": True})
        assert any("training_file_id 'file-nope' does not exist" in w and "upload_file" in w for w in out["warnings"])
        out = await s.ok("create_job", {"config": sft_toml(str(tiny_model)), "dataset": str(train),
                                        "validation_file_id": "file-nope", "dry_run": True})
        assert any("validation_file_id 'file-nope' does not exist" in w for w in out["warnings"])
        up = await s.ok("upload_file", {"path": str(train)})
        out = await s.ok("create_job", {"config": sft_toml(str(tiny_model)), "training_file_id": up["file_id"],
                                        "dry_run": True})
        assert out["dry_run"] and out["job_id"] is None and not any("does not exist" in w for w in out["warnings"])


@pytest.mark.anyio
async def test_a_typo_key_is_flagged_with_a_suggestion(server, tiny_model, tmp_path, mode, anyio_backend):
    train = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(8))
    toml = sft_toml(str(tiny_model)).replace("[hyperparameters]\n", "[hyperparameters]\nlearning_rat = 1e-4\n"
                                             "weight_decay = 0.01\n")
    assert "learning_rat" in toml
    async with connect(server, mode) as s:
        r = await s.call("create_job", {"config": toml, "dataset": str(train), "dry_run": True})
        assert not r.is_error
        assert "1 config key(s) ignored: hyperparameters.learning_rat" in r.content[0].text
        out = r.structured_content
        assert out["ignored_keys"] == ["hyperparameters.learning_rat"]
        assert set(out["dropped_keys"]) == {"hyperparameters.learning_rat", "hyperparameters.weight_decay"}
        assert any("learning_rat" in w and "did you mean hyperparameters.learning_rate?" in w for w in out["warnings"])
        assert "weight_decay" in out["payload"]["hyperparameters"]  # forwarded, not ignored
