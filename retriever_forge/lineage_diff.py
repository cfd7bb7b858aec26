"""Why two artifacts of one asset differ: walk both lineages and name the first points of divergence.

:func:`diff_lineages` pairs the two lineages input by input from the compared artifacts back to
the corpus. A pair of artifacts with equal hashes ends the walk there (everything upstream of it
is identical). A differing pair is a **point of divergence** when its own recipe differs — config
keys (old → new), prompt text (a unified diff), models or weights, code version, seeds, sampling,
package versions — or, with an identical recipe and identical inputs, when its data differs (for
the corpus and the evaluation tables: rows added, removed and changed, with their ids). A pair
that differs only because an input differs is a **consequence**, listed but not blamed. For two
``benchmark_scores`` tables the score deltas per system and measure come with it.

Example:
    >>> import polars as pl, tempfile
    >>> from retriever_forge.artifacts import ArtifactStore
    >>> from retriever_forge.provenance import build_manifest
    >>> store = ArtifactStore(tempfile.mkdtemp())
    >>> def corpus(rows, **config):
    ...     ref = store.put_table(pl.DataFrame(rows, schema=["doc_id", "title", "text"], orient="row"), "corpus")
    ...     store.write_manifest(ref, build_manifest(ref, asset="corpus", upstream={}, config=config))
    ...     return ref
    >>> a = corpus([("d1", "", "alpha"), ("d2", "", "beta")], max_documents=10)
    >>> b = corpus([("d1", "", "alpha!"), ("d3", "", "gamma")], max_documents=20)
    >>> d = diff_lineages(store, a.hash, b.hash)
    >>> [c["kind"] for c in d["divergences"][0]["changes"]]
    ['config', 'rows']
    >>> d["divergences"][0]["changes"][1]["added_ids"], d["divergences"][0]["changes"][1]["changed_ids"]
    (['d3'], ['d1'])
"""

from __future__ import annotations

import difflib
import json

import polars as pl

from retriever_forge.artifacts import ArtifactStore
from retriever_forge.audit import flatten, lineage_graph
from retriever_forge.provenance import resolve

# Tables whose rows are compared by key when they are where two lineages diverge.
ROW_KEYS = {"corpus": ("doc_id",), "eval_queries": ("query_id",), "eval_qrels": ("query_id", "doc_id")}
_MAX_IDS = 20


def _canon(v) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def unified_prompt_diff(old: str | None, new: str | None, label_old: str, label_new: str) -> str | None:
    """A unified diff of two prompt texts (None when either text was not recorded).

    >>> print(unified_prompt_diff("a\\nb\\n", "a\\nc\\n", "A", "B"))
    --- A
    +++ B
    @@ -1,2 +1,2 @@
     a
    -b
    +c
    """
    if old is None or new is None:
        return None
    lines = difflib.unified_diff(old.splitlines(), new.splitlines(), fromfile=label_old, tofile=label_new, lineterm="")
    return "\n".join(lines)


def recipe_changes(ma: dict, mb: dict, lineage_hashes: set[str]) -> list[dict]:
    """What differs in how two artifacts of one asset were made (not what they were made from).

    ``lineage_hashes``: hashes of the two artifacts and their inputs; a model whose weights hash is
    one of them is an artifact of the lineage (the fine-tuned encoder), a consequence and no cause.
    """
    changes: list[dict] = []
    ca, cb = flatten(ma.get("config") or {}), flatten(mb.get("config") or {})
    config_keys = [k for k in sorted(set(ca) | set(cb)) if _canon(ca.get(k)) != _canon(cb.get(k))]
    # "resolved.x" mirrors "x" (fine_tuned_encoder records both): blame the key the user sets.
    config_keys = [k for k in config_keys if not (k.startswith("resolved.") and k.split(".", 1)[1] in config_keys)]
    for k in config_keys:
        changes.append({"kind": "config", "key": k, "old": ca.get(k), "new": cb.get(k)})
    covered = {(k.rsplit(".", 1)[-1], _canon(ca.get(k)), _canon(cb.get(k))) for k in config_keys}
    pa, pb = ma.get("prompts") or {}, mb.get("prompts") or {}
    for role in sorted(set(pa) | set(pb)):
        a, b = pa.get(role) or {}, pb.get(role) or {}
        if a.get("hash") != b.get("hash"):
            changes.append({"kind": "prompt", "role": role, "old_id": a.get("id"), "new_id": b.get("id"), "old_hash": a.get("hash"),
                            "new_hash": b.get("hash"),
                            "diff": unified_prompt_diff(a.get("text"), b.get("text"), f"{role} (A) {a.get('id')}", f"{role} (B) {b.get('id')}")})  # fmt: skip
    mda, mdb = ma.get("models") or {}, mb.get("models") or {}
    for role in sorted(set(mda) | set(mdb)):
        a, b = mda.get(role) or {}, mdb.get(role) or {}
        if {a.get("weights_hash"), b.get("weights_hash")} & lineage_hashes:
            continue
        if not a or not b:  # a role used by one run only (the judge passed its self-check in one): data decided it, not the user
            used = b or a
            changes.append(
                {
                    "kind": "model_use",
                    "role": role,
                    "used_in": "B" if b else "A",
                    "model": {"id": used.get("id"), "weights_hash": used.get("weights_hash")},
                }
            )
            continue
        if (a.get("id"), a.get("weights_hash")) != (b.get("id"), b.get("weights_hash")):
            changes.append({"kind": "model", "role": role, "old": {"id": a.get("id"), "weights_hash": a.get("weights_hash")},
                            "new": {"id": b.get("id"), "weights_hash": b.get("weights_hash")}})  # fmt: skip
    for field in ("code_version", "git_commit"):
        if ma.get(field) != mb.get(field):
            changes.append({"kind": "code", "key": field, "old": ma.get(field), "new": mb.get(field)})
    for kind in ("seeds", "sampling"):
        sa, sb = ma.get(kind) or {}, mb.get(kind) or {}
        for k in sorted(set(sa) | set(sb)):
            if _canon(sa.get(k)) != _canon(sb.get(k)) and (k, _canon(sa.get(k)), _canon(sb.get(k))) not in covered:
                changes.append({"kind": kind.rstrip("s") if kind == "seeds" else kind, "key": k, "old": sa.get(k), "new": sb.get(k)})
    va, vb = ma.get("packages") or {}, mb.get("packages") or {}
    for k in sorted(set(va) | set(vb)):
        if va.get(k) != vb.get(k):
            changes.append({"kind": "package", "key": k, "old": va.get(k), "new": vb.get(k)})
    return changes


def row_changes(a: pl.DataFrame, b: pl.DataFrame, keys: tuple[str, ...]) -> dict:
    """Rows added, removed and changed between two versions of a table, by key (first ids shown)."""

    def key_of(df: pl.DataFrame) -> pl.DataFrame:
        return df.with_columns(pl.concat_str([pl.col(k).cast(pl.String) for k in keys], separator="/").alias("__key"))

    ka, kb = key_of(a), key_of(b)
    values = [c for c in a.columns if c in b.columns and c not in keys]
    ra = dict(zip(ka["__key"], ka.select(values).iter_rows(), strict=True))
    rb = dict(zip(kb["__key"], kb.select(values).iter_rows(), strict=True))
    added = sorted(set(rb) - set(ra))
    removed = sorted(set(ra) - set(rb))
    changed = sorted(k for k in set(ra) & set(rb) if ra[k] != rb[k])
    return {"kind": "rows", "key": "/".join(keys), "rows_old": a.height, "rows_new": b.height,
            "added": len(added), "removed": len(removed), "changed": len(changed),
            "added_ids": added[:_MAX_IDS], "removed_ids": removed[:_MAX_IDS], "changed_ids": changed[:_MAX_IDS]}  # fmt: skip


def score_deltas(a: pl.DataFrame, b: pl.DataFrame) -> list[dict]:
    """Mean of each measure per system in A and B over the queries both scored, and B − A."""
    measures = [c for c in a.columns if c in b.columns and c not in ("system", "query_id") and a.schema[c].is_numeric()]
    out = []
    for system in dict.fromkeys(a["system"].to_list() + b["system"].to_list()):
        sa, sb = a.filter(pl.col("system") == system), b.filter(pl.col("system") == system)
        common = sa.join(sb, on="query_id", suffix="__b")
        for m in measures:
            if common.height == 0:
                continue
            old, new = float(common[m].mean()), float(common[f"{m}__b"].mean())
            out.append({"system": system, "measure": m, "queries": common.height, "a": round(old, 4), "b": round(new, 4),
                        "delta": round(new - old, 4), "queries_better": int((common[f"{m}__b"] > common[m]).sum()),
                        "queries_worse": int((common[f"{m}__b"] < common[m]).sum())})  # fmt: skip
    return out


def diff_lineages(store: ArtifactStore, hash_a: str, hash_b: str) -> dict:
    """The first points where the lineages of two artifacts of one asset diverge (module docstring)."""
    ref_a, man_a = resolve(store, hash_a)
    ref_b, man_b = resolve(store, hash_b)
    if man_a.get("asset") != man_b.get("asset"):
        raise ValueError(f"diff compares two artifacts of one asset: {man_a.get('asset')} vs {man_b.get('asset')}")
    ga, gb = lineage_graph(store, ref_a.hash), lineage_graph(store, ref_b.hash)
    divergences, consequences, seen = [], [], set()

    def walk(ha: str, hb: str) -> None:
        if ha == hb or (ha, hb) in seen:
            return
        seen.add((ha, hb))
        na, nb = ga[ha], gb[hb]
        asset = na["manifest"].get("asset")
        ua, ub = na["upstream"], nb["upstream"]
        inputs_changed = sorted(k for k in set(ua) | set(ub) if ua.get(k) != ub.get(k))
        changes = recipe_changes(na["manifest"], nb["manifest"], {ha, hb, *ua.values(), *ub.values()})
        changes += [{"kind": "input", "key": k, "old": ua.get(k), "new": ub.get(k)} for k in inputs_changed if k not in ua or k not in ub]
        if asset in ROW_KEYS and not inputs_changed:
            ta, tb = store.read_table(na["ref"]), store.read_table(nb["ref"])
            changes.append(row_changes(ta, tb, ROW_KEYS[asset]))
        entry = {"asset": asset, "partition": na["manifest"].get("partition"), "hash_a": ha, "hash_b": hb}
        if changes:
            divergences.append({**entry, "changes": changes, "inputs_changed": inputs_changed})
        elif inputs_changed:
            consequences.append({**entry, "inputs_changed": inputs_changed})
        else:
            divergences.append({**entry, "inputs_changed": [], "changes": [{
                "kind": "unexplained", "note": "same recipe and inputs, different bytes: a non-deterministic step or an input the manifest does not record"}]})  # fmt: skip
        for k in inputs_changed:
            if k in ua and k in ub:
                walk(ua[k], ub[k])

    walk(ref_a.hash, ref_b.hash)
    divergences.sort(key=lambda d: ga[d["hash_a"]]["layer"])
    consequences.sort(key=lambda d: ga[d["hash_a"]]["layer"])
    result = {
        "asset": man_a.get("asset"), "a": {"hash": ref_a.hash, "partition": man_a.get("partition"), "run_id": man_a.get("run_id")},
        "b": {"hash": ref_b.hash, "partition": man_b.get("partition"), "run_id": man_b.get("run_id")},
        "identical": ref_a.hash == ref_b.hash, "divergences": divergences, "consequences": consequences,
        "summary": summarize(divergences), "score_deltas": None,
    }  # fmt: skip
    if man_a.get("asset") == "benchmark_scores" and not result["identical"]:
        result["score_deltas"] = score_deltas(store.read_table(ref_a), store.read_table(ref_b))
    return result


def _change_identity(c: dict) -> tuple:
    if c["kind"] == "prompt":
        return ("prompt", c["role"], c["old_hash"], c["new_hash"])
    if c["kind"] == "model":
        return ("model", c["role"], _canon(c["old"]), _canon(c["new"]))
    if c["kind"] == "rows":
        return ("rows", c["key"], c["added"], c["removed"], c["changed"])
    return (c["kind"], c.get("key"), _canon(c.get("old")), _canon(c.get("new")))


def summarize(divergences: list[dict]) -> list[dict]:
    """Each distinct change once, with the assets where it appears (a code change shows at every step)."""
    out: dict[tuple, dict] = {}
    for d in divergences:
        for c in d["changes"]:
            if c["kind"] == "model_use":  # a consequence of changed data, not a change anyone made
                continue
            entry = out.setdefault(_change_identity(c), {**c, "assets": []})
            entry["assets"].append(d["asset"])
    return list(out.values())


def _describe(c: dict) -> str:
    k = c["kind"]
    if k == "config":
        return f"config {c['key']}: {_canon(c['old'])} → {_canon(c['new'])}"
    if k == "prompt":
        ids = c["old_id"] if c["old_id"] == c["new_id"] else f"{c['old_id']} → {c['new_id']}"
        return f"prompt {c['role']} ({ids}) changed: {str(c['old_hash'])[:12]} → {str(c['new_hash'])[:12]}"
    if k == "model":
        return f"model {c['role']}: {c['old']['id']} {str(c['old']['weights_hash'])[:12]} → {c['new']['id']} {str(c['new']['weights_hash'])[:12]}"
    if k == "model_use":
        return f"model {c['role']} ({c['model']['id']} {str(c['model']['weights_hash'])[:12]}) used only in {c['used_in']}"
    if k == "rows":
        parts = [f"{c['added']} added", f"{c['removed']} removed", f"{c['changed']} changed"]
        ids = "; ".join(f"{n}: {', '.join(c[f'{n}_ids'])}" for n in ("added", "removed", "changed") if c[f"{n}_ids"])
        return f"rows by {c['key']} ({c['rows_old']} → {c['rows_new']}): {', '.join(parts)}" + (f" [{ids}]" if ids else "")
    if k == "unexplained":
        return c["note"]
    return f"{k} {c.get('key')}: {_canon(c.get('old'))} → {_canon(c.get('new'))}"


def diff_text(result: dict) -> str:
    """The diff for a person to read."""
    a, b = result["a"], result["b"]
    lines = [f"{result['asset']} [{a['partition']}] A {a['hash'][:16]} vs B {b['hash'][:16]} [{b['partition']}]"]
    if result["identical"]:
        return lines[0] + "\nidentical: the same artifact"
    lines += ["", "First points of divergence:"]
    for d in result["divergences"]:
        lines.append(f"  {d['asset']} ({d['hash_a'][:12]} → {d['hash_b'][:12]}):")
        for c in d["changes"]:
            lines.append(f"    - {_describe(c)}")
            if c["kind"] == "prompt" and c.get("diff"):
                lines += ["      " + ln for ln in c["diff"].splitlines()]
    if result["consequences"]:
        lines += ["", "Changed only because an input changed: " + ", ".join(d["asset"] for d in result["consequences"])]
    if result["score_deltas"]:
        lines += [
            "",
            "Score deltas (B − A, mean over the queries both scored):",
            "  system       measure        A        B        Δ   better/worse",
        ]
        for r in result["score_deltas"]:
            lines.append(
                f"  {r['system']:<12} {r['measure']:<12} {r['a']:>8.4f} {r['b']:>8.4f} {r['delta']:>+8.4f}   {r['queries_better']}/{r['queries_worse']} of {r['queries']}"
            )
    return "\n".join(lines)
