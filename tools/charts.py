"""Pictures of training: a job's loss curves and a ReST-EM loop's per-iteration progress, as PNG bytes.

Design
    Rendering is pure: :func:`loss_chart_png` takes metric points exactly as the learning API serves them
    (``GET /api/learning/jobs/{id}/metrics`` → ``{"points": [{"name", "value", "step", "epoch", "phase", …}]}``,
    learning-api.md §3.5) and :func:`loop_chart_png` takes a loop's state (``tools.loop.LoopState`` or its JSON,
    ``<data_dir>/loops/<loop_id>/state.json``). :func:`job_loss_chart` is the one async helper: it reads the points
    through :class:`~learning_mcp.tools.client.LearningClient` (so it works against Synth's API and the embedded
    backend alike), renders, and optionally writes the PNG atomically. :func:`png_image_content` wraps bytes as MCP
    ``ImageContent`` for a tool result.

    matplotlib is used through its object API with the Agg canvas (``Figure`` + ``FigureCanvasAgg``), never
    ``pyplot``: no global figure registry, no GUI backend, safe in worker threads. It is imported lazily and is the
    ``charts`` extra; without it the functions raise ``LearningMCPError("charts_unavailable")`` naming the install.

Metric names
    Training loss: ``train.loss`` (the embedded backend), ``loss`` or ``train_loss``; validation loss:
    ``val.loss`` (the embedded backend), ``eval_loss``, ``val_loss`` or ``validation.loss``. Points are plotted by
    ``step``; a name with no points is left out, and a chart with no loss at all says so in the plot.
"""

from __future__ import annotations

import base64
import io
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from learning_mcp.tools.errors import LearningMCPError

TRAIN_LOSS_NAMES = ("train.loss", "loss", "train_loss")
VAL_LOSS_NAMES = ("val.loss", "eval_loss", "val_loss", "validation.loss")
MAX_METRIC_POINTS = 5000  # the backend's page limit for GET …/metrics
DPI = 100
JOB_CHART_SIZE = (7.0, 4.0)  # inches → 700 x 400 px at DPI
LOOP_CHART_SIZE = (8.0, 6.0)  # 800 x 600 px
JOB_CHART_FILE = "loss.png"
LOOP_CHART_FILE = "chart.png"


def _figure(size: tuple[float, float], rows: int = 1):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the install
        raise LearningMCPError("charts_unavailable", "charts need matplotlib, which is not installed; install the "
                               "charts extra (pip install 'learning-mcp[charts]') and restart the server") from None
    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, 1, squeeze=False)[:, 0]
    return figure, list(axes)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def loss_series(points: Iterable[Mapping[str, Any]], names: Iterable[str]) -> list[tuple[int, float]]:
    """``(step, value)`` pairs of the first of ``names`` that has any point, sorted by step (last value per step)."""
    points = list(points)
    for name in names:
        by_step: dict[int, float] = {}
        for point in points:
            value, step = _finite(point.get("value")), point.get("step")
            if point.get("name") == name and value is not None and isinstance(step, int):
                by_step[step] = value
        if by_step:
            return sorted(by_step.items())
    return []


def loss_chart_png(points: Iterable[Mapping[str, Any]], *, title: str | None = None) -> bytes:
    """Training and validation loss against optimizer step, as a 700 x 400 PNG.

    ``points`` are metric points as ``GET /api/learning/jobs/{id}/metrics`` serves them (see the module docstring
    for the names read). The loss axis is logarithmic when the values span more than a factor of 20.
    """
    points = list(points)
    train = loss_series(points, TRAIN_LOSS_NAMES)
    val = loss_series(points, VAL_LOSS_NAMES)
    figure, (ax,) = _figure(JOB_CHART_SIZE)
    if train:
        ax.plot(*zip(*train), color="tab:blue", linewidth=1.8, marker="o" if len(train) < 30 else None,
                markersize=3, label=f"train loss (last {train[-1][1]:.4g})")
    if val:
        ax.plot(*zip(*val), color="tab:orange", linewidth=1.8, marker="s", markersize=4,
                label=f"validation loss (last {val[-1][1]:.4g}, best {min(v for _, v in val):.4g})")
    values = [v for _, v in train + val]
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")
    if not values:
        ax.text(0.5, 0.5, "no loss points yet", ha="center", va="center", transform=ax.transAxes, fontsize=14,
                color="0.4")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    if values:
        ax.legend(loc="upper right")
    ax.set_title(title or "loss")
    return _png(figure)


def _iterations(state: Any) -> tuple[list[dict], dict]:
    data = state.model_dump(mode="json") if hasattr(state, "model_dump") else dict(state)
    return [dict(r) for r in data.get("iterations") or []], data


def loop_chart_png(state: Any, *, title: str | None = None) -> bytes:
    """A ReST-EM loop's progress per iteration, as an 800 x 600 PNG with two panels.

    Top: validation pass@1 (greedy; iteration 0 is the seed model), and on the training problems the sampled
    pass@1 and pass@n (share of problems with at least one correct sample of ``n``). Bottom: kept samples (bars)
    and the M-step's final training loss (line, right axis). ``state`` is a ``LoopState`` or its JSON dict;
    iterations still in progress show what they have so far.
    """
    records, data = _iterations(state)
    n = ((data.get("config") or {}).get("n")) or "n"
    figure, (top, bottom) = _figure(LOOP_CHART_SIZE, rows=2)

    val = [(0, data["base_val_pass_at_1"])] if _finite(data.get("base_val_pass_at_1")) is not None else []
    val += [(r["iteration"], r["val_pass_at_1"]) for r in records if _finite(r.get("val_pass_at_1")) is not None]
    train_p1 = [(r["iteration"], r["train_pass_at_1"]) for r in records if _finite(r.get("train_pass_at_1")) is not None]
    train_pn = [(r["iteration"], r["solved"] / r["problems"]) for r in records
                if isinstance(r.get("solved"), int) and isinstance(r.get("problems"), int) and r["problems"] > 0]
    if val:
        top.plot(*zip(*val), color="tab:green", marker="o", linewidth=2, label="validation pass@1 (greedy)")
    if train_pn:
        top.plot(*zip(*train_pn), color="tab:purple", marker="^", linestyle="--", label=f"train pass@{n} (sampled)")
    if train_p1:
        top.plot(*zip(*train_p1), color="tab:blue", marker="s", linestyle=":", label="train pass@1 (sampled)")
    best = data.get("best_iteration")
    if isinstance(best, int) and _finite(data.get("best_val_pass_at_1")) is not None:
        top.annotate(f"best {data['best_val_pass_at_1']:.1%}", (best, data["best_val_pass_at_1"]),
                     textcoords="offset points", xytext=(6, -14), ha="left", fontsize=9, color="tab:green")
    top.set_ylim(-0.02, 1.08)
    top.set_ylabel("accuracy")
    top.grid(True, alpha=0.3)
    if val or train_p1 or train_pn:
        top.legend(loc="lower right", fontsize=9)
    else:
        top.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=top.transAxes, color="0.4")
    top.set_title(title or f"ReST-EM loop {data.get('loop_id', '')} ({data.get('state', '')})".strip())

    kept = [(r["iteration"], r["kept"]) for r in records if isinstance(r.get("kept"), int)]
    loss = [(r["iteration"], r["final_train_loss"]) for r in records if _finite(r.get("final_train_loss")) is not None]
    if kept:
        bottom.bar(*zip(*kept), color="tab:gray", alpha=0.6, width=0.6, label="kept samples")
        bottom.set_ylim(0, 1.3 * max(k for _, k in kept) or 1)  # room for the legend
    bottom.set_ylabel("kept samples")
    bottom.set_xlabel("iteration")
    loss_axis = bottom.twinx()
    if loss:
        loss_axis.plot(*zip(*loss), color="tab:red", marker="o", linewidth=2, label="final train loss")
        loss_axis.set_ylim(0, 1.3 * max(v for _, v in loss) or 1)
    loss_axis.set_ylabel("train loss")
    handles = bottom.get_legend_handles_labels()[0] + loss_axis.get_legend_handles_labels()[0]
    if handles:
        bottom.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize=9, ncols=2)
    last = max([0] + [r["iteration"] for r in records])
    for ax in (top, bottom):
        ax.set_xticks(range(0, last + 1))
        ax.set_xlim(-0.5, last + 0.5)
    return _png(figure)


async def job_loss_chart(client: Any, job_id: str, *, out_path: str | os.PathLike[str] | None = None) -> bytes:
    """Read ``job_id``'s metric points through ``client`` (a ``LearningClient``) and render :func:`loss_chart_png`.

    With ``out_path`` the PNG is also written there atomically (e.g. :func:`job_chart_path`). Raises what
    ``client.get_metrics`` raises (``LearningAPIError``; a 404 for an unknown job).
    """
    import anyio

    points = await client.get_metrics(job_id, limit=MAX_METRIC_POINTS)

    def render() -> bytes:  # ~0.1 s of CPU: off the event loop
        png = loss_chart_png(points, title=f"job {job_id}")
        if out_path is not None:
            from learning_mcp.tools.atomic import write_bytes_atomic

            write_bytes_atomic(out_path, png)
        return png

    return await anyio.to_thread.run_sync(render)


def job_chart_path(data_dir: str | os.PathLike[str], job_id: str) -> Path:
    """Where a job's loss chart is kept: ``<data_dir>/jobs/<job_id>/loss.png``."""
    if not job_id or "/" in job_id or "\\" in job_id or job_id in (".", ".."):
        raise LearningMCPError("invalid_argument", f"job_id {job_id!r} is not a job id", param="job_id")
    return Path(data_dir) / "jobs" / job_id / JOB_CHART_FILE


def png_image_content(png: bytes):
    """``png`` as an MCP ``ImageContent`` block (base64, ``image/png``) for a tool result's content list."""
    from mcp.types import ImageContent

    return ImageContent(type="image", data=base64.b64encode(png).decode("ascii"), mime_type="image/png")
