"""The filter step: stored samples → the SFT JSONL a ReST-EM M-step trains on.

It speaks Synth's ``[filter]`` config (learning-api.md §6.4) plus the keys ReST-EM needs, and reads the
:class:`~learning_mcp.tools.traces.TraceStore` (rewards stored next to samples, §9 item 18) instead of Synth's
``outcome_rewards`` table. The pipeline is a chain of small pure stages over rows; the report counts what survives
each one, in order:

1. ``matched``  – selectors: ``run_id``, ``iterations``, ``phases``, ``splits``, ``task_ids`` (problem ids),
   ``models``, ``min_created_at`` / ``max_created_at`` (ISO string or epoch seconds).
2. ``rewarded`` – ``reward >= reward_threshold`` (default 1.0: binary "correct") and the official-score bounds.
   The official score is ``metadata.official_score`` when the row has one (task-app rollouts), else the reward.
   ``not_truncated`` – rewarded samples that were not cut off at ``max_tokens`` (``finish_reason == "length"``): a
   truncated sample can score 1.0 (``#### 42 #### 42 …`` repeated to the limit) and would teach the model to ramble,
   so it is dropped unless ``keep_truncated = true`` (then this count equals ``rewarded``).
   :attr:`FilterReport.truncated_dropped` (``truncated_dropped`` in ``to_dict()``) says how many were dropped.
3. ``deduped``  – (when ``dedupe``) one row per (problem id, completion with whitespace runs collapsed).
4. ``capped``   – (when ``max_per_problem``) the first K rows of each problem. Rows are ordered deterministically
   by (iteration, phase, problem id, sample index, row id) – or by a seeded shuffle when ``shuffle`` is set, so the
   cap then keeps a seeded random K.
5. ``limited``  – ``offset`` then ``limit`` (Synth validates these and ``shuffle`` but ignores them; we apply them).
6. ``written``  – lines written.

Output (``.jsonl``; a ``.json`` name gets the same JSON lines, as Synth accepts both) is one line per kept sample
in the §6.4 shape::

    {"messages": [<prompt messages>..., {"role": "assistant", "content": <completion>}],
     "metadata": {"session_id", "seed", "total_reward", "model", "created_at", "task_id", "split", "iteration"}}

``seed`` is the sample index, ``session_id`` is ``"<run_id>:<iteration>:<phase>:<row id>"``, ``created_at`` ISO-8601
UTC. ``system_prompt`` replaces the prompt's system message (or is prepended when there is none). The file is
written atomically (temp file + rename), also when empty: an empty result is a report with ``written == 0`` and a
``message`` starting "No sessions matched the provided filters." – the caller decides what that means.

Config loading mirrors Synth: TOML must have a ``[filter]`` table ("Config must contain a [filter] table."), and the
same validations with Synth's messages prefixed "Invalid filter config: ". Differences, on purpose:
unknown keys are rejected (a typo such as ``reward_treshold`` would otherwise silently keep everything); ``db`` may be
omitted when a store is passed to :func:`filter_traces`; relative ``db`` / ``output`` paths in a TOML *file* resolve
against the file's folder (an MCP server's working directory is arbitrary); judge-score bounds are not supported.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .atomic import write_jsonl_atomic
from .config_source import config_path, toml_loads
from .errors import MessageError
from .traces import TraceSample, TraceStore

__all__ = [
    "FilterConfigError",
    "FilterReport",
    "FilterSpec",
    "filter_traces",
    "load_filter_config",
    "sample_to_example",
]

NO_MATCH_MESSAGE = "No sessions matched the provided filters."
STAGES = ("matched", "rewarded", "not_truncated", "deduped", "capped", "limited", "written")
_UNSUPPORTED_KEYS = ("min_judge_scores", "max_judge_scores")


class FilterConfigError(MessageError):
    """A filter config or spec that cannot be used. ``code`` is snake_case."""

    def __init__(self, code: str, message: str):
        super().__init__(code, message)

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


def _invalid(detail: str) -> FilterConfigError:
    return FilterConfigError("invalid_filter_config", f"Invalid filter config: {detail}")


def _to_epoch(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise _invalid(f"{key} must be an ISO date/time or epoch seconds, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise _invalid(f"{key} must be an ISO date/time or epoch seconds, got {value!r}") from None
    else:
        raise _invalid(f"{key} must be an ISO date/time or epoch seconds, got {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def _str_list(value: Any, key: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, (str, int)) and not isinstance(v, bool) for v in value
    ):
        raise _invalid(f"{key} must be a list of strings")
    return [str(v) for v in value] or None


def _int_list(value: Any, key: str) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise _invalid(f"{key} must be a list of integers")
    return list(value) or None


def _optional_number(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid(f"{key} must be a number, got {value!r}")
    return float(value)


def _optional_int(value: Any, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{key} must be an integer, got {value!r}")
    return value


@dataclass
class FilterSpec:
    output: str
    db: str | None = None
    # Synth's selectors and bounds
    splits: list[str] | None = None
    task_ids: list[str] | None = None
    models: list[str] | None = None
    min_official_score: float | None = None
    max_official_score: float | None = None
    limit: int | None = None
    offset: int | None = None
    shuffle: bool = False
    shuffle_seed: int | None = None
    min_created_at: float | str | None = None
    max_created_at: float | str | None = None
    # ReST-EM
    run_id: str | None = None
    iterations: list[int] | None = None
    phases: list[str] | None = None
    reward_threshold: float = 1.0
    max_per_problem: int | None = None
    dedupe: bool = True
    system_prompt: str | None = None
    keep_truncated: bool = False

    def __post_init__(self) -> None:
        # Synth's validations, in Synth's order and words.
        if self.output is None or not str(self.output).strip():
            raise _invalid("output (JSONL file path) is required")
        self.output = str(self.output)
        if Path(self.output).suffix.lower() not in (".jsonl", ".json"):
            raise _invalid(f"output must be a .jsonl or .json file, got: {self.output}")
        self.min_official_score = _optional_number(self.min_official_score, "min_official_score")
        self.max_official_score = _optional_number(self.max_official_score, "max_official_score")
        if (
            self.min_official_score is not None
            and self.max_official_score is not None
            and self.min_official_score > self.max_official_score
        ):
            raise _invalid("min_official_score cannot be greater than max_official_score")
        self.limit = _optional_int(self.limit, "limit")
        self.offset = _optional_int(self.offset, "offset")
        if self.limit is not None and self.limit < 1:
            raise _invalid("limit must be >= 1")
        if self.offset is not None and self.offset < 0:
            raise _invalid("offset must be >= 0")
        self.shuffle_seed = _optional_int(self.shuffle_seed, "shuffle_seed")
        if not isinstance(self.shuffle, bool):
            raise _invalid("shuffle must be true or false")
        if self.shuffle_seed is not None and not self.shuffle:
            raise _invalid("shuffle_seed requires shuffle=true")
        # Ours.
        if self.db is not None:
            self.db = _db_path(self.db)
        self.splits = _str_list(self.splits, "splits")
        self.task_ids = _str_list(self.task_ids, "task_ids")
        self.models = _str_list(self.models, "models")
        self.phases = _str_list(self.phases, "phases")
        self.iterations = _int_list(self.iterations, "iterations")
        self.min_created_at = _to_epoch(self.min_created_at, "min_created_at")
        self.max_created_at = _to_epoch(self.max_created_at, "max_created_at")
        if self.run_id is not None and not isinstance(self.run_id, str):
            raise _invalid("run_id must be a string")
        threshold = _optional_number(self.reward_threshold, "reward_threshold")
        if threshold is None:
            raise _invalid("reward_threshold must be a number")
        self.reward_threshold = threshold
        self.max_per_problem = _optional_int(self.max_per_problem, "max_per_problem")
        if self.max_per_problem is not None and self.max_per_problem < 1:
            raise _invalid("max_per_problem must be >= 1")
        if not isinstance(self.dedupe, bool):
            raise _invalid("dedupe must be true or false")
        if not isinstance(self.keep_truncated, bool):
            raise _invalid("keep_truncated must be true or false")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise _invalid("system_prompt must be a string")

    def to_dict(self) -> dict:
        return asdict(self)


def _db_path(value: Any) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise _invalid("db must be a path")
    text = str(value).strip()
    if not text:
        raise _invalid("db (database path or URL) is required")
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if not scheme.startswith("sqlite"):
            raise _invalid(f"db must be a SQLite file path or sqlite:/// URL, got {text!r}")
        text = rest[1:] if rest.startswith("/") else rest  # sqlite:///rel or sqlite:////abs
    return text


_FIELD_NAMES = {f.name for f in fields(FilterSpec)}


def _spec_from_table(table: Mapping[str, Any], base_dir: Path | None) -> FilterSpec:
    data = dict(table)
    for key in _UNSUPPORTED_KEYS:
        if data.get(key):
            raise _invalid(f"{key} is not supported: learning-mcp stores no judge scores")
        data.pop(key, None)
    unknown = sorted(set(data) - _FIELD_NAMES)
    if unknown:
        raise _invalid(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_FIELD_NAMES))}")
    if base_dir is not None:
        for key in ("db", "output"):
            value = data.get(key)
            if isinstance(value, str) and value.strip() and "://" not in value:
                path = Path(value).expanduser()
                data[key] = str(path if path.is_absolute() else base_dir / path)
    if "output" not in data:
        raise _invalid("output (JSONL file path) is required")
    return FilterSpec(**data)


def load_filter_config(config: str | dict | os.PathLike[str]) -> FilterSpec:
    """A :class:`FilterSpec` from a TOML file path, TOML text, or a dict (``{"filter": {...}}`` or the table itself).

    Path or text is decided by :func:`~learning_mcp.tools.config_source.config_path`, the rule the SFT and loop
    configs share; relative paths inside the file resolve against its folder."""
    if isinstance(config, FilterSpec):
        return config
    if isinstance(config, Mapping):
        table = config.get("filter") if isinstance(config.get("filter"), Mapping) else config
        return _spec_from_table(table, None)
    base_dir: Path | None = None
    path = config_path(config) if isinstance(config, (str, os.PathLike)) else None  # the one rule (config_source)
    if path is not None:
        if not path.is_file():
            raise FilterConfigError("config_not_found", f"Filter config not found: {path}")
        text = path.read_text(encoding="utf-8")
        source = str(path)
        base_dir = path.resolve().parent
    elif isinstance(config, str):
        text, source = config, "<text>"
    else:
        raise FilterConfigError("invalid_filter_config", f"config must be a path, TOML text or a dict, not {config!r}")
    try:
        parsed = toml_loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FilterConfigError("config_parse_error", f"Failed to parse TOML '{source}': {exc}") from None
    table = parsed.get("filter")
    if not isinstance(table, dict):
        raise FilterConfigError("missing_filter_table", "Config must contain a [filter] table.")
    return _spec_from_table(table, base_dir)


# ---------------------------------------------------------------------------------------------------------------
# Pure stages


def _score_of(row: TraceSample) -> float:
    score = row.metadata.get("official_score") if isinstance(row.metadata, dict) else None
    if isinstance(score, (int, float)) and not isinstance(score, bool):
        return float(score)
    return float(row.reward) if row.reward is not None else 0.0


def _rewarded(rows: Iterable[TraceSample], spec: FilterSpec) -> list[TraceSample]:
    kept = []
    for row in rows:
        if row.reward is None or row.reward < spec.reward_threshold:
            continue
        score = _score_of(row)
        if spec.min_official_score is not None and score < spec.min_official_score:
            continue
        if spec.max_official_score is not None and score > spec.max_official_score:
            continue
        kept.append(row)
    return kept


def _complete(rows: Iterable[TraceSample], keep_truncated: bool) -> list[TraceSample]:
    return list(rows) if keep_truncated else [row for row in rows if not row.truncated]


def _dedupe(rows: Iterable[TraceSample]) -> list[TraceSample]:
    seen: set[tuple[str, str]] = set()
    kept = []
    for row in rows:
        key = (row.problem_id, " ".join(row.completion.split()))
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept


def _order(rows: list[TraceSample], spec: FilterSpec) -> list[TraceSample]:
    ordered = sorted(rows, key=lambda r: (r.iteration, r.phase, r.problem_id, r.sample_index, r.id or 0))
    if spec.shuffle:
        random.Random(spec.shuffle_seed if spec.shuffle_seed is not None else 0).shuffle(ordered)
    return ordered


def _cap(rows: Iterable[TraceSample], max_per_problem: int | None) -> list[TraceSample]:
    if max_per_problem is None:
        return list(rows)
    counts: Counter[str] = Counter()
    kept = []
    for row in rows:
        if counts[row.problem_id] < max_per_problem:
            counts[row.problem_id] += 1
            kept.append(row)
    return kept


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc).isoformat()


def sample_to_example(row: TraceSample, *, system_prompt: str | None = None) -> dict:
    """One stored sample → one SFT example in the §6.4 filter-output shape (pure)."""
    messages = [dict(m) for m in row.prompt if isinstance(m, dict)]
    if system_prompt is not None:
        messages = [m for m in messages if m.get("role") != "system"]
        messages.insert(0, {"role": "system", "content": system_prompt})
    messages.append({"role": "assistant", "content": row.completion})
    return {
        "messages": messages,
        "metadata": {
            "session_id": f"{row.run_id}:{row.iteration}:{row.phase}:{row.id}",
            "seed": row.sample_index,
            "total_reward": row.reward,
            "model": row.model,
            "created_at": _iso(row.created_at),
            "task_id": row.problem_id,
            "split": row.split,
            "iteration": row.iteration,
        },
    }


# ---------------------------------------------------------------------------------------------------------------
# Report and entry point


@dataclass
class FilterReport:
    output: str
    counts: dict[str, int]
    problems: int
    per_problem_max: int
    message: str = ""
    per_problem: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def truncated_dropped(self) -> int:
        """Rewarded samples dropped because generation was cut off at ``max_tokens``."""
        return self.counts.get("rewarded", 0) - self.counts.get("not_truncated", self.counts.get("rewarded", 0))

    def to_dict(self) -> dict:
        return {
            "output": self.output,
            "counts": dict(self.counts),
            "problems": self.problems,
            "per_problem_max": self.per_problem_max,
            "truncated_dropped": self.truncated_dropped,
            "message": self.message,
        }


def _no_match_message(counts: Mapping[str, int], spec: FilterSpec) -> str:
    if counts["matched"] == 0:
        hint = "no stored samples match the selectors (run_id, iterations, phases, splits, task_ids, models, dates)."
    elif counts["rewarded"] == 0:
        hint = (
            f"{counts['matched']} sample(s) matched the selectors but none has reward >= {spec.reward_threshold:g}"
            " within the official-score bounds."
        )
    elif counts.get("not_truncated", 1) == 0:
        hint = (
            f"all {counts['rewarded']} rewarded sample(s) were cut off at max_tokens (finish_reason 'length') and "
            "are not trained on; raise max_tokens, or set keep_truncated = true in [filter] to keep them."
        )
    else:
        hint = "offset skips every remaining sample."
    return f"{NO_MATCH_MESSAGE} {hint}"


def filter_traces(spec: FilterSpec, store: TraceStore | None = None) -> FilterReport:
    """Run the filter pipeline and write ``spec.output``. Uses ``store`` if given, else opens ``spec.db``."""
    if store is None:
        if not spec.db:
            raise FilterConfigError("missing_db", "Invalid filter config: db (database path or URL) is required")
        db_path = Path(spec.db).expanduser()
        if not db_path.is_file():
            raise FilterConfigError("db_not_found", f"trace database {db_path} does not exist")
        with TraceStore(db_path) as own_store:
            return filter_traces(spec, own_store)

    matched = store.query(
        run_id=spec.run_id,
        iterations=spec.iterations,
        phases=spec.phases,
        problem_ids=spec.task_ids,
        splits=spec.splits,
        models=spec.models,
        min_created_at=spec.min_created_at,
        max_created_at=spec.max_created_at,
    )
    rewarded = _rewarded(matched, spec)
    complete = _complete(rewarded, spec.keep_truncated)
    deduped = _dedupe(_order(complete, spec)) if spec.dedupe else _order(complete, spec)
    capped = _cap(deduped, spec.max_per_problem)
    start = spec.offset or 0
    limited = capped[start : start + spec.limit] if spec.limit is not None else capped[start:]
    output = Path(spec.output).expanduser().resolve()
    written = write_jsonl_atomic(output, (sample_to_example(r, system_prompt=spec.system_prompt) for r in limited))
    counts = {
        "matched": len(matched),
        "rewarded": len(rewarded),
        "not_truncated": len(complete),
        "deduped": len(deduped),
        "capped": len(capped),
        "limited": len(limited),
        "written": written,
    }
    per_problem = Counter(row.problem_id for row in limited)
    message = f"Wrote {written} examples -> {output}" if written else _no_match_message(counts, spec)
    return FilterReport(
        output=str(output),
        counts=counts,
        problems=len(per_problem),
        per_problem_max=max(per_problem.values(), default=0),
        message=message,
        per_problem=dict(per_problem),
    )
