#!/usr/bin/env python3
"""check.py EVENTS.jsonl EXPR: exit 0 when the Python expression EXPR is true.

EXPR sees E (the list of decoded ChangeEvents, see events_tail.c) and helpers:
  ev(op=None, dn=None, dn_has=None, cls=None, since=0, **attrs) -> events matching
  scans(connector=None) -> one END_OF_SCAN per scan id whose pieces (one per
      partition: chunk 0..nchunks-1) have all arrived, in order of arrival
  vals(e, name) -> the full values of attribute name (strings / {"hex":..})
  added(e, name), removed(e, name) -> delta values
With --print the expression's value is printed instead (for diagnostics)."""
import json, sys

def load(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    return out

import re
_HEX = {"2c": "\\,", "2b": "\\+", "22": '\\"', "3b": "\\;", "3c": "\\<", "3e": "\\>", "5c": "\\\\"}

def norm(dn):
    """Lower-case DN with RFC 4514 hex escapes of specials turned into backslash escapes."""
    dn = dn or ""
    return re.sub(r"\\([0-9a-fA-F]{2})", lambda m: _HEX.get(m.group(1).lower(), m.group(0)), dn).lower()

def main():
    args = sys.argv[1:]
    pr = False
    if args and args[0] == "--print":
        pr = True
        args = args[1:]
    E = load(args[0])
    since = int(args[2]) if len(args) > 2 else 0
    E = E[since:]
    def ev(op=None, dn=None, dn_has=None, cls=None, anchor=None, **kw):
        r = []
        for e in E:
            if op and (e.get("op") or "").lower() != op.lower(): continue
            if dn is not None and norm(e.get("dn")) != norm(dn): continue
            if dn_has is not None and norm(dn_has) not in norm(e.get("dn")): continue
            if cls and e.get("class") != cls: continue
            if anchor and e.get("anchor") != anchor: continue
            r.append(e)
        return r
    def scans(connector=None):
        pieces, order = {}, []
        for e in ev(op="END_OF_SCAN"):
            if connector and e.get("connector") != connector: continue
            sid = e.get("scan_id")
            if sid not in pieces:
                pieces[sid] = (e, set())
                order.append(sid)
            pieces[sid][1].add(e.get("chunk", 0))
        return [pieces[s][0] for s in order
                if pieces[s][1] == set(range(max(1, pieces[s][0].get("nchunks", 1))))]
    def attr(e, n):
        return e.get("attrs", {}).get(n.lower(), {})
    def vals(e, n): return attr(e, n).get("values", [])
    def added(e, n): return attr(e, n).get("added", [])
    def removed(e, n): return attr(e, n).get("removed", [])
    def nadded(e, n): return [norm(v) for v in added(e, n)]
    def nremoved(e, n): return [norm(v) for v in removed(e, n)]
    env = dict(E=E, ev=ev, scans=scans, norm=norm, nadded=nadded, nremoved=nremoved, vals=vals, added=added, removed=removed, attr=attr, len=len, set=set, any=any, all=all)
    v = eval(args[1], env)
    if pr:
        print(json.dumps(v, ensure_ascii=False, indent=1)[:4000])
        return 0
    return 0 if v else 1

sys.exit(main())
