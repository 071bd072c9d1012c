"""`glm-corpus report RUN_DIR`: one self-contained HTML page describing a run directory.

    summary = build_report("demo-out")            # writes demo-out/report.html
    summary["sections"]                            # {"overview": "rendered", "masking": "not run", ...}

The page is built from what the stages left on disk, in the layout of `glm-corpus demo` / `glm-corpus run`
(docs/REPORT.md lists the files and the keys read). Every section renders only when its inputs exist and
otherwise says which stage has not run, so a partial run still gets a report. Plots are PNGs embedded as
base64 data URIs and the CSS is inline: the file can be mailed or archived alone and opened offline.

Robustness rules: a missing file means "stage not run"; a file that exists but is not valid JSON (or
Parquet) is a `GLMCorpusError` naming the file, because a report silently built on half an input would
mislead; a JSON file with an unexpected shape fails only its own section, which says so on the page.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from common.atomic import atomic_write_text
from common.errors import GLMCorpusError
from report import plots

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
TOKENS_MANIFEST = "tokens/manifest.json"
DEDUP_LISTING = "tokens/dedup/dropped.parquet"
MIP_PLAN = "mip/mip-plan.json"
MIP_MANIFEST = "mip/manifest.json"
TRAIN_STATS = "train/stats.json"
AUDIT = "audit.json"
CHECKPOINTS = "checkpoints"
RUN_STATE = "run.json"
"""Written by `glm-corpus run`: per-stage status and seconds (pipeline/run_config.py)."""
RUN_STAGE_ORDER = ("default_data", "tokenizer", "ingest", "mip", "masking", "audit", "train", "report")
"""The order `glm-corpus run` runs its stages in (run.json stores them in a sorted JSON object)."""
RAN = ("ran", "up to date", "violations", "failed")
"""run.json statuses of stages that did something worth a timing row."""
KNOWN_INPUTS = (TOKENS_MANIFEST, MIP_PLAN, MIP_MANIFEST, TRAIN_STATS, AUDIT, CHECKPOINTS, RUN_STATE)

STAGE_ORDER = ("read", "normalize", "langid", "quality", "tokenize", "dedup")
"""Order of the ingest steps (the manifest stores them in a JSON object, which sorts keys)."""
MAX_LISTED_INPUTS = 40
TRAIN_LOG_SUFFIXES = (".jsonl", ".log", ".txt")
TRAIN_LOG_MAX_BYTES = 64 << 20
TEXT_STEP_LINE = re.compile(r"step\s+(\d+)\s*\|\s*loss\s+([-+0-9.eE]+|nan|inf)", re.IGNORECASE)
"""The human-readable line `glm-corpus train` prints per step (trainer/train.py `format_record`)."""
NUMERIC_TEXT = re.compile(r"^[-+]?[\d,.]+(e[-+]?\d+)?%?$")
"""Preformatted numbers (percentages, "1,234") that a table right-aligns like numbers."""
SECTION_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError)


# ----------------------------------------------------------------------------------------- reading a run


class RunDirectory:
    """The outputs of one run, read lazily: a missing file is None, a corrupt one a `GLMCorpusError`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._cache: dict[str, Any] = {}

    def check_inputs(self) -> None:
        """Read every input once, so a corrupt file fails the report before any plot is drawn."""
        for relative in (TOKENS_MANIFEST, MIP_PLAN, MIP_MANIFEST, TRAIN_STATS, AUDIT, RUN_STATE):
            self.json(relative)
        self.dedup_listing()
        self.checkpoint_meta()

    def exists(self, relative: str) -> bool:
        return (self.path / relative).exists()

    def json(self, relative: str) -> dict[str, Any] | None:
        """The JSON object at `relative`, or None when the file does not exist."""
        if relative not in self._cache:
            self._cache[relative] = read_json_object(self.path / relative)
        return self._cache[relative]

    @property
    def manifest(self) -> dict[str, Any] | None:
        return self.json(TOKENS_MANIFEST)

    @property
    def stats(self) -> dict[str, Any] | None:
        return self.json(TRAIN_STATS)

    @property
    def mip_plan(self) -> dict[str, Any] | None:
        return self.json(MIP_PLAN)

    @property
    def mip_manifest(self) -> dict[str, Any] | None:
        return self.json(MIP_MANIFEST)

    @property
    def audit(self) -> dict[str, Any] | None:
        return self.json(AUDIT)

    @property
    def run_state(self) -> dict[str, Any] | None:
        return self.json(RUN_STATE)

    def dedup_listing(self) -> list[dict[str, Any]] | None:
        """Rows of `tokens/dedup/dropped.parquet` (one per dropped duplicate), or None without a listing."""
        if "listing" in self._cache:
            return self._cache["listing"]
        path = self.path / DEDUP_LISTING
        rows = None
        if path.exists():
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except (pa.ArrowException, OSError) as exc:
                raise GLMCorpusError(
                    f"{path}: not a readable Parquet file ({exc}); rerun `glm-corpus ingest` to rewrite it"
                ) from exc
            wanted = [c for c in ("source", "reason", "cluster_id", "similarity") if c in table.column_names]
            rows = table.select(wanted).to_pylist()
        self._cache["listing"] = rows
        return rows

    def checkpoint_meta(self) -> dict[str, Any] | None:
        """meta.json of the newest checkpoint named by checkpoints/latest, or None."""
        pointer = self.path / CHECKPOINTS / "latest"
        if not pointer.exists():
            return None
        name = pointer.read_text(encoding="utf-8").strip()
        return read_json_object(self.path / CHECKPOINTS / name / "meta.json")

    def train_log(self) -> tuple[list[dict[str, Any]], list[Path]]:
        """Per-step trainer records found under checkpoints/ (JSON lines or the printed text lines).

        Looks at `*.jsonl`, `*.log` and `*.txt` files up to two levels down. Each JSON line with a `step`
        and a `loss` is a record; so is each `step N | loss X` text line. A step seen twice (a resumed
        run that logged it again) keeps its last record. Returns (records by step, files used)."""
        root = self.path / CHECKPOINTS
        if not root.is_dir():
            return [], []
        by_step: dict[int, dict[str, Any]] = {}
        used: list[Path] = []
        candidates = sorted(p for p in list(root.glob("*")) + list(root.glob("*/*"))
                            if p.is_file() and p.suffix in TRAIN_LOG_SUFFIXES)
        for path in candidates:
            if path.stat().st_size > TRAIN_LOG_MAX_BYTES:
                log.warning("skipping %s: larger than %d MB", path, TRAIN_LOG_MAX_BYTES >> 20)
                continue
            found = _parse_train_log(path.read_text(encoding="utf-8", errors="replace"))
            if found:
                used.append(path)
                for record in found:
                    by_step[int(record["step"])] = record
        return [by_step[step] for step in sorted(by_step)], used


def read_json_object(path: Path) -> dict[str, Any] | None:
    """Parse a JSON object file; None if it does not exist; a clear error if it is not a JSON object."""
    if not path.exists():
        return None
    if path.is_dir():
        raise GLMCorpusError(f"{path} is a directory where a JSON file was expected")
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise GLMCorpusError(
            f"{path}: not valid JSON ({exc}); the stage that writes it was probably interrupted or the file "
            f"was edited: rerun that stage, or delete the file to report the stage as not run"
        ) from exc
    if not isinstance(data, dict):
        raise GLMCorpusError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def _parse_train_log(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn last line of a killed run
            if isinstance(record, dict) and isinstance(record.get("step"), int) and _is_number(record.get("loss")):
                records.append(record)
            continue
        match = TEXT_STEP_LINE.search(line)
        if match:
            records.append({"step": int(match.group(1)), "loss": float(match.group(2))})
    return records


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------ HTML helpers


class Markup(str):
    """A string that is already HTML (not escaped again by `cell`)."""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A number for a table cell: thousands separators for integers, 4 significant digits otherwise."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        if abs(value) >= 1e5:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    return str(value)


def pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def _cell(value: Any, tag: str = "td") -> str:
    if isinstance(value, Markup):
        return f"<{tag}>{value}</{tag}>"
    if _is_number(value) or value is None or (isinstance(value, str) and NUMERIC_TEXT.match(value)):
        return f'<{tag} class="num">{esc(fmt(value))}</{tag}>'
    return f"<{tag}>{esc(value)}</{tag}>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], caption: str | None = None,
          numeric_headers: bool = True) -> str:
    """A table; numeric cells (and, by default, the headers of columns after the first) are right-aligned."""
    head = "".join(
        f'<th class="num">{esc(h)}</th>' if numeric_headers and i > 0 else f"<th>{esc(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column table of labelled values, the values right-aligned (numbers and short phrases alike)."""
    rows = "".join(
        f'<tr><th>{esc(k)}</th><td class="num">{v if isinstance(v, Markup) else esc(fmt(v))}</td></tr>'
        for k, v in pairs
    )
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def figure(uri: str, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{esc(alt)}">{cap}</figure>'


def note(text: str, kind: str = "info") -> str:
    return f'<p class="note {kind}">{esc(text)}</p>'


def h3(text: str) -> str:
    return f"<h3>{esc(text)}</h3>"


# -------------------------------------------------------------------------------------------- sections


@dataclasses.dataclass
class Section:
    """One part of the page; `status` is rendered, not run (inputs missing) or failed (inputs malformed)."""

    key: str
    title: str
    status: str
    body: str

    @property
    def images(self) -> int:
        return self.body.count('<img src="data:image/png;base64,')


def _not_run(key: str, title: str, what: str) -> Section:
    return Section(key, title, "not run", note(f"Stage not run: {what}", "missing"))


def section_overview(run: RunDirectory) -> Section:
    """Where the run is, what it read, what each stage produced, and how long the stages took."""
    parts = [key_values([
        ("run directory", str(run.path.resolve())),
        ("report generated", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
    ])]
    outputs = [
        ("ingest", TOKENS_MANIFEST), ("dedup listing", DEDUP_LISTING), ("MIP", MIP_PLAN),
        ("masking", TRAIN_STATS), ("audit", AUDIT), ("training", f"{CHECKPOINTS}/latest"),
    ]
    parts.append(h3("Stage outputs"))
    parts.append(table(["stage", "output", "present"],
                       [(name, rel, Markup("yes") if run.exists(rel) else Markup('<span class="missing">no</span>'))
                        for name, rel in outputs], numeric_headers=False))

    manifest = run.manifest
    totals: list[tuple[str, Any]] = []
    if manifest:
        t = manifest.get("totals", {})
        totals += [("input records", t.get("docs_in")), ("documents kept", t.get("docs_out")),
                   ("input bytes", t.get("bytes_in")), ("text tokens in token shards", t.get("tokens_out")),
                   ("sources", len(manifest.get("sources", {})))]
    plan = run.mip_plan
    if plan:
        pt = plan.get("totals", {})
        totals += [("MIP datasets", pt.get("datasets")), ("MIP examples written", pt.get("written")),
                   ("MIP tokens", pt.get("tokens"))]
    stats = run.stats
    if stats:
        totals += [("training rows", stats.get("rows")), ("training tokens", stats.get("tokens")),
                   ("MIP share of training tokens", pct(stats.get("mip", {}).get("share")))]
    meta = run.checkpoint_meta()
    if meta:
        totals += [("trainer steps (latest checkpoint)", meta.get("step")),
                   ("samples consumed", meta.get("consumed_samples"))]
    if totals:
        parts += [h3("Totals"), key_values(totals)]

    inputs = (manifest or {}).get("inputs") or []
    if inputs:
        rows = [(i.get("path", ""), i.get("format", ""), i.get("source", ""), i.get("size"))
                for i in inputs[:MAX_LISTED_INPUTS]]
        parts += [h3("Inputs"), table(["file", "format", "source", "bytes"], rows)]
        if len(inputs) > MAX_LISTED_INPUTS:
            parts.append(note(f"... and {len(inputs) - MAX_LISTED_INPUTS} more input files (tokens/manifest.json)"))

    timings = _timings(run)
    if timings:
        parts += [h3("Timings"), table(["stage", "seconds", "measured by"], timings)]
    return Section("overview", "Overview", "rendered", "".join(parts))


def _timings(run: RunDirectory) -> list[tuple[str, Any, str]]:
    rows: list[tuple[str, Any, str]] = []
    state = run.run_state
    if state:
        stages = state.get("stages", {})
        order = [n for n in RUN_STAGE_ORDER if n in stages] + sorted(n for n in stages if n not in RUN_STAGE_ORDER)
        for name in order:
            entry = stages[name]
            if isinstance(entry, dict) and _is_number(entry.get("seconds")) and entry.get("status") in RAN:
                rows.append((name, round(float(entry["seconds"]), 2), f"glm-corpus run ({entry.get('status', '')})"))
    manifest = run.manifest
    if manifest:
        steps: dict[str, float] = {}
        for entry in manifest.get("sources", {}).values():
            for name, stage in entry.get("stages", {}).items():
                steps[name] = steps.get(name, 0.0) + float(stage.get("seconds", 0.0))
        for name in _ordered_stages(steps):
            if steps[name] > 0:  # read and tokenize run interleaved with the steps: no time of their own
                rows.append((f"ingest: {name}", round(steps[name], 3), "worker seconds, all files"))
    stats = run.stats
    if stats and _is_number(stats.get("seconds")):
        rows.append(("masking", stats["seconds"], "train/stats.json"))
    records, _ = run.train_log()
    step_times = [r["step_time_s"] for r in records if _is_number(r.get("step_time_s"))]
    if step_times:
        rows.append(("training steps", round(sum(step_times), 2), f"{len(step_times)} logged steps"))
    return rows


def _ordered_stages(names: Iterable[str]) -> list[str]:
    names = list(names)
    known = [n for n in STAGE_ORDER if n in names]
    return known + sorted(n for n in names if n not in STAGE_ORDER)


def section_documents(run: RunDirectory) -> Section:
    """Documents per source after each ingest step, and tokens per source in shards and training rows."""
    key, title = "documents", "Documents and tokens per source"
    manifest = run.manifest
    if not manifest or not manifest.get("sources"):
        return _not_run(key, title, "no tokens/manifest.json (run `glm-corpus ingest`).")
    sources = manifest["sources"]
    # "read" is the first stage when the manifest has it: its docs_out are the records parsed.
    step_names = _ordered_stages({n for e in sources.values() for n in e.get("stages", {})} - {"tokenize"})
    columns = ["records read"]
    if step_names and step_names[0] != "read":
        columns.append("parsed")
    columns += [f"after {n}" for n in step_names] + ["after dedup"]
    series: dict[str, list[float]] = {}
    rows = []
    for name, entry in sources.items():
        stages = entry.get("stages", {})
        counts = [entry.get("docs_in", 0)]
        if step_names and step_names[0] != "read":
            counts.append(stages.get(step_names[0], {}).get("docs_in", 0))
        counts += [stages.get(n, {}).get("docs_out", 0) for n in step_names]
        counts.append(entry.get("docs_out", 0))
        series[name] = counts
        rows.append((name, *counts))
    retention = {name: [100.0 * c / counts[0] if counts[0] else 0.0 for c in counts]
                 for name, counts in series.items()}
    body = [table(["source", *columns], rows, caption="Documents left after each step"),
            figure(plots.grouped_bars(columns, series, title="Documents per source through ingest",
                                      ylabel="documents"),
                   "documents per source after each ingest step"),
            figure(plots.line_chart(list(range(len(columns))), retention, title="Share of records left after "
                                    "each step", xlabel="", ylabel="% of the source's records",
                                    xticklabels=columns, markers_on_all=True),
                   "share of records left after each ingest step per source")]

    stats = run.stats or {}
    in_rows = stats.get("tokens_per_source", {}) or {}
    token_rows = []
    token_series: dict[str, list[float]] = {"token shards": []}
    if in_rows:
        token_series["training rows"] = []
    for name, entry in sources.items():
        tokens_out = entry.get("tokens_out", 0)
        docs_out = entry.get("docs_out", 0)
        row: list[Any] = [name, tokens_out, tokens_out / docs_out if docs_out else None,
                          entry.get("bytes_in")]
        token_series["token shards"].append(tokens_out)
        if in_rows:
            used = in_rows.get(name, 0)
            row += [used, pct(used / tokens_out, 1) if tokens_out else None]
            token_series["training rows"].append(used)
        token_rows.append(row)
    headers = ["source", "tokens in shards", "tokens per document", "input bytes"]
    if in_rows:
        headers += ["tokens in training rows", "used / available"]
    body += [table(headers, token_rows, caption="Tokens per source (including one <eod> per document)"),
             figure(plots.grouped_bars(list(sources), token_series, title="Tokens per source", ylabel="tokens"),
                    "tokens per source")]
    if not in_rows:
        body.append(note("Training-row token counts appear once the masking stage has run (train/stats.json)."))
    return Section(key, title, "rendered", "".join(body))


def section_drops(run: RunDirectory) -> Section:
    """Why records were dropped, per source (ingest manifest) and per MIP dataset (MIP manifest)."""
    key, title = "drops", "Drop reasons"
    manifest = run.manifest
    mip = run.mip_manifest
    if not manifest and not mip:
        return _not_run(key, title, "no tokens/manifest.json or mip/manifest.json.")
    body: list[str] = []
    if manifest:
        sources = manifest.get("sources", {})
        reasons = sorted({r for e in sources.values() for r in e.get("dropped", {})},
                         key=lambda r: -sum(e.get("dropped", {}).get(r, 0) for e in sources.values()))
        if reasons:
            rows = []
            for reason in reasons:
                counts = [sources[s].get("dropped", {}).get(reason, 0) for s in sources]
                rows.append((reason, *counts, sum(counts)))
            totals = [sum(sources[s].get("dropped", {}).values()) for s in sources]
            rows.append((Markup("<b>total dropped</b>"), *totals, sum(totals)))
            rows.append((Markup("<b>records read</b>"), *[sources[s].get("docs_in", 0) for s in sources],
                         sum(sources[s].get("docs_in", 0) for s in sources)))
            body.append(table(["reason", *sources, "total"], rows, caption="Dropped records per reason and source"))
            series = {s: [sources[s].get("dropped", {}).get(r, 0) for r in reasons] for s in sources}
            body.append(figure(plots.stacked_hbars(reasons, series, title="Dropped records by reason",
                                                   xlabel="records"), "dropped records by reason and source"))
            problems = _accounting_problems(sources)
            if problems:
                body.append(note("Accounting does not balance (docs_in != docs_out + dropped): "
                                 + "; ".join(problems), "warn"))
            else:
                body.append(note("Every record is accounted for: docs_in = docs_out + sum(dropped) per source."))
        else:
            body.append(note("No record was dropped by ingest."))
        examples = manifest.get("drop_examples") or {}
        example_rows = []
        for file_name, per_reason in examples.items():
            if isinstance(per_reason, dict):
                for reason, items in per_reason.items():
                    first = items[0] if isinstance(items, list) and items else items
                    example_rows.append((file_name, reason, _example_text(first)))
        if example_rows:
            body += [h3("Examples of dropped records"),
                     table(["file", "reason", "first example (offset: detail)"], example_rows[:30],
                           numeric_headers=False)]
    else:
        body.append(note("Stage not run: no tokens/manifest.json (ingest).", "missing"))
    if mip:
        mip_sources = mip.get("sources", {})
        mip_rows = [(name, e.get("docs_in"), e.get("docs_out"),
                     ", ".join(f"{r} {n:,}" for r, n in sorted(e.get("dropped", {}).items())) or "none")
                    for name, e in mip_sources.items()]
        if mip_rows:
            body += [h3("MIP records"), table(["dataset", "records", "written", "dropped"], mip_rows)]
    return Section(key, title, "rendered", "".join(body))


def _example_text(example: Any) -> str:
    if isinstance(example, dict):
        offset = example.get("offset")
        detail = example.get("detail") or example.get("reason") or ""
        return f"{offset}: {detail}" if offset is not None else str(detail)
    return str(example)[:200]


def _accounting_problems(sources: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, entry in sources.items():
        dropped = sum(entry.get("dropped", {}).values())
        if entry.get("docs_in", 0) != entry.get("docs_out", 0) + dropped:
            problems.append(f"{name}: {entry.get('docs_in')} != {entry.get('docs_out')} + {dropped}")
    return problems


def section_languages(run: RunDirectory) -> Section:
    """Language of the kept documents per source (fastText lid.176 labels)."""
    key, title = "languages", "Language mix"
    manifest = run.manifest
    if not manifest or not manifest.get("sources"):
        return _not_run(key, title, "no tokens/manifest.json (run `glm-corpus ingest`).")
    sources = manifest["sources"]
    totals: dict[str, int] = {}
    for entry in sources.values():
        for lang, n in entry.get("langs", {}).items():
            totals[lang] = totals.get(lang, 0) + n
    if not totals:
        return Section(key, title, "rendered", note("The manifest records no languages."))
    langs = sorted(totals, key=lambda lang: (-totals[lang], lang))
    grand = sum(totals.values())
    rows = [(lang, *[sources[s].get("langs", {}).get(lang, 0) for s in sources], totals[lang],
             pct(totals[lang] / grand)) for lang in langs]
    top = langs[:8]
    shown = top + (["other"] if len(langs) > len(top) else [])
    series: dict[str, list[float]] = {}
    for lang in shown:
        values = []
        for entry in sources.values():
            counts = entry.get("langs", {})
            kept = sum(counts.values()) or 1
            n = counts.get(lang, 0) if lang != "other" else sum(v for k, v in counts.items() if k not in top)
            values.append(100.0 * n / kept)
        series[lang] = values
    body = table(["language", *sources, "total", "share"], rows, caption="Kept documents per language") + figure(
        plots.stacked_hbars(list(sources), series, title="Language share of kept documents per source",
                            xlabel="% of the source's kept documents"),
        "language share per source")
    return Section(key, title, "rendered", body)


def section_dedup(run: RunDirectory) -> Section:
    """Exact and near dedup: counts, cluster sizes, and the S-curve of the LSH banding used."""
    key, title = "dedup", "Deduplication"
    manifest = run.manifest
    if not manifest:
        return _not_run(key, title, "no tokens/manifest.json (run `glm-corpus ingest`).")
    dedup = manifest.get("dedup") or {}
    if not dedup.get("enabled", False):
        return Section(key, title, "rendered", note("Dedup was disabled in this run (--no-dedup)."))
    near = dedup.get("near") or {}
    config = (manifest.get("config") or {}).get("dedup") or {}
    pairs = [
        ("documents compared", dedup.get("docs")),
        ("exact duplicates dropped", dedup.get("exact_dropped")),
        ("near duplicates dropped", dedup.get("near_dropped")),
        ("Jaccard threshold", near.get("threshold", config.get("threshold"))),
        ("MinHash permutations", near.get("num_perm", config.get("num_perm"))),
        ("LSH bands x rows", f"{near['bands']} x {near['rows']}" if "bands" in near else None),
        ("candidate edges / verified", f"{near.get('candidate_edges', '–')} / {near.get('verified_edges', '–')}"
         if near else None),
        ("near-duplicate clusters", near.get("clusters")),
    ]
    body = [key_values([(k, v) for k, v in pairs if v is not None])]
    cross = dedup.get("cross_source") or {}
    by_source = dedup.get("dropped_by_source") or {}
    if by_source:
        reasons = sorted({r for counts in by_source.values() for r in counts})
        body.append(table(["source", *reasons], [(s, *[c.get(r, 0) for r in reasons]) for s, c in by_source.items()],
                          caption="Duplicates dropped per source"))
    if cross:
        body.append(table(["kept in one source, dropped in another", "documents"], list(cross.items()),
                          caption="Cross-source duplicates"))

    listing = run.dedup_listing()
    similarities: list[float] = []
    if listing is None:
        body.append(note("No tokens/dedup/dropped.parquet: cluster sizes are not available.", "missing"))
    elif not listing:
        body.append(note("No duplicates were found: the listing is empty."))
    else:
        per_cluster: dict[int, int] = {}
        for row in listing:
            cluster = row.get("cluster_id")
            if cluster is not None and cluster >= 0:
                per_cluster[cluster] = per_cluster.get(cluster, 0) + 1
            if row.get("reason") == "duplicate_near" and _is_number(row.get("similarity")):
                similarities.append(float(row["similarity"]))
        sizes: dict[int, int] = {}
        for dropped in per_cluster.values():
            sizes[dropped + 1] = sizes.get(dropped + 1, 0) + 1  # + its survivor
        if sizes:
            body.append(figure(plots.count_histogram(sizes, title="Duplicate clusters by size",
                                                     xlabel="documents in the cluster (survivor included)",
                                                     ylabel="clusters"),
                               "histogram of duplicate cluster sizes",
                               f"{len(per_cluster)} clusters with at least one dropped document "
                               f"({sum(per_cluster.values())} dropped), from tokens/dedup/dropped.parquet"))
    bands, rows = near.get("bands"), near.get("rows")
    threshold = near.get("threshold", config.get("threshold"))
    if (not bands or not rows) and threshold and config.get("near", True):
        from pipeline.dedup.lsh import optimal_bands_rows

        bands, rows = optimal_bands_rows(float(threshold), int(config.get("num_perm", 128)))
    if bands and rows and threshold:
        from pipeline.dedup.lsh import candidate_probability

        grid = [i / 200 for i in range(201)]
        probability = candidate_probability(grid, int(bands), int(rows))
        body.append(figure(
            plots.s_curve(float(threshold), int(bands), int(rows), [float(p) for p in probability], grid,
                          similarities),
            "LSH S-curve",
            f"P(candidate) at the threshold: {float(candidate_probability(float(threshold), bands, rows)):.3f}; "
            f"at s = 0.5: {float(candidate_probability(0.5, bands, rows)):.2e}"))
    return Section(key, title, "rendered", "".join(body))


def truncated_poisson(lam: float, max_length: int) -> list[float]:
    """P(length = k) for k = 0..max_length of Poisson(lam) conditioned on 1 <= k <= max_length."""
    weights = [0.0] + [math.exp(k * math.log(lam) - lam - math.lgamma(k + 1)) for k in range(1, max_length + 1)]
    total = sum(weights)
    return [w / total for w in weights]


def section_masking(run: RunDirectory) -> Section:
    """The masking stats: span lengths vs truncated Poisson, mode and MIP shares, [gMASK] suffixes."""
    key, title = "masking", "Masking (GLM blank infilling)"
    stats = run.stats
    if not stats:
        return _not_run(key, title, "no train/stats.json (run `glm-corpus mask`).")
    config = stats.get("config") or {}
    text = stats.get("text_tokens") or {}
    masked = stats.get("masked_ratio") or {}
    mip = stats.get("mip") or {}
    row_length = config.get("row_length", 2048)
    pairs = [
        ("rows", f"{fmt(stats.get('rows'))} x {fmt(row_length)} tokens" if "rows" in stats else None),
        ("padding", f"{fmt(stats.get('padding_tokens'))} tokens ({pct(stats.get('padding_fraction'), 4)})"
         if "padding_tokens" in stats else None),
        ("segments", ", ".join(f"{k} {fmt(v)}" for k, v in (stats.get("segments") or {}).items()) or None),
        ("text tokens in [MASK] segments", f"{pct(text.get('mask_fraction'))} (target "
         f"{pct(text.get('target_mask_fraction', config.get('mask_fraction')), 0)})" if "mask_fraction" in text
         else None),
        ("masked share of [MASK] windows", f"{pct(masked.get('observed'))} (target {pct(masked.get('target'), 0)})"
         if "observed" in masked else None),
        ("MIP share of row tokens", f"{pct(mip.get('share'))} (target {pct(mip.get('target_share'))})"
         + (" — MIP examples ran out" if mip.get("exhausted") else "") if "share" in mip else None),
        ("bytes per token on disk", f"{stats['bytes_per_token']:.3f}" if _is_number(stats.get("bytes_per_token"))
         else None),
        ("seed", str(stats["seed"]) if "seed" in stats else None),
    ]
    body = [key_values([(k, v) for k, v in pairs if v is not None])]
    images = 0

    shares = _token_shares(stats)
    if shares:
        body.append(table(["part of the rows", "tokens", "share"],
                          [(label, n, pct(n / max(sum(shares.values()), 1))) for label, n in shares.items()]))
        body.append(figure(plots.stacked_hbars(["row tokens"], {k: [100.0 * v / max(sum(shares.values()), 1)]
                                                                for k, v in shares.items()},
                                               title="[MASK] / [gMASK] / MIP shares of all row tokens",
                                               xlabel="% of row tokens"),
                           "token shares", "Text tokens of [MASK] and [gMASK] segments, MIP segment tokens, the "
                           "special tokens the segments add ([MASK], [gMASK], [sop], [eop]), and padding."))
        images += 1

    spans = stats.get("span_lengths") or {}
    histogram = spans.get("histogram")
    if isinstance(histogram, list) and any(histogram):
        count = spans.get("count", sum(histogram))
        expected_fraction = spans.get("expected_fraction")
        if not isinstance(expected_fraction, list) or len(expected_fraction) != len(histogram):
            expected_fraction = truncated_poisson(float(config.get("span_lambda", 3.0)), len(histogram) - 1)
        last = max(i for i, n in enumerate(histogram) if n) + 1
        last = max(last, next((i for i in range(len(expected_fraction) - 1, 0, -1)
                               if expected_fraction[i] * count >= 0.5), 1) + 1)
        lengths = list(range(1, min(last + 1, len(histogram))))
        law = spans.get("law", f"Poisson({config.get('span_lambda', 3.0)}) truncated")
        body.append(figure(
            plots.histogram_vs_expected(lengths, [histogram[k] for k in lengths],
                                        [expected_fraction[k] * count for k in lengths],
                                        title="[MASK] span lengths", xlabel="span length (tokens)",
                                        ylabel="spans", expected_label=f"expected: {law}"),
            "span length histogram",
            f"{fmt(count)} spans, mean {fmt(spans.get('mean'))} (expected {fmt(spans.get('expected_mean'))}); "
            f"chi-square {fmt(spans.get('chi_square'))} on {fmt(spans.get('dof'))} dof, p = {fmt(spans.get('p_value'))}"))
        images += 1

    suffix = stats.get("gmask_suffix") or {}
    observed = suffix.get("observed")
    if isinstance(observed, list) and any(observed):
        expected = suffix.get("expected")
        expected = expected if isinstance(expected, list) and len(expected) == len(observed) else None
        width = 100 / len(observed)
        labels = [f"{width * i:.0f}-{width * (i + 1):.0f}" for i in range(len(observed))]
        body.append(figure(
            plots.histogram_vs_expected(labels, observed, expected, title="[gMASK] suffix lengths",
                                        xlabel="position of the suffix length within its allowed range (%)",
                                        ylabel="segments", expected_label="expected (uniform)"),
            "gMASK suffix length histogram",
            f"{suffix.get('law', '')}; {fmt(suffix.get('segments'))} segments, chi-square "
            f"{fmt(suffix.get('chi_square'))} on {fmt(suffix.get('dof'))} dof, p = {fmt(suffix.get('p_value'))}"))
        images += 1
    if not images:
        body.append(note("train/stats.json has no span-length, share or suffix data to plot.", "warn"))
    return Section(key, title, "rendered", "".join(body))


def _token_shares(stats: Mapping[str, Any]) -> dict[str, int]:
    """Row tokens split into [MASK] text, [gMASK] text, MIP, special tokens and padding (what stats allow)."""
    text = stats.get("text_tokens") or {}
    mip = stats.get("mip") or {}
    tokens = stats.get("tokens")
    parts = {"[MASK] segments (text)": text.get("mask"), "[gMASK] segments (text)": text.get("gmask"),
             "MIP segments": mip.get("slots")}
    if not all(_is_number(v) for v in parts.values()):
        return {}
    shares = {k: int(v) for k, v in parts.items()}
    padding = int(stats.get("padding_tokens") or 0)
    if _is_number(tokens):
        overhead = int(tokens) - sum(shares.values()) - padding
        if overhead > 0:
            shares["special tokens"] = overhead
    if padding:
        shares["padding"] = padding
    return shares


def section_mip(run: RunDirectory) -> Section:
    """MIP datasets: examples available, selected, written, used in rows and audited, against their caps."""
    key, title = "mip", "MIP datasets and caps"
    plan, audit, stats = run.mip_plan, run.audit, run.stats
    plan_sets = (plan or {}).get("datasets") or {}
    audit_sets = (audit or {}).get("datasets") or {}
    used = ((stats or {}).get("mip") or {}).get("examples_per_dataset") or {}
    if not plan_sets and not audit_sets:
        return _not_run(key, title, "no mip/mip-plan.json or audit.json (run `glm-corpus mip`).")
    names = sorted(set(plan_sets) | set(audit_sets))
    rows = []
    for name in names:
        p, a = plan_sets.get(name, {}), audit_sets.get(name, {})
        cap = p.get("cap", a.get("cap"))
        rows.append((name, p.get("family", ""), p.get("available"), p.get("selected"), p.get("written"),
                     cap if cap is not None else "uncapped", used.get(name) if used else None,
                     a.get("samples") if a else None, _flags(p, a)))
    body = []
    if plan:
        token_ratio = plan.get("token_ratio")
        body.append(key_values([("datasets in the plan", len(plan_sets)),
                                ("planned MIP token ratio", pct(token_ratio) if _is_number(token_ratio) else None),
                                ("MIP tokens", (plan.get("totals") or {}).get("tokens"))]))
    body.append(table(["dataset", "family", "available", "selected", "written", "cap", "in training rows",
                       "in audited steps", "flags"], rows, caption="Examples per MIP dataset"))
    series: dict[str, list[float]] = {}
    if plan_sets:
        series["written (mip)"] = [float(plan_sets.get(n, {}).get("written") or 0) for n in names]
    if used:
        series["in training rows"] = [float(used.get(n, 0)) for n in names]
    if audit_sets:
        series["in audited steps"] = [float(audit_sets.get(n, {}).get("samples") or 0) for n in names]
    caps = [plan_sets.get(n, {}).get("cap", audit_sets.get(n, {}).get("cap")) for n in names]
    if any(c is not None for c in caps):
        series["cap"] = [float(c) if c is not None else 0.0 for c in caps]
    values = [v for s in series.values() for v in s if v > 0]
    if values:
        log_scale = max(values) / min(values) > 50
        body.append(figure(_mip_chart(names, series, log_scale), "MIP datasets against their caps",
                           "Uncapped datasets have no cap bar." + (" Log scale." if log_scale else "")))
    return Section(key, title, "rendered", "".join(body))


def _mip_chart(names: list[str], series: dict[str, list[float]], log_scale: bool) -> str:
    return plots.grouped_bars(names, series, title="MIP examples per dataset vs cap", ylabel="examples",
                              log=log_scale)


def _flags(plan_entry: Mapping[str, Any], audit_entry: Mapping[str, Any]) -> str:
    flags = []
    if plan_entry.get("do_not_evaluate") or audit_entry.get("do_not_evaluate"):
        flags.append("do-not-evaluate")
    if plan_entry.get("eval"):
        flags.append("evaluation set")
    if audit_entry and audit_entry.get("planned") is False:
        flags.append("not planned")
    if plan_entry and plan_entry.get("planned") is False:
        flags.append("planned, nothing written")
    return ", ".join(flags)


def section_audit(run: RunDirectory) -> Section:
    """The audit's findings, MIP ratio over the steps, and n-gram contamination (DESIGN §6 `audit --json`)."""
    key, title = "audit", "Audit: violations and contamination"
    audit = run.audit
    if not audit:
        return _not_run(key, title, "no audit.json (run `glm-corpus audit --train DIR --plan FILE --output audit.json`).")
    steps = audit.get("steps")
    ratio = audit.get("ratio") if isinstance(audit.get("ratio"), dict) else {}
    observed = audit.get("mip_token_ratio")
    pairs = [
        ("steps audited", f"{steps[0]} to {steps[1]}" if isinstance(steps, list) and len(steps) == 2 else steps),
        ("MIP token ratio in those steps", (pct(observed) + (f" (plan {pct(ratio['target'])} ± "
                                                              f"{pct(ratio['tolerance'])})"
                                                              if _is_number(ratio.get("target"))
                                                              and _is_number(ratio.get("tolerance")) else ""))
         if _is_number(observed) else None),
        ("MIP datasets seen", len(audit.get("datasets") or {})),
        ("on the do-not-evaluate list", ", ".join(audit["do_not_evaluate_seen"]) or "none"
         if isinstance(audit.get("do_not_evaluate_seen"), list) else None),
    ]
    body = [key_values([(k, v) for k, v in pairs if v is not None])]
    violations = [v for v in audit.get("violations") or [] if isinstance(v, dict)]
    failing = [v for v in violations if v.get("fails", True)]
    failed = audit.get("failed", bool(failing))
    if failed:
        body.append(f'<p class="note warn"><b>The audit fails</b>: {len(failing)} failing finding(s) of '
                    f"{len(violations)}.</p>")
    elif violations:
        body.append(f'<p class="note ok">The audit passes: {len(violations)} finding(s) reported, none failing '
                    "under the plan's policy.</p>")
    else:
        body.append('<p class="note ok">The audit passes with no findings: every MIP dataset is planned and '
                    "within its cap, and no evaluation set overlaps the training rows.</p>")
    if violations:
        body.append(table(["kind", "dataset", "detail", "fails"],
                          [(v.get("kind", ""), v.get("dataset", ""), v.get("detail", ""),
                            Markup("<b>FAIL</b>") if v.get("fails", True) else "note") for v in violations],
                          numeric_headers=False))
    windows = [w for w in audit.get("windows") or [] if isinstance(w, dict) and _is_number(w.get("mip_token_ratio"))]
    if len(windows) >= 2:
        labels = [f"{w['steps'][0]}:{w['steps'][1]}" if isinstance(w.get("steps"), list) else str(i)
                  for i, w in enumerate(windows)]
        lines = {"MIP token ratio": [100 * w["mip_token_ratio"] for w in windows]}
        if _is_number(ratio.get("target")):
            lines["plan"] = [100 * ratio["target"]] * len(windows)
            if all(_is_number(w.get("tolerance")) for w in windows):
                lines["plan + tolerance"] = [100 * (ratio["target"] + w["tolerance"]) for w in windows]
        body.append(figure(plots.line_chart(list(range(len(windows))), lines, title="MIP token ratio per step window",
                                            xlabel="steps", ylabel="% of tokens", xticklabels=labels),
                           "MIP token ratio per step window",
                           "MIP arrives row by row, so short windows swing widely; the tolerance shrinks with the "
                           "window's tokens."))
    contamination = audit.get("contamination") or {}
    if contamination:
        body.append(table(["evaluation set", "examples", "contaminated", "fraction"],
                          [(name, c.get("examples"), c.get("contaminated"), pct(c.get("fraction"))
                            if _is_number(c.get("fraction")) else None) for name, c in contamination.items()],
                          caption="n-gram overlap between training rows and evaluation sets"))
    else:
        body.append(note("No evaluation sets were given to the audit (--eval): contamination was not measured."))
    return Section(key, title, "rendered", "".join(body))


def section_training(run: RunDirectory) -> Section:
    """The reference trainer's loss curve (from a per-step log under checkpoints/) and its last checkpoint."""
    key, title = "training", "Training"
    if not run.exists(CHECKPOINTS):
        return _not_run(key, title, "no checkpoints/ (run `glm-corpus train --out RUN/checkpoints`).")
    records, files = run.train_log()
    meta = run.checkpoint_meta()
    body: list[str] = []
    if meta:
        config = meta.get("config") or {}
        model = config.get("model") or {}
        body.append(key_values([(k, v) for k, v in [
            ("latest checkpoint: step", meta.get("step")),
            ("samples consumed", meta.get("consumed_samples")),
            ("global batch size", meta.get("global_batch_size")),
            ("tensor x data parallel", f"{meta.get('tp')} x {meta.get('dp')}" if "tp" in meta else None),
            ("model", f"{model.get('num_layers')} layers, hidden {model.get('hidden_size')}, "
                      f"{model.get('num_heads')} heads" if model else None),
            ("precision", config.get("precision")),
        ] if v is not None]))
    if records:
        steps = [r["step"] for r in records]
        losses = [float(r["loss"]) for r in records]
        lines = {"loss": losses}
        if len(losses) >= 10:
            window = max(2, len(losses) // 10)
            lines[f"running mean ({window} steps)"] = [
                sum(losses[max(0, i - window + 1): i + 1]) / (i + 1 - max(0, i - window + 1))
                for i in range(len(losses))]
        body.append(figure(plots.line_chart(steps, lines, title="Training loss", xlabel="step",
                                            ylabel="loss (mean token cross-entropy)"),
                           "training loss curve",
                           f"{len(records)} steps from {', '.join(p.name for p in files)}; "
                           f"first {losses[0]:.4f}, last {losses[-1]:.4f}"))
    else:
        body.append(note("The trainer left no per-step log under checkpoints/ (a *.jsonl file of the records "
                         "`glm-corpus train --json` prints, or its text lines in a *.log file); no loss curve.",
                         "missing"))
    return Section(key, title, "rendered", "".join(body))


SECTIONS: tuple[tuple[str, str, Callable[[RunDirectory], Section]], ...] = (
    ("overview", "Overview", section_overview),
    ("documents", "Documents and tokens per source", section_documents),
    ("drops", "Drop reasons", section_drops),
    ("languages", "Language mix", section_languages),
    ("dedup", "Deduplication", section_dedup),
    ("masking", "Masking (GLM blank infilling)", section_masking),
    ("mip", "MIP datasets and caps", section_mip),
    ("audit", "Audit: violations and contamination", section_audit),
    ("training", "Training", section_training),
)
"""(anchor, title, builder) of every section, in page order."""


# ------------------------------------------------------------------------------------------------- page

CSS = """
body{font:14px/1.45 -apple-system,"Segoe UI",Roboto,"Noto Sans",Helvetica,Arial,sans-serif;color:#1d2329;
margin:0;background:#f6f7f9}
main{max-width:1040px;margin:0 auto;padding:24px 28px 60px;background:#fff;min-height:100vh}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:36px 0 10px;padding-top:10px;border-top:1px solid #e3e6ea}
h3{font-size:15px;margin:20px 0 6px}.sub{color:#5b6570;margin:0 0 16px}
nav{display:flex;flex-wrap:wrap;gap:6px;margin:12px 0 4px}nav a{padding:3px 9px;border-radius:12px;
background:#eef2f7;color:#234;text-decoration:none;font-size:13px}nav a.not-run{background:#f3f3f3;color:#8a8f95}
nav a.failed{background:#fbe3e1;color:#8a2119}
table{border-collapse:collapse;margin:8px 0 14px;font-size:13px}caption{text-align:left;color:#5b6570;
padding-bottom:4px;font-size:12.5px}th,td{padding:4px 10px;border-bottom:1px solid #e6e8eb;text-align:left;
vertical-align:top}thead th{background:#f2f4f7;border-bottom:1px solid #cfd4da}.num{text-align:right;
font-variant-numeric:tabular-nums;white-space:nowrap}table.kv th{font-weight:600;color:#37414b;background:none}
figure{margin:10px 0 18px}figure img{max-width:100%;height:auto;display:block}figcaption{color:#5b6570;
font-size:12.5px;margin-top:2px}.note{padding:7px 11px;border-radius:4px;background:#eef4fb;border-left:3px solid
#3b6ea8}.note.missing{background:#f5f5f5;border-color:#a0a6ad;color:#505860}.note.warn{background:#fdf0e6;
border-color:#e08a2c}.note.ok{background:#edf7ef;border-color:#4b9a5b}span.missing{color:#a33}
footer{margin-top:40px;color:#8a8f95;font-size:12px}
"""


def render_page(run: RunDirectory, sections: Sequence[Section]) -> str:
    nav = "".join(
        f'<a href="#{s.key}" class="{s.status.replace(" ", "-")}">{esc(s.title)}</a>' for s in sections
    )
    blocks = "".join(
        f'<section id="{s.key}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections
    )
    name = run.path.resolve().name
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,'
        f'initial-scale=1"><title>glm-corpus report: {esc(name)}</title><style>{CSS}</style></head><body><main>'
        f"<h1>glm-corpus run report</h1><p class=\"sub\">{esc(run.path.resolve())}</p><nav>{nav}</nav>{blocks}"
        "<footer>Generated by <code>glm-corpus report</code>. Self-contained: plots are embedded PNGs, no "
        "external assets.</footer></main></body></html>\n"
    )


def build_sections(run: RunDirectory) -> list[Section]:
    """Every section in page order; a section whose inputs are malformed says so instead of failing the page."""
    sections = []
    for key, title, builder in SECTIONS:
        try:
            sections.append(builder(run))
        except SECTION_ERRORS as exc:
            log.warning("report section %r failed: %r", key, exc)
            sections.append(Section(key, title, "failed", note(
                f"This section could not be rendered from its inputs ({type(exc).__name__}: {exc}); the files "
                "may come from another version of glm-corpus.", "warn")))
    return sections


def build_report(run_dir: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Write the HTML report of `run_dir` to `out` (default RUN_DIR/report.html); return a summary.

    Summary: `path`, `bytes`, `images`, and `sections` ({key: "rendered" | "not run" | "failed"})."""
    run = RunDirectory(run_dir)
    if not run.path.is_dir():
        raise GLMCorpusError(f"{run.path} is not a directory; give the output directory of a run (e.g. demo-out)")
    if not any(run.exists(rel) for rel in KNOWN_INPUTS):
        raise GLMCorpusError(
            f"{run.path} holds none of {', '.join(KNOWN_INPUTS)}: is it a run directory? "
            f"(`glm-corpus demo --out DIR` or `glm-corpus run CONFIG` make one)"
        )
    run.check_inputs()
    sections = build_sections(run)
    page = render_page(run, sections)
    target = Path(out) if out is not None else run.path / REPORT_FILE
    atomic_write_text(target, page)
    return {
        "path": str(target),
        "bytes": len(page.encode("utf-8")),
        "images": sum(s.images for s in sections),
        "sections": {s.key: s.status for s in sections},
    }
