#!/usr/bin/env python3
"""Split delta latencies into pipeline stages from Kafka message timestamps.

usage: stages.py TRACE CHANGES_TS MV_TS EXPORTS_TS > stages.json

TRACE: lines "i write_ms seen_ms" (canopy-bench-delta --trace); *_TS: one
Kafka CreateTime (ms) per line for every message of the topic (kcat -f '%T').
Changes are spaced apart, so the first message of each topic after a write
(and before the next one) belongs to that change.
"""
import bisect, json, sys

def load(p):
    with open(p) as f:
        return sorted(int(x) for x in f.read().split() if x.strip().lstrip('-').isdigit() and int(x) > 0)

trace = [tuple(float(v) for v in l.split()[1:3]) for l in open(sys.argv[1]) if l.strip()]
ch, mv, ex = (load(p) for p in sys.argv[2:5])

def first_after(ts, t, limit):
    i = bisect.bisect_left(ts, t)
    return ts[i] if i < len(ts) and ts[i] <= limit else None

names = ["ldap write -> changes (producer)", "changes -> mv (join stage)",
         "mv -> exports (export stage, Graph write)", "exports -> seen by the poller"]
parts = [[] for _ in names]
for k, (w, seen) in enumerate(trace):
    c = first_after(ch, w - 5, seen)
    m = first_after(mv, c, seen) if c else None
    e = first_after(ex, m, seen + 50) if m else None
    if None in (c, m, e):
        continue
    for j, d in enumerate((c - w, m - c, e - m, seen - e)):
        parts[j].append(d)

def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, max(0, int(round(p / 100 * len(v) + 0.4999)) - 1))] if v else None

out = {"matched": len(parts[0]), "changes": len(trace),
       "stages": [{"stage": n, "p50_ms": pct(v, 50), "p99_ms": pct(v, 99), "mean_ms": (sum(v) / len(v)) if v else None}
                  for n, v in zip(names, parts)]}
json.dump(out, sys.stdout, indent=1)
