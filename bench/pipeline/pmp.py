#!/usr/bin/env python3
"""Wall-clock profile of a worker from gdb stack samples (a "poor man's profiler").

usage: pmp.py SAMPLES.txt [TOP] > summary.txt

SAMPLES.txt: the output of several `gdb -p PID -batch -ex 'thread apply all bt'`.
For the join and export threads of canopy-worker, counts where each sample
found the thread: the innermost frame (what it was doing: on the CPU, or
waiting in poll/read) and the Canopy call chain above it. Unlike callgrind,
this counts waiting time too, which is where a latency-bound stage spends it.
"""
import collections
import re
import sys

STAGES = {"export_thread": "export", "worker_export_run": "export", "join_thread": "join", "worker_join_run": "join"}
frame_re = re.compile(r"^#\d+\s+(?:0x[0-9a-f]+ in )?([A-Za-z_][\w.@]*)\s*\(")


def threads(text):
    cur = None
    for line in text.splitlines():
        if line.startswith("Thread "):
            if cur:
                yield cur
            cur = []
        elif cur is not None:
            m = frame_re.match(line)
            if m:
                cur.append(m.group(1))
    if cur:
        yield cur


def main():
    text = open(sys.argv[1], errors="replace").read()
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    counts = {"join": collections.Counter(), "export": collections.Counter()}
    totals = collections.Counter()
    for fr in threads(text):
        stage = next((STAGES[f] for f in fr if f in STAGES), None)
        if not stage:
            continue
        totals[stage] += 1
        inner = fr[0]
        chain = [f for f in fr[1:] if f.startswith(("canopy_", "rconn_", "export_", "desired_", "join_", "handle_",
                                                    "redisGetReply", "curl_multi_poll", "rd_kafka_consume",
                                                    "rd_kafka_poll", "rd_kafka_flush"))][:4]
        counts[stage][inner + " <- " + " <- ".join(chain)] += 1
    for stage in ("export", "join"):
        n = totals[stage]
        if not n:
            continue
        print(f"{stage} thread: {n} samples")
        for sig, c in counts[stage].most_common(top):
            print(f"  {100 * c / n:5.1f}%  {sig}")


if __name__ == "__main__":
    main()
