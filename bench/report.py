#!/usr/bin/env python3
"""Turns bench/run's raw JSON lines into the results table (markdown on stdout)."""
import json, os, platform, statistics, subprocess, sys, time

raw, secs, reps = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(l) for l in open(raw) if l.strip()]
KINDS = {r["kind"] for r in rows}
# The peers: Debian's pasta, a current one when BENCH_PASTA_CURRENT named it, slirp4netns.
PEERS = [p for p in ["pasta", "pasta-current", "slirp4netns"] if p != "pasta-current" or any(r.get("path") == p for r in rows)]
PATHS = ["veth", "moat"] + PEERS
VERSIONS = next((r for r in rows if r["kind"] == "peers"), {})

def med(v):
    return statistics.median(v) if v else 0.0

def span(v):
    return f"{min(v):.2f}–{max(v):.2f}" if v else "-"

def ratio(a, b):
    return f"{a / b:.2f}×" if b else "n/a"

def cores(rs):
    """Median cores busy machine-wide over runs `rs` (0 when not recorded)."""
    return med([r["cores"] for r in rs if r.get("cores")])

def engine_parts(rs):
    """Median share of a core moat's engine thread used over runs `rs`, and of it in user
    space; None for what was not recorded."""
    v = [r["engine"] for r in rs if r.get("engine")]
    u = [r["engine_user"] for r in rs if "engine_user" in r]
    return (med(v) if v else None), (med(u) if u else None)

def engine(rs):
    """engine_parts as a table cell ("-" when not recorded)."""
    e, u = engine_parts(rs)
    if e is None:
        return "-"
    return f"{e:.2f}" if u is None else f"{e:.2f} (user {u:.2f})"

def per_core(value, busy):
    return value / busy if busy else 0.0

def per_core_free(value, rs):
    """`value` per busy core over runs `rs` had the engine's user-space time cost nothing:
    moat's own code, smoltcp and their copies free, the kernel's work inside the engine's
    system calls (both ends' TCP, the TAP, the host sockets, and the calls and wake-ups moat's
    choices make) left as measured. 0 when the user time was not recorded."""
    _, u = engine_parts(rs)
    return 0.0 if u is None else per_core(value, cores(rs) - u)

def kernel_cut(value, rs, wanted):
    """With the engine's user space free, the share of its kernel time that would also have
    to go for `value` over runs `rs` to reach `wanted` per busy core (0 when it already
    does; None when not recorded)."""
    e, u = engine_parts(rs)
    if e is None or u is None or not wanted or e <= u:
        return None
    excess = cores(rs) - u - value / wanted
    return max(0.0, excess / (e - u))

# Per target row: the ratio per busy core if moat's user space cost nothing, and the share
# of the engine's kernel time that would have to go as well to meet the target; the better
# of the default build and `--busy-poll 0` (whose engine CPU has no spinning in it).
free_bound = {}
cut_needed = {}

def note_bound(key, value_of, veth_per_core, target):
    """Fills free_bound and cut_needed for the row `key`; `value_of(path)` gives the
    throughput and runs of the moat builds."""
    if not veth_per_core:
        return 0.0
    best = max(per_core_free(*value_of(p)) for p in ["moat", "moat-nospin"])
    cuts = [c for c in (kernel_cut(*value_of(p), target * veth_per_core) for p in ["moat", "moat-nospin"]) if c is not None]
    free_bound[key] = best / veth_per_core
    if cuts:
        cut_needed[key] = min(cuts)
    return best

cpu = "unknown"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
print("# moat benchmark results\n")
print(f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
print(f"- machine: {os.cpu_count()} cores, {cpu}, kernel {platform.release()}")
print(f"- iperf3 {secs} s per run, {reps} interleaved repetitions; medians, min–max in Gbit/s")
print("- paths: veth = the kernel path (host namespace straight to the world over veth); moat, " + ", ".join(PEERS) + " each carry a namespace's traffic to the same world")
versions = [f"pasta {VERSIONS['pasta']}"] if VERSIONS.get("pasta") else []
if VERSIONS.get("pasta-current"):
    versions.append(f"pasta-current {VERSIONS['pasta-current']} (BENCH_PASTA_CURRENT)")
if versions:
    print("- peers' versions: " + "; ".join(versions))
    print("- how the peers are started, and what is known of pasta's uploads on this kind of machine: bench/README.md, \"The peers\"")
print()

def bulk_runs(mode, d, s, p):
    """The bulk runs of one table cell."""
    return [r for r in rows if r["kind"] == "bulk" and r["mode"] == mode and r["dir"] == d and r["streams"] == s and r["path"] == p]

def bulk_label(mode, d):
    return ("65520" if mode == "best" else "1500"), ("sandbox→world" if d == "up" else "world→sandbox")

# moat/veth per busy core for each bulk row (the per-core table fills it; the targets read it).
bulk_per_core = {}
if "bulk" in KINDS:  # a BENCH_ONLY run may not have it
    print("## Bulk TCP\n")
    print("| MTU | direction | streams | " + " | ".join(PATHS) + " | moat/veth | " + " | ".join(f"moat/{p}" for p in PEERS) + " |")
    print("|---|---|---|" + "---|" * (len(PATHS) + 1 + len(PEERS)))
    for mode in ["best", "1500"]:
        for d in ["up", "down"]:
            for s in [1, 4]:
                vals = {p: [r["gbps"] for r in bulk_runs(mode, d, s, p)] for p in PATHS}
                m = {p: med(v) for p, v in vals.items()}
                cells = " | ".join(f"{m[p]:.2f} ({span(vals[p])})" for p in PATHS)
                label, dname = bulk_label(mode, d)
                peers = " | ".join(ratio(m["moat"], m[p]) for p in PEERS)
                print(f"| {label} | {dname} | {s} | {cells} | {ratio(m['moat'], m['veth'])} | {peers} |")

    print(f"\n### Bulk TCP per busy core (cores busy machine-wide during the run, of {os.cpu_count()}; moat's engine thread, share of one core; Gbit/s per busy core)\n")
    print("The last two columns: `moat --busy-poll 0` (the engine sleeps rather than spin) per busy core, and the better of the two builds had the engine's user-space time cost nothing (moat's code, smoltcp and their copies; the kernel's work inside its system calls left as measured): a bound on what moat's user-space code can still win on this design (bench/README.md, \"What the per-core targets would take\").\n")
    print("| MTU | direction | streams | veth cores | moat cores | moat engine | veth Gbit/s per core | moat Gbit/s per core | moat/veth per core | --busy-poll 0: /veth per core | bound, user space free |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in ["best", "1500"]:
        for d in ["up", "down"]:
            for s in [1, 4]:
                rs = {p: bulk_runs(mode, d, s, p) for p in ["veth", "moat", "moat-nospin"]}
                c = {p: cores(v) for p, v in rs.items()}
                g = {p: per_core(med([r["gbps"] for r in v]), c[p]) for p, v in rs.items()}
                label, dname = bulk_label(mode, d)
                free = note_bound(f"bulk {label} {dname} ×{s}", lambda p: (med([r["gbps"] for r in rs[p]]), rs[p]), g["veth"], 0.75)
                if g["veth"]:
                    bulk_per_core[f"{label} {dname} ×{s}"] = g["moat"] / g["veth"]
                print(f"| {label} | {dname} | {s} | {c['veth']:.2f} | {c['moat']:.2f} | {engine(rs['moat'])} | {g['veth']:.2f} | {g['moat']:.2f} | {ratio(g['moat'], g['veth'])} | {ratio(g['moat-nospin'], g['veth'])} | {ratio(free, g['veth'])} |")

def against_baseline():
    """With BENCH_BASELINE, this build against the other one, measured interleaved in the
    same runs: the bulk and connection rows side by side."""
    if not any(r.get("path") == "baseline" for r in rows):
        return
    print("\n## This build against the baseline (BENCH_BASELINE, interleaved in the same runs)\n")
    print("| row | this build | baseline | this / baseline |")
    print("|---|---|---|---|")
    for mode in ["best", "1500"]:
        for d in ["up", "down"]:
            for s in [1, 4]:
                v = {p: [r["gbps"] for r in bulk_runs(mode, d, s, p)] for p in ["moat", "baseline"]}
                if not v["baseline"]:
                    continue
                label, dname = bulk_label(mode, d)
                m = {p: med(x) for p, x in v.items()}
                print(f"| bulk {label} {dname} ×{s} (Gbit/s) | {m['moat']:.2f} ({span(v['moat'])}) | {m['baseline']:.2f} ({span(v['baseline'])}) | {ratio(m['moat'], m['baseline'])} |")
    for kind, concs, label in [("conn", [1, 32], "connections/s"), ("dns", [1, 16], "DNS queries/s")]:
        for c in concs:
            v = {p: [r["result"].get("per_sec", 0) for r in rows if r["kind"] == kind and r["conc"] == c and r["path"] == p] for p in ["moat", "baseline"]}
            if not v["baseline"]:
                continue
            m = {p: med(x) for p, x in v.items()}
            spans = {p: f"{min(x):.0f}–{max(x):.0f}" for p, x in v.items()}
            print(f"| {label}, concurrency {c} | {m['moat']:.0f} ({spans['moat']}) | {m['baseline']:.0f} ({spans['baseline']}) | {ratio(m['moat'], m['baseline'])} |")

if "conn" in KINDS:  # a BENCH_ONLY run may not have it
    print("\n## Connections (connect + request + response + close)\n")
    print(f"| concurrency | path | conn/s (median) | p50 µs | p99 µs | cores busy (of {os.cpu_count()}) | moat engine (of a core) | conn/s per busy core |")
    print("|---|---|---|---|---|---|---|---|")
    def conn_stats(results):
        """Median conn/s, p50 and p99 of `moat-bench connrate` results."""
        return tuple(med([r.get(k, 0) for r in results]) for k in ("per_sec", "p50_us", "p99_us"))

    conn = {}
    for c in [1, 32]:
        for p in ["veth", "moat", "moat-nospin"] + PEERS:
            runs = [r for r in rows if r["kind"] == "conn" and r["conc"] == c and r["path"] == p]
            rate, p50, p99 = conn_stats([r["result"] for r in runs])
            busy = cores(runs)
            conn[(c, p)] = (rate, p50, p99, per_core(rate, busy), runs)
            print(f"| {c} | {'moat --busy-poll 0' if p == 'moat-nospin' else p} | {rate:.0f} | {p50:.0f} | {p99:.0f} | {busy:.2f} | {engine(runs)} | {per_core(rate, busy):.0f} |")
    best_peer = {c: max(conn[(c, p)][0] for p in PEERS) for c in [1, 32]}
    print()
    for c in [1, 32]:
        note_bound(f"connections c={c}", lambda p: (conn[(c, p)][0], conn[(c, p)][4]), conn[(c, "veth")][3], 0.6)
        print(f"- concurrency {c}: moat / better peer = {ratio(conn[(c, 'moat')][0], best_peer[c])}; moat / veth = {ratio(conn[(c, 'moat')][0], conn[(c, 'veth')][0])}; per busy core, moat / veth = {ratio(conn[(c, 'moat')][3], conn[(c, 'veth')][3])}")
    added = ", ".join(f"{p} {conn[(1, p)][1] - conn[(1, 'veth')][1]:.0f} µs" for p in ["moat"] + PEERS)
    print(f"- connect latency added over veth (p50, concurrency 1): {added}")

against_baseline()

bp = [r for r in rows if r["kind"] == "busypoll"]
if bp:
    print("\n## Busy-poll (`--busy-poll`: latency against CPU)\n")
    print("| --busy-poll µs | conn/s, concurrency 1 | p50 µs | p99 µs | engine CPU, a connection every ~10 ms |")
    print("|---|---|---|---|---|")
    for us in sorted({r["us"] for r in bp}):
        rs = [r for r in bp if r["us"] == us]
        rate, p50, p99 = conn_stats([r["result"] for r in rs])
        cpu = med([r["cpu_pct"] for r in rs])
        print(f"| {us} | {rate:.0f} | {p50:.0f} | {p99:.0f} | {cpu:.1f}% of a core |")

if "dns" in KINDS:  # a BENCH_ONLY run may not have it
    print("\n## DNS (UDP A queries; moat: the sandbox asks the gateway, moat forwards to the same server)\n")
    print(f"| concurrency | path | queries/s | p50 µs | p99 µs | cores busy (of {os.cpu_count()}) | moat engine (of a core) | queries/s per busy core |")
    print("|---|---|---|---|---|---|---|---|")
    dns = {}
    for c in [1, 16]:
        for p in ["direct", "moat", "moat-nospin"]:
            runs = [r for r in rows if r["kind"] == "dns" and r["conc"] == c and r["path"] == p]
            rs = [r["result"] for r in runs]
            q = med([r.get("per_sec", 0) for r in rs]); p50 = med([r.get("p50_us", 0) for r in rs]); p99 = med([r.get("p99_us", 0) for r in rs])
            busy = cores(runs)
            dns[(c, p)] = (q, per_core(q, busy), runs)
            print(f"| {c} | {'moat --busy-poll 0' if p == 'moat-nospin' else p} | {q:.0f} | {p50:.0f} | {p99:.0f} | {busy:.2f} | {engine(runs)} | {per_core(q, busy):.0f} |")
    print()
    for c in [1, 16]:
        note_bound(f"DNS c={c}", lambda p: (dns[(c, p)][0], dns[(c, p)][2]), dns[(c, "direct")][1], 0.7)
        print(f"- concurrency {c}: moat / direct = {ratio(dns[(c, 'moat')][0], dns[(c, 'direct')][0])}; per busy core = {ratio(dns[(c, 'moat')][1], dns[(c, 'direct')][1])}; "
              f"with --busy-poll 0 = {ratio(dns[(c, 'moat-nospin')][1], dns[(c, 'direct')][1])}")

def speed_targets():
    """The speed targets (per busy core against the kernel path, against today's pasta, the
    connect latency moat adds), each read off the tables above; a part not run is left out."""
    lines = []
    def held(ok):
        return "held" if ok else "NOT held"
    def cut(key):
        c = cut_needed.get(key)
        if c is None:
            return ""
        return f"; the engine's kernel time would also have to fall {c * 100:.0f} %" + (" (more than all of it)" if c > 1 else "")
    def bound(key, target):
        """The row's ratio had moat's user space cost nothing, and what more it would take."""
        b = free_bound.get(key)
        if not b:
            return "-"
        return f"{b:.2f}×" + ("" if b >= target else f" (below the target{cut(key)})")
    if bulk_per_core:
        row, r = min(bulk_per_core.items(), key=lambda kv: kv[1])
        bulk_bounds = {k: v for k, v in free_bound.items() if k.startswith("bulk ")}
        if bulk_bounds:
            brow, b = min(bulk_bounds.items(), key=lambda kv: kv[1])
            short = [k for k, v in bulk_bounds.items() if v < 0.75]
            cuts = sorted(cut_needed[k] for k in short if k in cut_needed)
            need = f"; their engines' kernel time would also have to fall {cuts[0] * 100:.0f}–{cuts[-1] * 100:.0f} %" if cuts else ""
            if cuts and cuts[-1] > 1:
                need += " (on some rows more than all of it)"
            free = f"{b:.2f}× (lowest: {brow[5:]}; {len(short)} of {len(bulk_bounds)} rows below the target{need})"
        else:
            free = "-"
        lines.append(f"| bulk per busy core, every row (moat/veth) | ≥ 0.75× | {r:.2f}× (lowest: {row}) | {held(r >= 0.75)} | {free} |")
    if "conn" in KINDS:
        for c in [1, 32]:
            r = conn[(c, "moat")][3] / conn[(c, "veth")][3] if conn[(c, "veth")][3] else 0
            lines.append(f"| connections/s per busy core, c={c} (moat/veth) | ≥ 0.6× | {r:.2f}× | {held(r >= 0.6)} | {bound(f'connections c={c}', 0.6)} |")
        added = conn[(1, "moat")][1] - conn[(1, "veth")][1]
        lines.append(f"| connect latency added at p50, c=1 | ≤ +40 µs | {added:+.0f} µs | {held(added <= 40)} | - |")
    if "dns" in KINDS:
        for c in [1, 16]:
            r = dns[(c, "moat")][1] / dns[(c, "direct")][1] if dns[(c, "direct")][1] else 0
            lines.append(f"| DNS queries/s per busy core, c={c} (moat/direct) | ≥ 0.7× | {r:.2f}× | {held(r >= 0.7)} | {bound(f'DNS c={c}', 0.7)} |")
    today = "pasta-current" if "pasta-current" in PEERS else "pasta"
    against = []
    if "bulk" in KINDS:
        for mode in ["best", "1500"]:
            for d in ["up", "down"]:
                for st in [1, 4]:
                    m = {p: med([r["gbps"] for r in bulk_runs(mode, d, st, p)]) for p in ["moat", today]}
                    label, dname = bulk_label(mode, d)
                    if m[today]:
                        against.append((m["moat"] / m[today], f"bulk {label} {dname} ×{st}"))
    if "conn" in KINDS:
        for c in [1, 32]:
            if conn[(c, today)][0]:
                against.append((conn[(c, "moat")][0] / conn[(c, today)][0], f"connections c={c}"))
    if against:
        r, row = min(against)
        lines.append(f"| against {today} {VERSIONS.get(today, '')}, every bulk and connection row | ≥ 1.1× | {r:.2f}× (lowest: {row}) | {held(r >= 1.1)} | - |")
    if lines:
        print("\n## Speed targets (read off the tables above)\n")
        print("The last column: the per-core ratio had the engine's user space (moat's code, smoltcp, their copies) cost nothing, the better of the default build and `--busy-poll 0`, and where that is below the target, the share of the engine's kernel time that would have to go as well — the system calls, wake-ups and spinning moat's choices make are in that kernel time, so this bounds what removing user-space work alone can win, not every change (bench/README.md, \"What the per-core targets would take\").\n")
        print("| row | target | this run | | bound, user space free |")
        print("|---|---|---|---|---|")
        print("\n".join(lines))

speed_targets()

if "publish" in KINDS:  # a BENCH_ONLY run may not have it
    print(f"\n## Published port (iperf3, 1 stream, MTU 65520, {max(int(secs) // 2, 1)} s runs)\n")
    print("| direction | veth (host → world) | moat published port (host → sandbox) | ratio |")
    print("|---|---|---|---|")
    for d, label in [("up", "client sends"), ("down", "client receives")]:
        v = [r["veth"] for r in rows if r["kind"] == "publish" and r["dir"] == d]
        m = [r["moat"] for r in rows if r["kind"] == "publish" and r["dir"] == d]
        print(f"| {label} | {med(v):.2f} ({span(v)}) | {med(m):.2f} ({span(m)}) | {ratio(med(m), med(v))} |")

if "https" in KINDS:
    print("\n## HTTPS (nginx, TLS 1.3; rate: a new connection per request, one at a time, 3 s runs; bulk: one connection)\n")
    print("| path | requests/s | p50 µs | p99 µs | bulk Gbit/s |")
    print("|---|---|---|---|---|")
https = {}
for p in ["veth", "bypassed", "intercepted", "substituted"]:
    rs = [r for r in rows if r["kind"] == "https" and r["path"] == p]
    if not rs:
        continue
    rate = med([r["rate"].get("per_sec", 0) for r in rs])
    p50 = med([r["rate"].get("p50_us", 0) for r in rs])
    p99 = med([r["rate"].get("p99_us", 0) for r in rs])
    g = [r["bulk"].get("gbps", 0) for r in rs]
    https[p] = (rate, p50, med(g))
    label = {"veth": "veth", "bypassed": "moat, name bypassed (opaque)", "intercepted": "moat, intercepted",
             "substituted": "moat, intercepted, secret substituted and redacted"}[p]
    print(f"| {label} | {rate:.0f} | {p50:.0f} | {p99:.0f} | {med(g):.2f} ({span(g)}) |")
if https:
    print()
    print(f"- intercepted bulk / bypassed bulk = {ratio(https['intercepted'][2], https['bypassed'][2])} (target ≥ 0.7×); intercepted / veth = {ratio(https['intercepted'][2], https['veth'][2])}")
    print(f"- handshake latency added by interception (p50, intercepted − bypassed): {https['intercepted'][1] - https['bypassed'][1]:.0f} µs (target ≤ 2,000 µs)")
    print(f"- requests/s: intercepted / bypassed = {ratio(https['intercepted'][0], https['bypassed'][0])}; bypassed / veth = {ratio(https['bypassed'][0], https['veth'][0])}")
    if "substituted" in https:
        checked = any(r.get("ok") for r in rows if r["kind"] == "secret_check")
        print(f"- secrets: requests/s substituted / intercepted without secrets = {ratio(https['substituted'][0], https['intercepted'][0])} (target ≥ 0.8×); bulk = {ratio(https['substituted'][2], https['intercepted'][2])}; "
              + ("checked: nginx received the value, not the placeholder" if checked else "CHECK FAILED: nginx did not receive the value"))

held = [r for r in rows if r["kind"] == "held_bodies"]
if held:
    print("\n## Bodies held for a secret (intercepted; each connection stops 1 byte short of a 256 KiB body moat would hold whole to put the value in)\n")
    print("| secret | connections | bodies would be | --max-buffer-memory | moat's peak RSS | over the run without a secret |")
    print("|---|---|---|---|---|---|")
    base = next((r for r in held if not r["secret"]), None)
    for r in held:
        extra = f"{(r['peak_kib'] - base['peak_kib']) / 1024:+.1f} MiB" if base and r["secret"] else "-"
        print(f"| {'yes' if r['secret'] else 'no'} | {r['held']:,} of {r['n']:,} | {r['n'] * 256 / 1024:.0f} MiB | "
              f"{r['budget_mib']} MiB | {r['peak_kib'] / 1024:.1f} MiB | {extra} |")
    print("\n- target: with the secret, within --max-buffer-memory plus the engine's own overhead "
          "(the run without a secret holds the same connections and their TLS state, no bodies)")

if "start" in KINDS:
    print("\n## Start-up (wall time; median of 8, of 30 when alternating with a baseline build)\n")
for r in rows:
    if r["kind"] == "start":
        print(f"- {r['path']}: {med(r['ms']):.1f} ms (min {min(r['ms']):.1f}, max {max(r['ms']):.1f})")
alt = {r["path"]: med(r["ms"]) for r in rows if r["kind"] == "start" and (r["path"].startswith("baseline ") or r["path"].startswith("moat (alternating"))}
if len(alt) == 2:
    new, old = alt["moat (alternating with the baseline)"], next(v for k, v in alt.items() if k.startswith("baseline "))
    print(f"- this build − the baseline: {new - old:+.1f} ms (target ≤ +5 ms)")

if KINDS & {"rss", "rss_stalled"}:
    print("\n## Memory (moat process RSS)\n")
for r in rows:
    if r["kind"] == "rss":
        print(f"- idle: {r['idle_kib'] / 1024:.1f} MiB")
        print(f"- with {r['held']} open idle TCP connections: {r['busy_kib'] / 1024:.1f} MiB")
    if r["kind"] == "rss_stalled":
        print(f"- with {r['stalled']} connections whose far side never reads, both ways "
              f"(default --max-buffer-memory, 256 MiB): peak {r['peak_kib'] / 1024:.1f} MiB "
              f"(target ≤ 256 MiB)")

for r in rows:
    if r["kind"] == "audit_flood":
        print(f"\n## Audit log under a flood ({r['seconds']} s of distinct denied lookups, default --audit-max-size)\n")
        print(f"- {r['sent']:,} lookups sent; the log: {r['bytes'] / 2**20:.1f} MiB of its {r['cap'] / 2**20:.0f} MiB cap "
              f"(target ≤ cap), {r['lines']:,} lines, "
              f"{'one truncated event' if r['truncated'] == 1 else str(r['truncated']) + ' truncated events (target 1)'}, "
              f"{'the end event last' if r['end'] else 'NO END EVENT'}; {r['dropped']:,} events counted but not written")
        print(f"- moat's peak RSS during the flood: {r['peak_kib'] / 1024:.1f} MiB")

udp = [r for r in rows if r["kind"] == "udp"]
if udp:
    print("\n## UDP goodput (1,400-byte datagrams paced at 1 Gbit/s; moat-bench udp, the far peer counts what arrived)\n")
    print("| direction | veth Mbit/s | veth loss | moat Mbit/s | moat loss | moat/veth goodput | moat loss / veth loss |")
    print("|---|---|---|---|---|---|---|")
    for d in ["up", "down"]:
        g = {p: med([r["result"]["goodput_mbps"] for r in udp if r["dir"] == d and r["path"] == p]) for p in ["veth", "moat"]}
        l = {p: med([r["result"]["lost_percent"] for r in udp if r["dir"] == d and r["path"] == p]) for p in ["veth", "moat"]}
        loss_ratio = f"{l['moat'] / l['veth']:.1f}×" if l["veth"] > 0 else ("=" if l["moat"] == 0 else "veth lost none")
        print(f"| {'sandbox → world' if d == 'up' else 'world → sandbox'} | {g['veth']:.0f} | {l['veth']:.1f}% | {g['moat']:.0f} | {l['moat']:.1f}% | {ratio(g['moat'], g['veth'])} | {loss_ratio} |")

many = [r for r in rows if r["kind"] == "many"]
if many:
    print("\n## Many sandboxes (16 `moat run` started together vs one alone)\n")
    print("| measure | one | 16 together | 16 / one |")
    print("|---|---|---|---|")
    get = lambda what, n: next((r for r in many if r["what"] == what and r["n"] == n), None)
    c1, c16, b1, b16 = get("conn", 1), get("conn", 16), get("bulk", 1), get("bulk", 16)
    if c1 and c16:
        print(f"| time until every sandbox runs its command | {c1['all_up_ms']:.0f} ms | {c16['all_up_ms']:.0f} ms | |")
        print(f"| moat processes' RSS, total | {c1['rss_total_kib'] / 1024:.1f} MiB | {c16['rss_total_kib'] / 1024:.1f} MiB | |")
        print(f"| connections/s (concurrency 1 each), aggregate | {c1['value']:.0f} | {c16['value']:.0f} | {ratio(c16['value'], c1['value'])} (target ≥ 0.8×) |")
    if b1 and b16:
        print(f"| bulk Gbit/s (one iperf3 stream each), aggregate | {b1['value']:.2f} | {b16['value']:.2f} | {ratio(b16['value'], b1['value'])} (target ≥ 0.8×) |")

attach = {r["n"]: r for r in rows if r["kind"] == "attach"}
if 1 in attach and 64 in attach:
    one, all64 = attach[1], attach[64]
    print("\n## Many namespaces (64 served by 64 `moat attach` started together vs one alone)\n")
    print("| measure | one | 64 together | 64 / one |")
    print("|---|---|---|---|")
    print(f"| time until every namespace is served | {one['all_up_ms']:.0f} ms | {all64['all_up_ms']:.0f} ms | |")
    print(f"| moat's RSS per served namespace, idle | {one['idle_rss_total_kib'] / 1024:.1f} MiB | "
          f"{all64['idle_rss_total_kib'] / 64 / 1024:.1f} MiB (total {all64['idle_rss_total_kib'] / 1024:.0f} MiB) | (target ≤ 8 MiB) |")
    print(f"| moat's RSS per served namespace, after the load | {one['load_rss_total_kib'] / 1024:.1f} MiB | "
          f"{all64['load_rss_total_kib'] / 64 / 1024:.1f} MiB | |")
    print(f"| a connection each per second (3 s): completed | {one['paced_ok']} / {one['paced_of']} | {all64['paced_ok']} / {all64['paced_of']} | |")
    print(f"| connections/s (concurrency 1 each), aggregate | {one['conn_per_sec']:.0f} | {all64['conn_per_sec']:.0f} | {ratio(all64['conn_per_sec'], one['conn_per_sec'])} |")
    print(f"| bulk Gbit/s (one iperf3 stream each), aggregate | {one['bulk_gbps']:.2f} | {all64['bulk_gbps']:.2f} | {ratio(all64['bulk_gbps'], one['bulk_gbps'])} |")

cni = next((r for r in rows if r["kind"] == "cni"), None)
if cni:
    print(f"\n## moat-cni ({cni['n']} pods, each ADD run through bridge, host-local and loopback, with and without moat-cni)\n")
    print("| measure | p50 | p99 |")
    print("|---|---|---|")
    print(f"| ADD without moat-cni | {cni['add_plain_p50']:.1f} ms | {cni['add_plain_p99']:.1f} ms |")
    print(f"| ADD with moat-cni | {cni['add_moat_p50']:.1f} ms | {cni['add_moat_p99']:.1f} ms |")
    print(f"| moat-cni's own ADD (what it adds; target ≤ 20 ms at p99) | {cni['moat_alone_p50']:.1f} ms | {cni['moat_alone_p99']:.1f} ms |")
    print(f"| DEL with moat-cni | {cni['del_moat_p50']:.1f} ms | {cni['del_moat_p99']:.1f} ms |")
    if "add_deleg_p50" in cni:
        print(f"| ADD with moat-cni delegating to the bridge (nothing moved) | {cni['add_deleg_p50']:.1f} ms | {cni['add_deleg_p99']:.1f} ms |")
        print(f"| what the delegating moat-cni adds to the same pod's ADD (target ≤ 20 ms at p99) | {cni['deleg_adds_p50']:.1f} ms | {cni['deleg_adds_p99']:.1f} ms |")
        print(f"| DEL with moat-cni delegating | {cni['del_deleg_p50']:.1f} ms | {cni['del_deleg_p99']:.1f} ms |")
    print(f"\n- moat's RSS per pod, idle: {cni['rss_per_pod_kib'] / 1024:.1f} MiB ({cni['engines']} engines)")
    print(f"- served: the first and the last pod (following, then delegating) made {', '.join(f'{c:.0f}' for c in cni['served_conn_per_sec'])} connections/s to the world")

samples = [r for r in rows if r["kind"] == "soak_sample"]
soak = next((r for r in rows if r["kind"] == "soak"), None)
if samples and soak:
    print("\n## Soak (100,000 short connections and 1,000 long ones through one sandbox)\n")
    first, last = samples[0], samples[-1]
    peak = max(s["rss_kib"] for s in samples)
    # What is left once the run winds down: the last tenth of the samples.
    tail = samples[-max(1, len(samples) // 10):]
    print(f"- {soak['short']:,} short connections and {soak['long']:,} long ones in {last['t']:.0f} s")
    print(f"- moat's RSS: {first['rss_kib'] / 1024:.1f} MiB at the start, peak {peak / 1024:.1f} MiB, "
          f"{tail[-1]['rss_kib'] / 1024:.1f} MiB at the end")
    print(f"- moat's open descriptors: {first['fds']} at the start, peak {max(s['fds'] for s in samples)}, "
          f"{tail[-1]['fds']} at the end")
    print("- plot: [soak.svg](soak.svg) (RSS in MiB, solid; descriptors, dashed; over seconds)")
    # A small SVG beside the table.
    w, h, pad = 640, 220, 40
    t_max = max(s["t"] for s in samples) or 1
    r_max = max(peak / 1024, 1)
    f_max = max(max(s["fds"] for s in samples), 1)
    def pts(key, scale):
        return " ".join(f"{pad + s['t'] / t_max * (w - 2 * pad):.1f},{h - pad - (s[key] / scale) * (h - 2 * pad):.1f}"
                        for s in samples)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
           f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{pts("rss_kib", r_max * 1024)}"/>',
           f'<polyline fill="none" stroke="#d62728" stroke-width="1.5" stroke-dasharray="4 3" points="{pts("fds", f_max)}"/>',
           f'<text x="{pad}" y="{pad - 8}">moat soak: RSS (solid, max {r_max:.1f} MiB) and open descriptors (dashed, max {f_max})</text>',
           f'<text x="{w - pad}" y="{h - pad + 16}" text-anchor="end">{t_max:.0f} s</text>',
           f'<text x="{pad}" y="{h - pad + 16}">0 s</text>',
           '</svg>']
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "soak.svg"), "w") as f:
        f.write("\n".join(svg) + "\n")
