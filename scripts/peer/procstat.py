#!/usr/bin/env python3
"""CPU time and memory of whole process trees, from /proc (Linux).

    procstat.py cpu PID...   JSON: CPU ticks of the trees rooted at PID...
    procstat.py mem PID...   JSON: their processes, summed RSS and PSS
    procstat.py mem --port P PID...   and the TCP connections established
                             to local port P (/proc/net/tcp)

"cpu" sums, over every live process in the trees, utime + stime (its own
time, proc(5) fields 14-15) and cutime + cstime (16-17: the time of its
children that have exited and been waited for). A Postfix smtpd that exits
after max_use sessions thus stays counted, in its master's cutime, and
nothing is counted twice: a live process's own time is in no one's cutime.
Two snapshots, before and after a run, give the run's CPU whatever
processes came and went in between. "by" splits the live processes' own
time by command name; "exited" is the children's part (for Postfix mostly
smtpd processes that reached max_use and exited).

"mem" sums VmRSS (shared library pages counted once per process, as `ps`
does) and Pss (/proc/PID/smaps_rollup: shared pages divided among the
processes that map them, which is what the trees really cost).
"""
import json
import os
import sys


def table():
    procs = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        f = s[s.rindex(")") + 2:].split()
        # f[0] is field 3 (state): field n is f[n - 3].
        procs[int(d)] = (int(f[1]), comm, int(f[11]) + int(f[12]), int(f[13]) + int(f[14]))
    return procs


def tree(procs, roots):
    kids = {}
    for pid, (ppid, *_rest) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    seen, todo = set(), [r for r in roots if r in procs]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo.extend(kids.get(p, []))
    return seen


def cpu(roots):
    procs = table()
    total, exited, by = 0, 0, {}
    for p in tree(procs, roots):
        _, comm, own, children = procs[p]
        total += own + children
        exited += children
        by[comm] = by.get(comm, 0) + own
    return {"ticks": total, "exited": exited, "by": by, "hz": os.sysconf("SC_CLK_TCK")}


def established(port):
    n = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    local, state = line.split()[1], line.split()[3]
                    if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                        n += 1
        except OSError:
            continue
    return n


def mem(roots, port=None):
    procs = table()
    n, rss, pss = 0, 0, 0
    for p in tree(procs, roots):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
            n += 1
        except (OSError, ValueError):
            continue
    out = {"processes": n, "rss_kib": rss, "pss_kib": pss}
    if port is not None:
        out["established"] = established(port)
    return out


if __name__ == "__main__":
    args = sys.argv[2:]
    if sys.argv[1] == "mem" and args[:1] == ["--port"]:
        print(json.dumps(mem([int(a) for a in args[2:]], int(args[1]))))
    else:
        print(json.dumps({"cpu": cpu, "mem": mem}[sys.argv[1]]([int(a) for a in args])))
