"""Export a model through the learning API: ``POST /api/learning/models/{model}/export`` on the embedded backend
(backend/export.py writes the Hugging Face folder on the backend's machine). Used by ``learning-mcp export``."""

from __future__ import annotations

from urllib.parse import quote

from learning_mcp.tools.client import LearningAPIError, LearningClient
from learning_mcp.tools.errors import ToolFailure, api_failure


async def export_model(client: LearningClient, model: str, path: str, *, merge_lora: bool = True,
                       timeout_s: float = 3600.0) -> dict:
    """Ask the backend to write ``model`` (an ``ft:`` id or a base model) to ``path`` (absolute, new or empty, on
    the backend's machine) as safetensors + tokenizer + chat template; ``merge_lora=False`` keeps a LoRA job as a
    PEFT adapter. Returns the backend's result (``path``, ``kind``, ``files`` …). Raises ``ToolFailure``: the
    backend's code (``unknown_model``, ``invalid_path`` …) or ``export_unsupported`` on Synth's hosted API, which
    has no export route."""
    if client.target.is_synth:
        raise ToolFailure("export_unsupported", "Synth's hosted API has no export route; export works on the "
                                                "embedded backend (unset SYNTH_API_KEY / SYNTH_BACKEND_URL)")
    try:
        return await client._json("POST", f"/learning/models/{quote(model, safe=':/')}/export", retry=False,
                                   json={"path": path, "merge_lora": merge_lora}, timeout=timeout_s)
    except LearningAPIError as exc:
        raise api_failure(exc, action=f"exporting {model}") from None
