"""Typed records resolve the learning API's field aliases once (issue 7): callers read one name."""

from learning_mcp.tools.records import Event, File, Job, Model


def test_job_aliases_and_status_spellings():
    job = Job.of({"job_id": "ftjob-1", "model_id": "Qwen/Qwen3-0.6B", "state": "canceled", "extra": 1})
    assert (job.id, job.model, job.status) == ("ftjob-1", "Qwen/Qwen3-0.6B", "cancelled")
    assert job.raw()["extra"] == 1  # unknown fields are kept
    assert Job.of({"id": "x", "model": "m", "status": "completed"}).status == "succeeded"
    assert Job.of({"id": "x"}).status == "unknown" and Job.of({"id": "x"}).model is None


def test_file_event_and_model_aliases():
    assert File.of({"file_id": "file-1", "storage_state": "READY"}).model_dump(include={"id", "status"}) == {
        "id": "file-1", "status": "ready"}
    event = Event.of({"event_type": "sft.progress", "seq": "7", "data": None, "message": None})
    assert (event.type, event.seq, event.data, event.message, event.level) == ("sft.progress", 7, {}, "", "info")
    assert Model.of({"name": "tiny"}).id == "tiny"
