#!/usr/bin/env python3
"""The table of scripts/bench-peer.sh: report.py RESULTS.jsonl BENCHMARKS.md

Prints one markdown block (throughput and CPU per session, mechanism ×
clients × system, with the ratio to Postfix + Dovecot; the idle-connection
memory; where Postfix + Dovecot's CPU goes) and, unless BENCH_WRITE=0,
puts it between <!-- bench-peer:start --> and <!-- bench-peer:end --> in
BENCHMARKS.md.
"""
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

LABEL = {"split": "authrelay, 4 services (TCP + Redis)", "serve": "authrelay serve",
         "postfix": "Postfix + Dovecot"}
ORDER = ["split", "serve", "postfix"]


def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


def cpu_us(r):
    """Server CPU per session, µs: every process of the system."""
    if "cpu_us" in r:
        return r["cpu_us"]
    b, a = r["cpu_before"], r["cpu_after"]
    return (a["ticks"] - b["ticks"]) * 1e6 / a["hz"] / max(r["sessions"], 1)


def median_run(rs):
    """One run standing for the rounds of a cell: each figure's median
    (sessions/s, latencies and CPU taken separately), the errors summed,
    and the CPU deltas of all rounds for the breakdown by process."""
    med = lambda f: statistics.median(f(r) for r in rs)
    m = dict(rs[0])
    m["rounds"] = len(rs)
    m["sessions_per_sec"] = med(lambda r: r["sessions_per_sec"])
    m["spread"] = (min(r["sessions_per_sec"] for r in rs), max(r["sessions_per_sec"] for r in rs))
    m["auth"] = {k: med(lambda r: r["auth"][k]) for k in ("p50_ms", "p99_ms")}
    m["session"] = {"p99_ms": med(lambda r: r["session"]["p99_ms"])}
    m["cpu_us"] = med(cpu_us)
    m["errors"] = {"all": sum(sum(r["errors"].values()) for r in rs)}
    m["sessions"] = sum(r["sessions"] for r in rs)
    by = {}
    for r in rs:
        for n in set(r["cpu_after"]["by"]) | set(r["cpu_before"]["by"]):
            by[n] = by.get(n, 0) + r["cpu_after"]["by"].get(n, 0) - r["cpu_before"]["by"].get(n, 0)
    m["cpu_delta"] = {"by": by, "hz": rs[0]["cpu_after"]["hz"],
                      "ticks": sum(r["cpu_after"]["ticks"] - r["cpu_before"]["ticks"] for r in rs),
                      "exited": sum(r["cpu_after"]["exited"] - r["cpu_before"]["exited"] for r in rs)}
    return m


def group(rows, mode):
    g = {}
    for r in rows:
        if "sessions" in r and r.get("mode", "max") == mode:
            g.setdefault((r["mechanism"], r["size"], r["concurrency"], r["system"]), []).append(r)
    return {k: median_run(v) for k, v in g.items()}


def verdicts(runs, equal):
    """The issue's target, cell by cell: at least 1.5 x Postfix + Dovecot's
    sessions/s, and an AUTH p99 no higher than its own, at each system's
    maximum and at an equal load."""
    out = ["", "The target, cell by cell (medians of the rounds): sessions/s at least 1.5 × "
           "Postfix + Dovecot's, and AUTH p99 no higher than Postfix + Dovecot's, at each "
           "system's maximum and at an equal load. A miss is in bold.", "",
           "| mechanism | body | clients | system | ÷ Postfix sessions/s | AUTH p99 at max ms (Postfix) "
           "| AUTH p99 at equal load ms (Postfix) | sessions/s min–max of the rounds |",
           "|---|---|---|---|---|---|---|---|"]
    misses = 0
    for (mech, size, c, s), r in runs.items():
        ref = runs.get((mech, size, c, "postfix"))
        if s == "postfix" or ref is None:
            continue
        bold = lambda ok, t: t if ok else f"**{t}**"
        ratio = r["sessions_per_sec"] / max(ref["sessions_per_sec"], 1e-9)
        cells = [bold(ratio >= 1.5, f"{ratio:.2f}"),
                 bold(r["auth"]["p99_ms"] <= ref["auth"]["p99_ms"],
                      f"{r['auth']['p99_ms']:.2f} ({ref['auth']['p99_ms']:.2f})")]
        oks = [ratio >= 1.5, r["auth"]["p99_ms"] <= ref["auth"]["p99_ms"]]
        e, eref = equal.get((mech, size, c, s)), equal.get((mech, size, c, "postfix"))
        if e and eref:
            oks.append(e["auth"]["p99_ms"] <= eref["auth"]["p99_ms"])
            cells.append(bold(oks[-1], f"{e['auth']['p99_ms']:.2f} ({eref['auth']['p99_ms']:.2f})"))
        else:
            cells.append("—")
        misses += oks.count(False)
        lo, hi = r["spread"]
        out.append(f"| {mech} | {'auth only' if size == 0 else f'{size} B'} | {c} | {LABEL[s]} | "
                   + " | ".join(cells) + f" | {lo:.0f}–{hi:.0f} |")
    out += ["", f"Cells that miss: {misses}."]
    return out


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    runs = group(rows, "max")
    equal = group(rows, "equal")
    idles = [r for r in rows if "idle" in r]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    rev = version(["git", "rev-parse", "--short", "HEAD"])
    pfv = version(["postconf", "-d", "-h", "mail_version"])
    dcv = version(["dovecot", "--version"]).split(" ")[0]
    secs = os.environ.get("BENCH_SECS", "5")
    rounds = os.environ.get("BENCH_REPEAT", "1")
    out = ["<!-- bench-peer:start -->",
           f"### Run of {datetime.date.today()} (`scripts/bench-peer.sh {secs}`)", "",
           f"Machine: {os.cpu_count()} × {cpu}; authrelay commit {rev} "
           f"({'prebuilt binaries, BENCH_BUILD=0' if os.environ.get('BENCH_BUILD') == '0' else 'release build'}); "
           f"Postfix {pfv}, Dovecot {dcv} (Debian packages); {secs} s per run; "
           f"{rounds} rounds of each cell, the systems taking turns within a round; "
           "every figure below is the median of its rounds; "
           "all three systems and the load client on the same machine.", "",
           "First the closed loop: each client starts its next session when the last ends, so "
           "every system runs at its own maximum (sessions/s, AUTH latency there, CPU). Then the "
           "same cell again open loop (`smtp-load --rate`): every system offered 80 % of "
           "Postfix + Dovecot's maximum, for AUTH latency at an equal load (\"sessions/s\" there is "
           "achieved of offered). \"Session p99\" is connect to `221`, the whole session: "
           "where a saturated system makes sessions wait, before the greeting or inside AUTH, "
           "shows in the difference.", "",
           "| mechanism | body | clients | system | sessions/s | AUTH p50 ms | AUTH p99 ms "
           "| session p99 ms | server CPU µs/session | errors | sessions/s ÷ Postfix | CPU ÷ Postfix "
           "| at equal load: sessions/s | AUTH p50 ms | AUTH p99 ms |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    cells = {}
    for (mech, size, c, s), r in runs.items():
        cells.setdefault((mech, size, c), {})[s] = r
    for (mech, size, c), by in cells.items():
        ref = by.get("postfix")
        for s in ORDER:
            r = by.get(s)
            if r is None:
                continue
            ratio = cpu_ratio = "—"
            if ref is not None and s != "postfix":
                ratio = f"{r['sessions_per_sec'] / max(ref['sessions_per_sec'], 1e-9):.2f}"
                cpu_ratio = f"{cpu_us(r) / max(cpu_us(ref), 1e-9):.2f}"
            e = equal.get((mech, size, c, s))
            eq = (f"{e['sessions_per_sec']:.0f} of {e['offered_rate']:.0f} | {e['auth']['p50_ms']:.2f} | "
                  f"{e['auth']['p99_ms']:.2f}" if e else "— | — | —")
            out.append(f"| {mech} | {'auth only' if size == 0 else f'{size} B'} | {c} | {LABEL[s]} | "
                       f"{r['sessions_per_sec']:.0f} | {r['auth']['p50_ms']:.2f} | {r['auth']['p99_ms']:.2f} | "
                       f"{r['session']['p99_ms']:.2f} | {cpu_us(r):.0f} | {sum(r['errors'].values())} | {ratio} | {cpu_ratio} | {eq} |")
    out += verdicts(runs, equal)
    if idles:
        out += ["", "Idle connections (connect + EHLO, then silence), one system at a time. Memory "
                "summed over every process of the system while they are held: RSS counts shared "
                "pages once per process (as `ps` does), PSS divides them among the processes "
                "that share them. \"Per connection\" is the PSS added over the idle system, "
                "divided by the connections established at that moment (/proc/net/tcp).", "",
                "| system | opened | established when measured | answered NOOP after hold | time to open s "
                "| processes | RSS sum MiB | PSS sum MiB | PSS idle system MiB | PSS per connection KiB | ÷ Postfix |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        per = {}
        for r in idles:
            h = r["mem_held"]
            conns = h.get("established") or r["open"]
            per[r["system"]] = (h["pss_kib"] - r["mem_before"]["pss_kib"]) / max(conns, 1)
        for s in ORDER:
            r = next((x for x in idles if x["system"] == s), None)
            if r is None:
                continue
            h, b = r["mem_held"], r["mem_before"]
            ratio = f"{per[s] / per['postfix']:.3f}" if s != "postfix" and per.get("postfix") else "—"
            out.append(f"| {LABEL[s]} | {r['open']} of {r['idle']} | {h.get('established', '?')} | "
                       f"{r['still_open']} | {r['open_seconds']:.1f} | "
                       f"{h['processes']} | {h['rss_kib'] / 1024:.0f} | {h['pss_kib'] / 1024:.0f} | "
                       f"{b['pss_kib'] / 1024:.0f} | {per[s]:.1f} | {ratio} |")
    pf = [r for k, r in runs.items() if k[3] == "postfix"]
    if pf:
        names = ["smtpd", "auth", "anvil", "master", "postlogd", "cleanup", "trivial-rewrite", "qmgr"]
        out += ["", "Where Postfix + Dovecot's CPU goes, µs per session, by process name. `smtpd` "
                "includes every process that exited during the run (reaped by its master: smtpd "
                "after max_use = 100 sessions, and in the message rows some cleanup and "
                "trivial-rewrite too, whose own columns then show only the live ones); `auth` "
                "is Dovecot's auth process; `anvil` both Postfix's and Dovecot's. Over all "
                "the rounds of a cell.", "",
                "| mechanism | body | clients | " + " | ".join(names) + " | other |",
                "|---|---|---|" + "---|" * (len(names) + 1)]
        for r in pf:
            delta = r["cpu_delta"]
            k = 1e6 / delta["hz"] / max(r["sessions"], 1)
            d = dict(delta["by"])
            d["smtpd"] = d.get("smtpd", 0) + delta["exited"]
            other = delta["ticks"] - sum(d.get(n, 0) for n in names)
            out.append(f"| {r['mechanism']} | {'auth only' if r['size'] == 0 else str(r['size']) + ' B'} | "
                       f"{r['concurrency']} | " + " | ".join(f"{d.get(n, 0) * k:.0f}" for n in names)
                       + f" | {other * k:.0f} |")
    out.append("<!-- bench-peer:end -->")
    text = "\n".join(out)
    print(text)
    if os.environ.get("BENCH_WRITE", "1") == "0":
        return
    path = sys.argv[2]
    doc = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if "<!-- bench-peer:start -->" in doc:
        a = doc.index("<!-- bench-peer:start -->")
        b = doc.index("<!-- bench-peer:end -->") + len("<!-- bench-peer:end -->")
        doc = doc[:a] + text + doc[b:]
    else:
        doc = doc.rstrip() + "\n\n" + text + "\n"
    open(path, "w").write(doc)


if __name__ == "__main__":
    main()
