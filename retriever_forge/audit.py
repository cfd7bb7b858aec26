"""An audit of one artifact, end to end: the report an auditor reads.

:func:`build_audit` walks an artifact's lineage back to the corpus and gathers, for every
artifact on the way, what its manifest recorded (run, times, machine, packages, code version,
config, models, prompts, sampling, seeds) plus what is true *now*: each artifact is re-hashed
against its bytes (:func:`retriever_forge.provenance.verify_artifact`), so a report can say which
artifact and which file no longer match. It also samples the LLM-made tables (generated queries
with their source passages and filter outcomes, judged pairs with their grades, mined negatives
with their drop reasons), lists the asset check results of the runs involved (read from a
Dagster instance by the caller, failures and warnings first) and the scoreboard.

:func:`audit_html` renders a self-contained HTML page (inline CSS and an inline SVG lineage graph
drawn here, no external assets); :func:`audit_markdown` the same content as Markdown (the graph
as a Mermaid block).

Example:
    >>> import polars as pl, tempfile
    >>> from retriever_forge.artifacts import ArtifactStore
    >>> from retriever_forge.provenance import build_manifest
    >>> store = ArtifactStore(tempfile.mkdtemp())
    >>> a = store.put_table(pl.DataFrame({"doc_id": ["d1"], "title": [""], "text": ["x"]}), "corpus")
    >>> _ = store.write_manifest(a, build_manifest(a, asset="corpus", upstream={}, rows=1))
    >>> report = build_audit(store, a.hash)
    >>> report["ok"], report["artifacts"][0]["asset"]
    (True, 'corpus')
    >>> page = audit_html(report)
    >>> "<svg" in page and not any(s in page for s in ("<link", "src=", "<script", "@import"))
    True
"""

from __future__ import annotations

import html
import json

import polars as pl

from retriever_forge.artifacts import ArtifactRef, ArtifactStore
from retriever_forge.provenance import resolve, verify_artifact

SAMPLE_ROWS = 5
_PASSAGE_CHARS = 280
_SEVERITY_ORDER = {"ERROR": 0, "WARN": 1}


# --------------------------------------------------------------------------- the lineage graph


def lineage_graph(store: ArtifactStore, content_hash: str) -> dict[str, dict]:
    """Every artifact an artifact was computed from (itself included), by full hash.

    Each entry: ``ref``, ``manifest`` and ``upstream`` (input name -> hash), and ``layer``
    (0 for artifacts with no upstream, else one more than the deepest upstream).
    """
    ref, manifest = resolve(store, content_hash)
    graph: dict[str, dict] = {}
    stack = [(ref, manifest)]
    while stack:
        ref, manifest = stack.pop()
        if ref.hash in graph:
            continue
        upstream = {name: u["hash"] for name, u in (manifest.get("upstream") or {}).items()}
        graph[ref.hash] = {"ref": ref, "manifest": manifest, "upstream": upstream}
        for h in upstream.values():
            if h not in graph:
                stack.append(resolve(store, h))

    def layer(h: str) -> int:
        node = graph[h]
        if "layer" not in node:
            node["layer"] = 1 + max((layer(u) for u in node["upstream"].values()), default=-1)
        return node["layer"]

    for h in graph:
        layer(h)
    return graph


def topological(graph: dict[str, dict]) -> list[str]:
    """Hashes ordered corpus first, the audited artifact last (by layer, then asset name)."""
    return sorted(graph, key=lambda h: (graph[h]["layer"], graph[h]["manifest"].get("asset") or "", h))


# --------------------------------------------------------------------------- config vs defaults


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values).

    >>> flatten({"a": {"b": 1, "c": [1, 2]}, "d": None})
    {'a.b': 1, 'a.c': [1, 2], 'd': None}
    """
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_rows(config: dict, defaults: dict | None) -> list[dict]:
    """One row per config key: value, default (when known) and whether it differs.

    >>> config_rows({"depth": 50, "x": 1}, {"depth": 100, "x": 1})
    [{'key': 'depth', 'value': 50, 'default': 100, 'changed': True, 'known': True}, {'key': 'x', 'value': 1, 'default': 1, 'changed': False, 'known': True}]
    >>> config_rows({"templates": {"question": "q.txt"}}, {"templates": {}})[0]["changed"]
    True
    """
    flat, flat_defaults = flatten(config), flatten(defaults or {})
    rows = []
    for key in sorted(flat):
        # A key under a default that is an empty mapping (templates: {}) is a change from "unset".
        parents = [key.rsplit(".", i)[0] for i in range(1, key.count(".") + 1)]
        known = key in flat_defaults or any(p in flat_defaults for p in parents)
        default = flat_defaults.get(key)
        rows.append({"key": key, "value": flat[key], "default": default if known else None,
                     "changed": known and _canon(flat[key]) != _canon(default), "known": known})  # fmt: skip
    return rows


def _canon(v):
    return json.dumps(v, sort_keys=True, default=str)


def comparison_text(v) -> str | None:
    """A scoreboard's paired comparison (``{delta, p_value[_holm], ...}``) as ``+0.0123 (p=0.031)``.

    >>> comparison_text({"delta": 0.01234, "p_value": 0.5, "p_value_holm": 0.031}), comparison_text({"x": 1})
    ('+0.0123 (p=0.031)', None)
    """
    if not (isinstance(v, dict) and "delta" in v):
        return None
    p = v.get("p_value_holm", v.get("p_value"))
    return f"{v['delta']:+.4f}" + (f" (p={p:.3f})" if isinstance(p, int | float) else "")


# --------------------------------------------------------------------------- samples


def _read(store: ArtifactStore, ref: ArtifactRef) -> pl.DataFrame | None:
    try:
        return store.read_table(ref)
    except Exception:  # noqa: BLE001 - a corrupted table is reported by verification; the sample is skipped
        return None


def _snippet(text: str | None, n: int = _PASSAGE_CHARS) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


def _by_asset(graph: dict[str, dict]) -> dict[str, ArtifactRef]:
    """The artifact of each asset in the lineage (the one nearest the target when several)."""
    out = {}
    for h in sorted(graph, key=lambda h: -graph[h]["layer"]):
        out.setdefault(graph[h]["manifest"].get("asset"), graph[h]["ref"])
    return out


def samples(store: ArtifactStore, graph: dict[str, dict], n: int = SAMPLE_ROWS) -> dict:
    """What the LLM saw and wrote, and what the filters decided, as small tables (dict rows)."""
    refs = _by_asset(graph)
    corpus = _read(store, refs["corpus"]) if "corpus" in refs else None
    passages = {}
    if corpus is not None:
        passages = {d: f"{t}: {x}" if t else x for d, t, x in corpus.select("doc_id", "title", "text").iter_rows()}
    out: dict[str, dict] = {}
    queries = _read(store, refs["synthetic_queries"]) if "synthetic_queries" in refs else None
    query_text = dict(zip(queries["query_id"], queries["text"], strict=True)) if queries is not None else {}
    if queries is not None:
        outcome = queries.with_columns(pl.col("dropped_by").fill_null("kept").alias("outcome"))
        counts = outcome.group_by("outcome").len().sort("len", descending=True)
        picked = pl.concat([outcome.filter(pl.col("outcome") == "kept").head(n),
                            outcome.filter(pl.col("outcome") != "kept").head(n)])  # fmt: skip
        out["synthetic_queries"] = {
            "title": "Generated queries, their source passages and filter outcomes",
            "counts": {r["outcome"]: r["len"] for r in counts.iter_rows(named=True)},
            "rows": [{"query_id": r["query_id"], "style": r["style"], "query": r["text"] or "", "raw_output": _snippet(r["raw_output"], 160),
                      "outcome": r["outcome"], "split": r["split"], "source passage": _snippet(passages.get(r["doc_id"]))}
                     for r in picked.iter_rows(named=True)],
        }  # fmt: skip
    judged = _read(store, refs["relevance_judgments"]) if "relevance_judgments" in refs else None
    if judged is not None:
        dist = judged.group_by("pair_type", "grade").len().sort("pair_type", "grade")
        means = judged.group_by("pair_type").agg(pl.col("expected_grade").mean().round(3)).sort("pair_type")
        counts = {f"{r['pair_type']} grade {r['grade']}": r["len"] for r in dist.iter_rows(named=True)}
        counts.update({f"{r['pair_type']} mean expected grade": r["expected_grade"] for r in means.iter_rows(named=True)})
        picked = pl.concat(
            [judged.filter(pl.col("pair_type") == "source").head(n), judged.filter(pl.col("pair_type") == "candidate").head(n)]
        )
        out["relevance_judgments"] = {
            "title": "Judged pairs: grades and their distribution",
            "counts": counts,
            "rows": [{"query": query_text.get(r["query_id"], r["query_id"]), "pair": r["pair_type"], "rank": r["retrieval_rank"],
                      "grade": r["grade"], "expected grade": round(r["expected_grade"], 3), "passage": _snippet(passages.get(r["doc_id"]))}
                     for r in picked.iter_rows(named=True)],
        }  # fmt: skip
    negatives = _read(store, refs["hard_negatives"]) if "hard_negatives" in refs else None
    if negatives is not None:
        outcome = negatives.with_columns(pl.col("dropped_by").fill_null("kept").alias("outcome"))
        counts = outcome.group_by("outcome").len().sort("len", descending=True)
        picked = pl.concat([outcome.filter(pl.col("outcome") != "kept").head(n), outcome.filter(pl.col("outcome") == "kept").head(n)])
        out["hard_negatives"] = {
            "title": "Mined negatives and why candidates were dropped",
            "counts": {r["outcome"]: r["len"] for r in counts.iter_rows(named=True)},
            "rows": [{"query": query_text.get(r["query_id"], r["query_id"]), "rank": r["rank"], "score": round(r["score"], 4),
                      "positive score": round(r["positive_score"], 4) if r["positive_score"] is not None else None,
                      "judged grade": None if r["judged_grade"] is None else round(r["judged_grade"], 3),
                      "outcome": r["outcome"], "candidate passage": _snippet(passages.get(r["doc_id"]))}
                     for r in picked.iter_rows(named=True)],
        }  # fmt: skip
    return out


def scoreboard(store: ArtifactStore, ref: ArtifactRef, extra_rows: list[dict] | None = None) -> list[dict] | None:
    """Mean measures per system from a ``benchmark_scores`` table; fields of ``extra_rows`` (the
    scoreboard file the benchmark wrote, e.g. significance tests) are merged in by system."""
    table = _read(store, ref)
    if table is None or "system" not in table.columns:
        return None
    measures = [c for c in table.columns if c not in ("system", "query_id")]
    order = list(dict.fromkeys(table["system"].to_list()))
    agg = table.group_by("system").agg(pl.len().alias("queries"), *[pl.col(m).mean().round(4) for m in measures])
    rows = {r["system"]: r for r in agg.iter_rows(named=True)}
    extra = {r.get("system"): r for r in (extra_rows or [])}
    out = []
    for system in order:
        row = dict(rows[system])
        for k, v in (extra.get(system) or {}).items():
            row.setdefault(k, v)
        out.append(row)
    return out


# --------------------------------------------------------------------------- the report


def prompt_record(record: dict) -> dict:
    """A prompt as the report shows it: the recorded text, or the template file's text when the
    manifest predates text recording (marked as such, and checked against the recorded hash)."""
    out = dict(record)
    if record.get("text") is not None:
        out["text_source"] = "recorded in the manifest"
        return out
    from retriever_forge.prompts import load_template

    try:
        current = load_template(record.get("id", ""))
    except FileNotFoundError:
        out["text"], out["text_source"] = None, "not recorded, and the template file no longer exists"
        return out
    same = current.hash == record.get("hash")
    out["text"] = current.text
    out["text_source"] = ("template file (its hash matches the recorded one)" if same else
                          f"template file NOW — it has changed since (hash {current.hash[:12]}), not the text the run used")  # fmt: skip
    return out


def build_audit(
    store: ArtifactStore,
    content_hash: str,
    *,
    config_defaults: dict[str, dict] | None = None,
    check_results: list[dict] | None = None,
    checks_note: str | None = None,
    scoreboard_extra: list[dict] | None = None,
    sample_rows: int = SAMPLE_ROWS,
) -> dict:
    """Everything the report shows, as plain data (see the module docstring).

    Args:
        config_defaults: per asset, its config's default values (marks the values a run changed).
        check_results: asset check evaluations of the runs in the lineage, each ``{asset,
            check_name, passed, severity, run_id, metadata}``; None when no instance was reachable.
        checks_note: what the report says about where the check results came from.
        scoreboard_extra: rows of the scoreboard file on disk (extra per-system fields).
    """
    graph = lineage_graph(store, content_hash)
    order = topological(graph)
    artifacts, failures = [], []
    for h in order:
        node = graph[h]
        ref, m = node["ref"], node["manifest"]
        check = verify_artifact(store, ref, m)
        if not check["ok"]:
            failures.append({"asset": m.get("asset"), "hash": h, "problems": check["problems"]})
        artifacts.append({
            "asset": m.get("asset"), "partition": m.get("partition"), "kind": ref.kind, "hash": h, "format": ref.format,
            "path": ref.payload_uri, "verified": check, "rows": m.get("rows"), "run_id": m.get("run_id"),
            "started_at": m.get("started_at"), "finished_at": m.get("finished_at"), "hardware": m.get("hardware") or {},
            "operator": m.get("operator") or {}, "packages": m.get("packages") or {}, "code_version": m.get("code_version"),
            "git_commit": m.get("git_commit"), "config": config_rows(m.get("config") or {}, (config_defaults or {}).get(m.get("asset"))),
            "models": m.get("models") or {}, "prompts": {k: prompt_record(v) for k, v in (m.get("prompts") or {}).items()},
            "sampling": m.get("sampling") or {}, "seeds": m.get("seeds") or {}, "extra": m.get("extra") or {},
            "upstream": node["upstream"], "layer": node["layer"],
        })  # fmt: skip
    target = graph[resolve(store, content_hash)[0].hash]
    checks = None
    if check_results is not None:
        checks = sorted(check_results, key=lambda c: (bool(c.get("passed")), _SEVERITY_ORDER.get(str(c.get("severity")), 2),
                                                     c.get("asset") or "", c.get("check_name") or ""))  # fmt: skip
    board = None
    if target["manifest"].get("asset") == "benchmark_scores":
        board = scoreboard(store, target["ref"], scoreboard_extra)
    return {
        "target": {"asset": target["manifest"].get("asset"), "partition": target["manifest"].get("partition"), "hash": target["ref"].hash},
        "store": store.root,
        "ok": not failures,
        "failures": failures,
        "artifacts": artifacts,
        "samples": samples(store, graph, sample_rows),
        "checks": checks,
        "checks_note": checks_note
        or ("no Dagster instance was reachable: asset check results are not shown" if check_results is None else None),  # fmt: skip
        "scoreboard": board,
    }


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232a;background:#f5f6f8}
main{max-width:1320px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:34px 0 10px;border-bottom:2px solid #dde1e6;padding-bottom:4px}
h3{font-size:16px;margin:0 0 6px}code,.mono{font:12.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.sub{color:#5b6573;margin:0 0 14px}.banner{padding:12px 16px;border-radius:8px;margin:16px 0;font-weight:600}
.banner.ok{background:#e3f4e8;border:1px solid #9fd3ae;color:#175c2c}.banner.bad{background:#fde8e8;border:1px solid #f0a3a3;color:#8a1c1c}
.banner ul{margin:6px 0 0;font-weight:400}
.card{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:14px 16px;margin:12px 0}
.card.bad{border-color:#e07070;box-shadow:0 0 0 2px #fbd5d5}
table{border-collapse:collapse;width:100%;margin:6px 0 10px;font-size:13px}th,td{border-bottom:1px solid #e7eaee;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.kv td:first-child{width:170px;color:#5b6573;white-space:nowrap}
.pass{color:#17803d;font-weight:600}.fail{color:#c62828;font-weight:700}.warn{color:#b26a00;font-weight:700}
tr.changed td{background:#fff6d6}.tag{display:inline-block;padding:0 6px;border-radius:4px;background:#ffe7a3;color:#6b4d00;font-size:11.5px;margin-left:4px}
pre{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:6px;padding:10px;white-space:pre-wrap;word-break:break-word;max-height:360px;overflow:auto;font-size:12.5px}
details summary{cursor:pointer;color:#2b5fab}.graph{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:8px;overflow-x:auto}
ul.tree{list-style:none;padding-left:18px;margin:4px 0}ul.tree li{margin:2px 0}ul.tree>li{padding-left:0}
td code{word-break:break-word}td.nowrap,td.nowrap code{white-space:nowrap;word-break:normal}.graph svg{display:block;margin:0 auto}
.counts span{display:inline-block;background:#eef1f5;border-radius:4px;padding:1px 7px;margin:2px 4px 2px 0;font-size:12.5px}
"""


def _e(v) -> str:
    return html.escape("" if v is None else str(v))


def _verified_mark(check: dict) -> str:
    return '<span class="pass">✔ verified</span>' if check["ok"] else '<span class="fail">✘ HASH MISMATCH</span>'


def lineage_svg(artifacts: list[dict], target_hash: str) -> str:
    """The lineage as an inline SVG, top to bottom: one row per layer (the corpus first).

    Edges between adjacent rows are short curves; an edge that skips rows runs down its own lane
    to the right of the nodes, so no edge crosses a box.
    """
    box_w, box_h, col_w, row_h, pad, lane = 200, 54, 222, 84, 14, 13
    rows: dict[int, list[dict]] = {}
    for a in artifacts:
        rows.setdefault(a["layer"], []).append(a)
    pos = {}
    for layer, items in rows.items():
        for i, a in enumerate(sorted(items, key=lambda a: a["asset"] or "")):
            pos[a["hash"]] = (pad + i * col_w, pad + layer * row_h)
    by_hash = {a["hash"]: a for a in artifacts}
    long_edges = [(u, a["hash"]) for a in artifacts for u in a["upstream"].values()
                  if u in pos and by_hash[u]["layer"] < a["layer"] - 1]  # fmt: skip
    nodes_right = pad + (max(len(v) for v in rows.values()) - 1) * col_w + box_w if rows else 100
    width = nodes_right + pad + lane * (len(long_edges) + 1)
    height = pad * 2 + (max(rows) if rows else 0) * row_h + box_h
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             'role="img" aria-label="lineage graph" style="max-width:100%;height:auto" font-family="system-ui,sans-serif">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
             '<path d="M0,0 L10,5 L0,10 z" fill="#8a94a3"/></marker></defs>']  # fmt: skip
    edge = 'fill="none" stroke="#a6afbb" stroke-width="1.4" marker-end="url(#arrow)"'
    lane_of = {e: k for k, e in enumerate(long_edges)}
    for a in artifacts:
        x2, y2 = pos[a["hash"]]
        for up in a["upstream"].values():
            if up not in pos:
                continue
            x1, y1 = pos[up]
            if (up, a["hash"]) in lane_of:
                lx = nodes_right + pad + lane * (lane_of[(up, a["hash"])] + 1)
                sy, ey = y1 + box_h / 2, y2 + box_h / 2
                parts.append(f'<path d="M{x1 + box_w},{sy} H{lx - 6} Q{lx},{sy} {lx},{sy + 6} V{ey - 6} Q{lx},{ey} {lx - 6},{ey} '
                             f'H{x2 + box_w + 2}" {edge}/>')  # fmt: skip
            else:
                sx, sy, ex, ey = x1 + box_w / 2, y1 + box_h, x2 + box_w / 2, y2
                mid = (sy + ey) / 2
                parts.append(f'<path d="M{sx},{sy} C{sx},{mid} {ex},{mid} {ex},{ey - 2}" {edge}/>')
    for a in artifacts:
        x, y = pos[a["hash"]]
        ok = a["verified"]["ok"]
        fill, stroke = ("#e9f6ed", "#3a9a5b") if ok else ("#fde3e3", "#c62828")
        width_px = 3 if a["hash"] == target_hash else 1.5
        mark = "✔ verified" if ok else "✘ HASH MISMATCH"
        rows_text = "" if a["rows"] is None else f" · {a['rows']} rows"
        parts.append(
            f'<a href="#a-{a["hash"][:16]}"><g><title>{_e(a["asset"])} {a["hash"]}</title>'
            f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="7" fill="{fill}" stroke="{stroke}" stroke-width="{width_px}"/>'
            f'<text x="{x + 10}" y="{y + 19}" font-size="14" font-weight="600" fill="#1d232a">{_e(a["asset"])}</text>'
            f'<text x="{x + 10}" y="{y + 35}" font-size="11.5" fill="#5b6573" font-family="monospace">{a["hash"][:12]}{_e(rows_text)}</text>'
            f'<text x="{x + 10}" y="{y + 49}" font-size="11.5" font-weight="600" fill="{stroke}">{mark}</text></g></a>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _tree_html(artifacts: list[dict], target_hash: str) -> str:
    by_hash = {a["hash"]: a for a in artifacts}
    seen: set[str] = set()

    def item(h: str) -> str:
        a = by_hash[h]
        label = (f'<a href="#a-{h[:16]}"><b>{_e(a["asset"])}</b></a> <code>{h[:12]}</code> {_verified_mark(a["verified"])}'
                 f' · rows={_e(a["rows"])} · run <code>{_e((a["run_id"] or "")[:8])}</code>')  # fmt: skip
        if h in seen:
            return f"<li>{label} <i>(see above)</i></li>"
        seen.add(h)
        kids = "".join(item(u) for u in a["upstream"].values() if u in by_hash)
        return f"<li>{label}" + (f'<ul class="tree">{kids}</ul>' if kids else "") + "</li>"

    return f'<ul class="tree">{item(target_hash)}</ul>'


def _table(rows: list[dict], cols: list[str] | None = None) -> str:
    if not rows:
        return "<p><i>none</i></p>"
    cols = cols or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)

    def cell(v) -> str:
        if isinstance(v, float):
            return f'<td class="num">{v:.4f}</td>'
        if isinstance(v, int) and not isinstance(v, bool):
            return f'<td class="num">{v}</td>'
        if comparison_text(v) is not None:
            return f'<td class="num">{_e(comparison_text(v))}</td>'
        if isinstance(v, dict):  # e.g. the hybrid rows' fusion record: "key: value" pairs read better than JSON in a cell
            pairs = (f"{k}: {json.dumps(x, default=str) if isinstance(x, dict | list) else x}" for k, x in v.items())
            return f"<td><code>{_e('; '.join(pairs))}</code></td>"
        if isinstance(v, list):
            return f"<td><code>{_e(json.dumps(v, default=str))}</code></td>"
        return f"<td>{_e(v)}</td>"

    body = "".join("<tr>" + "".join(cell(r.get(c)) for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _kv(pairs: list[tuple[str, str]]) -> str:
    return '<table class="kv">' + "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in pairs) + "</table>"


def _artifact_html(a: dict) -> str:
    v = a["verified"]
    problems = "".join(f"<li><b>{_e(p['issue'])}</b>: <code>{_e(p['file'])}</code> (expected <code>{_e((p['expected'] or '')[:16])}</code>, "
                       f"now <code>{_e((p['actual'] or 'absent')[:16])}</code>)</li>" for p in v["problems"])  # fmt: skip
    hw, op = a["hardware"], a["operator"]
    machine = ", ".join(f"{k}={v}" for k, v in hw.items())
    facts = [
        ("kind / format", f"{_e(a['kind'])} / {_e(a['format'])}"),
        ("content hash", f"<code>{a['hash']}</code>"),
        ("verified now", _verified_mark(v) + (f"<ul>{problems}</ul>" if problems else "")),
        ("path", f"<code>{_e(a['path'])}</code>"),
        ("rows", _e(a["rows"])),
        ("run id", f"<code>{_e(a['run_id'])}</code>"),
        ("started / finished", f"{_e(a['started_at'])} → {_e(a['finished_at'])}"),
        (
            "who / where",
            (f"{_e(op.get('user') or 'unknown user')} on {_e(op.get('host') or 'unknown host')}" if op else "not recorded")
            + f" ({_e(machine)})",
        ),
        ("code version / git", f"<code>{_e(a['code_version'])}</code> / <code>{_e(a['git_commit'])}</code>"),
    ]
    if a["seeds"]:
        facts.append(("seeds", f"<code>{_e(json.dumps(a['seeds']))}</code>"))
    if a["sampling"]:
        facts.append(("sampling", f"<code>{_e(json.dumps(a['sampling']))}</code>"))
    extra = {k: x for k, x in a["extra"].items() if k != "seconds"}
    if a["extra"].get("seconds") is not None:
        facts.append(("seconds", _e(a["extra"]["seconds"])))
    if extra:
        facts.append(("recorded facts", f"<code>{_e(json.dumps(extra, default=str))}</code>"))
    out = [f'<div class="card{"" if v["ok"] else " bad"}" id="a-{a["hash"][:16]}">',
           f'<h3>{_e(a["asset"])} <span class="sub">[{_e(a["partition"])}]</span></h3>', _kv(facts)]  # fmt: skip
    if a["models"]:
        out.append("<b>Models</b>" + _table([{"role": k, **{kk: vv for kk, vv in m.items()}} for k, m in a["models"].items()]))
    for name, p in a["prompts"].items():
        out.append(f'<b>Prompt “{_e(name)}”</b> <code>{_e(p.get("id"))}</code> · hash <code>{_e(p.get("hash"))}</code> · '
                   f'{_e(p.get("format"))} · text: {_e(p.get("text_source"))}<pre>{_e(p.get("text") or "(not available)")}</pre>')  # fmt: skip
    if a["config"]:
        changed = sum(r["changed"] for r in a["config"])
        rows = "".join(
            f'<tr class="{"changed" if r["changed"] else ""}"><td><code>{_e(r["key"])}</code>{"<span class=tag>changed</span>" if r["changed"] else ""}</td>'
            f"<td><code>{_e(json.dumps(r['value'], default=str))}</code></td><td><code>{_e(json.dumps(r['default'], default=str) if r['known'] else '—')}</code></td></tr>"
            for r in a["config"]
        )
        out.append(f"<details{' open' if changed else ''}><summary>Config ({len(a['config'])} keys, {changed} differ from the defaults)</summary>"
                   f"<table><tr><th>key</th><th>value</th><th>default</th></tr>{rows}</table></details>")  # fmt: skip
    if a["packages"]:
        out.append(
            "<details><summary>Package versions</summary>"
            + _table([{"package": k, "version": x} for k, x in a["packages"].items()])
            + "</details>"
        )
    out.append("</div>")
    return "".join(out)


def _check_row(c: dict) -> dict:
    passed = c.get("passed")
    status = "passed" if passed else ("WARNING" if str(c.get("severity")) == "WARN" else "FAILED")
    metadata = {k: (_snippet(v, 160) if isinstance(v, str) else v) for k, v in (c.get("metadata") or {}).items()}
    return {
        "status": status,
        "asset": c.get("asset"),
        "check": c.get("check_name"),
        "run": (c.get("run_id") or "")[:8],
        "metadata": metadata,
    }


def audit_html(report: dict) -> str:
    """A self-contained HTML page (no external assets) of :func:`build_audit`'s report."""
    t = report["target"]
    arts = report["artifacts"]
    if report["ok"]:
        banner = f'<div class="banner ok">✔ All {len(arts)} artifacts in this lineage re-hashed to their recorded content hashes.</div>'
    else:
        items = "".join(f"<li><b>{_e(f['asset'])}</b> <code>{f['hash'][:16]}</code>: " +
                        "; ".join(f"{_e(p['issue'])} <code>{_e(p['file'])}</code>" for p in f["problems"]) + "</li>"
                        for f in report["failures"])  # fmt: skip
        banner = f'<div class="banner bad">✘ VERIFICATION FAILED for {len(report["failures"])} artifact(s): their bytes no longer match their recorded hashes.<ul>{items}</ul></div>'
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Audit: {_e(t['asset'])} [{_e(t['partition'])}] {t['hash'][:12]}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>Audit of {_e(t['asset'])} <span class='sub'>[{_e(t['partition'])}]</span></h1>",
        f"<p class='sub'>artifact <code>{t['hash']}</code> · store <code>{_e(report['store'])}</code></p>",
        banner,
        "<h2>Lineage</h2><div class='graph'>",
        lineage_svg(arts, t["hash"]),
        "</div>",
        f"<details><summary>As a tree ({len(arts)} artifacts; an artifact used twice is listed once, then “see above”)</summary>",
        _tree_html(arts, t["hash"]),
        "</details>",
    ]
    if report["scoreboard"]:
        parts += ["<h2>Scoreboard</h2>", _table(report["scoreboard"])]
    parts.append("<h2>Asset checks</h2>")
    if report["checks_note"]:
        parts.append(f"<p><i>{_e(report['checks_note'])}</i></p>")
    if report["checks"] is not None:
        rows = [_check_row(c) for c in report["checks"]]
        body = "".join(
            f"<tr><td class='{ {'passed': 'pass', 'WARNING': 'warn'}.get(r['status'], 'fail') }'>{r['status']}</td><td>{_e(r['asset'])}</td>"
            f"<td>{_e(r['check'])}</td><td class='nowrap'><code>{_e(r['run'])}</code></td><td><code>{_e(json.dumps(r['metadata'], default=str))}</code></td></tr>"
            for r in rows
        )
        parts.append(
            f"<table><tr><th>status</th><th>asset</th><th>check</th><th>run</th><th>metadata</th></tr>{body}</table>"
            if rows
            else "<p><i>no check results recorded for these runs</i></p>"
        )
    parts.append("<h2>Samples</h2>")
    for s in report["samples"].values():
        counts = "".join(f"<span>{_e(k)}: <b>{_e(v)}</b></span>" for k, v in s["counts"].items())
        parts += [f"<div class='card'><h3>{_e(s['title'])}</h3><div class='counts'>{counts}</div>", _table(s["rows"]), "</div>"]
    parts.append("<h2>Artifacts</h2>")
    parts += [_artifact_html(a) for a in reversed(arts)]
    parts.append("</main></body></html>")
    return "".join(parts)


# --------------------------------------------------------------------------- Markdown


def _md_cell(v) -> str:
    if comparison_text(v) is not None:
        v = comparison_text(v)
    elif isinstance(v, float):
        v = f"{v:.4f}"
    elif isinstance(v, dict | list):
        v = json.dumps(v, default=str)
    return str("" if v is None else v).replace("|", "\\|").replace("\n", " ")


def _md_table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["_none_"]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + [
        "| " + " | ".join(_md_cell(r.get(c)) for c in cols) + " |" for r in rows
    ]


def audit_markdown(report: dict) -> str:
    """The report as Markdown (the lineage graph as a Mermaid block)."""
    t = report["target"]
    arts = report["artifacts"]
    out = [f"# Audit of {t['asset']} [{t['partition']}]", "", f"artifact `{t['hash']}` · store `{report['store']}`", ""]
    if report["ok"]:
        out.append(f"**All {len(arts)} artifacts re-hashed to their recorded content hashes.**")
    else:
        out.append(f"**VERIFICATION FAILED for {len(report['failures'])} artifact(s):**")
        out += [
            f"- {f['asset']} `{f['hash'][:16]}`: " + "; ".join(f"{p['issue']} `{p['file']}`" for p in f["problems"])
            for f in report["failures"]
        ]
    out += ["", "## Lineage", "", "```mermaid", "graph LR"]
    for a in arts:
        mark = "ok" if a["verified"]["ok"] else "MISMATCH"
        out.append(f'  n{a["hash"][:12]}["{a["asset"]} {a["hash"][:12]} {mark}"]')
        out += [f"  n{u[:12]} --> n{a['hash'][:12]}" for u in a["upstream"].values()]
    out += ["```", ""]
    if report["scoreboard"]:
        out += ["## Scoreboard", "", *_md_table(report["scoreboard"]), ""]
    out += ["## Asset checks", ""]
    if report["checks_note"]:
        out += [f"_{report['checks_note']}_", ""]
    if report["checks"] is not None:
        out += [*_md_table([_check_row(c) for c in report["checks"]]), ""]
    out += ["## Samples", ""]
    for s in report["samples"].values():
        out += [f"### {s['title']}", "", ", ".join(f"{k}: **{v}**" for k, v in s["counts"].items()), "", *_md_table(s["rows"]), ""]
    out += ["## Artifacts", ""]
    for a in reversed(arts):
        v = a["verified"]
        out += [f"### {a['asset']} [{a['partition']}]", "",
                f"- kind/format: {a['kind']}/{a['format']}; hash `{a['hash']}`; verified now: {'ok' if v['ok'] else '**HASH MISMATCH**'}"]  # fmt: skip
        out += [f"  - {p['issue']}: `{p['file']}`" for p in v["problems"]]
        op = a["operator"]
        out += [f"- rows {a['rows']}; run `{a['run_id']}`; {a['started_at']} → {a['finished_at']}",
                f"- by {op.get('user') or 'not recorded'} on {op.get('host') or 'not recorded'}; hardware {json.dumps(a['hardware'])}",
                f"- code `{a['code_version']}`, git `{a['git_commit']}`"]  # fmt: skip
        if a["seeds"] or a["sampling"]:
            out.append(f"- seeds {json.dumps(a['seeds'])}; sampling {json.dumps(a['sampling'])}")
        for role, m in a["models"].items():
            out.append(f"- model {role}: {m.get('id')} weights `{m.get('weights_hash')}`")
        for name, p in a["prompts"].items():
            out += [f"- prompt {name}: {p.get('id')} `{p.get('hash')}` ({p.get('text_source')})", "", "```text", p.get("text") or "", "```"]
        changed = [r for r in a["config"] if r["changed"]]
        if a["config"]:
            out.append(f"- config: {len(a['config'])} keys, {len(changed)} differ from the defaults" + (":" if changed else ""))
            out += [
                f"  - `{r['key']}` = {json.dumps(r['value'], default=str)} (default {json.dumps(r['default'], default=str)})"
                for r in changed
            ]
        out.append("")
    return "\n".join(out)
