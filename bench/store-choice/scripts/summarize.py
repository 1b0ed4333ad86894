#!/usr/bin/env python3
"""Turn results/raw.txt (RESULT lines from scripts/run.sh) into Markdown tables
of medians over the repetitions. Usage: scripts/summarize.py [results/raw.txt]"""
import statistics
import sys
from collections import defaultdict

path = sys.argv[1] if len(sys.argv) > 1 else "results/raw.txt"
rows = []
for line in open(path):
    if not line.startswith("RESULT "):
        continue
    d = {}
    for tok in line.split()[1:]:
        k, _, v = tok.partition("=")
        d[k] = v
    rows.append(d)


def med(vals):
    return statistics.median(float(v) for v in vals)


def group(mode, keys):
    g = defaultdict(list)
    for r in rows:
        if r.get("mode") == mode:
            g[tuple(r[k] for k in keys)].append(r)
    return g


BACKENDS = ["redb", "redb-qr", "sqlite-full", "sqlite-normal"]


def border(b):
    return BACKENDS.index(b) if b in BACKENDS else 99


def fmt(x, nd=1):
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}"


out = []
gall = group("commit", ["agents", "batch", "backend"])
for agents in sorted({a for (a, _, _) in gall}, key=int):
    g = {(k, b): v for (a, k, b), v in gall.items() if a == agents}
    out.append("### Group commit throughput and latency (N = %s agents pre-filled, median of %d runs)\n"
               % (f"{int(agents):,}", max(len(v) for v in g.values())))
    out.append("| K (records/commit) | backend | commits/s | records/s | records/s min-max of runs | p50 ms | p99 ms | max ms | file MB at end (open; SQLite incl. -wal) | bytes/agent after close |")
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (k, b) in sorted(g, key=lambda t: (int(t[0]), border(t[1]))):
        rs = g[(k, b)]
        rec = [float(r["records_s"]) for r in rs]
        closed = [r["closed_bytes_per_agent"] for r in rs if "closed_bytes_per_agent" in r]
        out.append("| %s | %s | %s | %s | %s-%s | %s | %s | %s | %.1f | %s |" % (
            k, b,
            fmt(med(r["commits_s"] for r in rs)),
            fmt(med(r["records_s"] for r in rs)),
            fmt(min(rec)), fmt(max(rec)),
            fmt(med(r["p50_ms"] for r in rs), 2),
            fmt(med(r["p99_ms"] for r in rs), 2),
            fmt(med(r["max_ms"] for r in rs), 2),
            med(r["file_bytes_end"] for r in rs) / 1e6,
            ("%.1f" % med(closed)) if closed else "not recorded"))
    out.append("")

g = group("fill", ["agents", "backend"])
if g:
    out.append("### Bytes on disk after pre-filling N agents (transactions of 10 000, closed cleanly; SQLite checkpointed, -wal included)\n")
    out.append("| N | backend | file bytes | bytes/agent | allocated bytes/agent | fill time s (median) |")
    out.append("|---:|---|---:|---:|---:|---:|")
    for (n, b) in sorted(g, key=lambda t: (int(t[0]), border(t[1]))):
        rs = g[(n, b)]
        out.append("| %s | %s | %s | %.1f | %.1f | %.2f |" % (
            f"{int(n):,}", b, f"{int(med(r['file_bytes'] for r in rs)):,}",
            med(r["bytes_per_agent"] for r in rs), med(r["alloc_per_agent"] for r in rs),
            med(r["fill_secs"] for r in rs)))
    out.append("(payload: 23-byte key + 120-byte value = 143 bytes/agent)\n")

g = group("churn", ["agents", "backend"])
if g:
    out.append("### Bytes on disk after churn: pre-fill N, then K = 1000 group commits for 10 s, closed cleanly (median of 3)\n")
    out.append("| N | backend | records rewritten (median) | file bytes after close | bytes/agent | records/s |")
    out.append("|---:|---|---:|---:|---:|---:|")
    for (n, b) in sorted(g, key=lambda t: (int(t[0]), border(t[1]))):
        rs = g[(n, b)]
        out.append("| %s | %s | %s | %s | %.1f | %s |" % (
            f"{int(n):,}", b, f"{int(med(float(r['records_s']) * float(r['secs']) for r in rs)):,}",
            f"{int(med(r['file_bytes_closed'] for r in rs)):,}",
            med(r["closed_bytes_per_agent"] for r in rs), fmt(med(r["records_s"] for r in rs))))
    out.append("")

g = group("load", ["records", "cache", "backend"])
if g:
    out.append("### Start-up load: open + read all N records into a Vec (median of 3)\n")
    out.append("| N | page cache | backend | open ms | read ms | total ms |")
    out.append("|---:|---|---|---:|---:|---:|")
    for (n, c, b) in sorted(g, key=lambda t: (int(t[0]), t[1] != "warm", border(t[2]))):
        rs = g[(n, c, b)]
        out.append("| %s | %s | %s | %.2f | %s | %s |" % (
            f"{int(n):,}", c, b, med(r["open_ms"] for r in rs),
            fmt(med(r["read_ms"] for r in rs)), fmt(med(r["total_ms"] for r in rs))))
    out.append("")

g = group("crashload", ["records", "backend"])
if g:
    out.append("### Start-up after `kill -9` of a writer (K = 100 commits for 3 s), open + read all (median of 3)\n")
    out.append("| N | backend | open ms (incl. repair / WAL recovery) | read ms | total ms | acknowledged commits kept |")
    out.append("|---:|---|---:|---:|---:|---|")
    for (n, b) in sorted(g, key=lambda t: (int(t[0]), border(t[1]))):
        rs = g[(n, b)]
        ok = all(r["durable_ok"] == "yes" for r in rs)
        out.append("| %s | %s | %s | %s | %s | %s |" % (
            f"{int(n):,}", b, fmt(med(r["open_ms"] for r in rs), 2),
            fmt(med(r["read_ms"] for r in rs)), fmt(med(r["total_ms"] for r in rs)),
            ("yes, %d/%d runs" % (len(rs), len(rs))) if ok else "NO: " + ",".join(r["durable_ok"] for r in rs)))
    out.append("")

g = group("build", ["features"])
if g:
    base = med(r["secs"] for r in g.get(("none",), [{"secs": "0"}]))
    out.append("### Clean `cargo build --release` with one backend feature (2 cores, median of 3)\n")
    out.append("| features | wall s | minus no-backend build |")
    out.append("|---|---:|---:|")
    for f in ["none", "redb", "sqlite"]:
        if (f,) in g:
            m = med(r["secs"] for r in g[(f,)])
            out.append("| %s | %.1f | %.1f |" % (f, m, m - base))
    out.append("")

print("\n".join(out))
