"""Registers ``export_model``: a trained model out of the learning API as a standard Hugging Face folder.

The work is :func:`learning_mcp.tools.export_ops.export_model` (the backend's export route; ``learning-mcp export``
runs the same function). Exporting a large model can outlast a tool call: the call waits at most
``EXPORT_WAIT_S`` and then says the export goes on in the backend (its worker thread finishes writing; the folder
is renamed into place only when complete, backend/export.py).
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult
from pydantic import BaseModel, Field

from learning_mcp.server.common import STARTS_WORK, result, state_of, tool_errors
from learning_mcp.tools.export_ops import export_model as export_ops_model

EXPORT_WAIT_S = 45.0


class ExportModelResult(BaseModel):
    model: str
    path: str
    done: bool = Field(description="false: still writing on the backend when the call returned")
    format: str | None = Field(None, description="merged (full weights) or peft_adapter")
    files: list[str] | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    next_step: str


def register_export_tools(server: MCPServer) -> None:
    @server.tool(title="Export a model as a Hugging Face folder", annotations=STARTS_WORK)
    async def export_model(
        ctx: Context,
        model: Annotated[str, Field(description="fine_tuned_model from get_job_status (ft:...), or a base model")],
        path: Annotated[str, Field(description="new or empty absolute folder on the backend's machine")],
        merge_lora: Annotated[bool, Field(description="LoRA models: merge into the base weights (false: write "
                                                      "the PEFT adapter)")] = True,
    ) -> Annotated[CallToolResult, ExportModelResult]:
        """Write a model as safetensors + tokenizer + chat template that transformers, vLLM and TRL load as is
        (merged weights, or a PEFT adapter with merge_lora=false). Embedded backend only. Waits at most 45 s;
        a larger model keeps exporting in the backend and the folder appears, complete, at path."""
        with tool_errors(f"exporting {model}"):
            api = await state_of(ctx).client()
            out: dict | None = None
            with anyio.move_on_after(EXPORT_WAIT_S):
                out = await export_ops_model(api, model, path, merge_lora=merge_lora)
        if out is None:
            res = ExportModelResult(model=model, path=path, done=False,
                                    next_step=f"Still exporting on the backend; {path} appears when complete "
                                              "(do not call export_model again for the same path).")
            return result(res, f"exporting {model} to {path}: still writing")
        res = ExportModelResult(model=model, path=str(out.get("path") or path), done=True, format=out.get("format"),
                                files=out.get("files"), details=out,
                                next_step=f"Load it with AutoModelForCausalLM.from_pretrained({path!r}) (or "
                                          "PeftModel for an adapter), or serve it with vLLM.")
        return result(res, f"exported {model} to {res.path} ({res.format})")
