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
    b, a = r["cpu_before"], r["cpu_after"]
    return (a["ticks"] - b["ticks"]) * 1e6 / a["hz"] / max(r["sessions"], 1)


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    runs = [r for r in rows if "sessions" in r and r.get("mode", "max") == "max"]
    equal = {(r["mechanism"], r["size"], r["concurrency"], r["system"]): r
             for r in rows if "sessions" in r and r.get("mode") == "equal"}
    idles = [r for r in rows if "idle" in r]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    rev = version(["git", "rev-parse", "--short", "HEAD"])
    pfv = version(["postconf", "-d", "-h", "mail_version"])
    dcv = version(["dovecot", "--version"]).split(" ")[0]
    secs = os.environ.get("BENCH_SECS", "5")
    out = ["<!-- bench-peer:start -->",
           f"### Run of {datetime.date.today()} (`scripts/bench-peer.sh {secs}`)", "",
           f"Machine: {os.cpu_count()} × {cpu}; authrelay commit {rev} "
           f"({'prebuilt binaries, BENCH_BUILD=0' if os.environ.get('BENCH_BUILD') == '0' else 'release build'}); "
           f"Postfix {pfv}, Dovecot {dcv} (Debian packages); {secs} s per run; "
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
    for r in runs:
        cells.setdefault((r["mechanism"], r["size"], r["concurrency"]), {})[r["system"]] = r
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
    pf = [r for r in runs if r["system"] == "postfix"]
    if pf:
        names = ["smtpd", "auth", "anvil", "master", "postlogd", "cleanup", "trivial-rewrite", "qmgr"]
        out += ["", "Where Postfix + Dovecot's CPU goes, µs per session, by process name. `smtpd` "
                "includes every process that exited during the run (reaped by its master: smtpd "
                "after max_use = 100 sessions, and in the message rows some cleanup and "
                "trivial-rewrite too, whose own columns then show only the live ones); `auth` "
                "is Dovecot's auth process; `anvil` both Postfix's and Dovecot's.", "",
                "| mechanism | body | clients | " + " | ".join(names) + " | other |",
                "|---|---|---|" + "---|" * (len(names) + 1)]
        for r in pf:
            b, a = r["cpu_before"], r["cpu_after"]
            k = 1e6 / a["hz"] / max(r["sessions"], 1)
            d = {n: a["by"].get(n, 0) - b["by"].get(n, 0) for n in set(a["by"]) | set(b["by"])}
            d["smtpd"] = d.get("smtpd", 0) + a["exited"] - b["exited"]
            other = (a["ticks"] - b["ticks"]) - sum(d.get(n, 0) for n in names)
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
