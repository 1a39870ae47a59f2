#!/usr/bin/env python3
"""Turns bench/run's raw JSON lines into the results table (markdown on stdout)."""
import json, os, platform, statistics, subprocess, sys, time

raw, secs, reps = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(l) for l in open(raw) if l.strip()]
PATHS = ["veth", "moat", "pasta", "slirp4netns"]

def med(v):
    return statistics.median(v) if v else 0.0

def span(v):
    return f"{min(v):.2f}–{max(v):.2f}" if v else "-"

def ratio(a, b):
    return f"{a / b:.2f}×" if b else "n/a"

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
print("- paths: veth = the kernel path (host namespace straight to the world over veth); moat, pasta and slirp4netns each carry a namespace's traffic to the same world\n")

print("## Bulk TCP\n")
print("| MTU | direction | streams | veth | moat | pasta | slirp4netns | moat/veth | moat/pasta | moat/slirp4netns |")
print("|---|---|---|---|---|---|---|---|---|---|")
for mode in ["best", "1500"]:
    for d in ["up", "down"]:
        for s in [1, 4]:
            vals = {p: [r["gbps"] for r in rows if r["kind"] == "bulk" and r["mode"] == mode and r["dir"] == d and r["streams"] == s and r["path"] == p] for p in PATHS}
            m = {p: med(v) for p, v in vals.items()}
            cells = " | ".join(f"{m[p]:.2f} ({span(vals[p])})" for p in PATHS)
            label = "65520" if mode == "best" else "1500"
            dname = "sandbox→world" if d == "up" else "world→sandbox"
            print(f"| {label} | {dname} | {s} | {cells} | {ratio(m['moat'], m['veth'])} | {ratio(m['moat'], m['pasta'])} | {ratio(m['moat'], m['slirp4netns'])} |")

print("\n## Connections (connect + request + response + close)\n")
print("| concurrency | path | conn/s (median) | p50 µs | p99 µs |")
print("|---|---|---|---|---|")
conn = {}
for c in [1, 32]:
    for p in PATHS:
        rs = [r["result"] for r in rows if r["kind"] == "conn" and r["conc"] == c and r["path"] == p]
        rate = med([r.get("per_sec", 0) for r in rs])
        p50 = med([r.get("p50_us", 0) for r in rs])
        p99 = med([r.get("p99_us", 0) for r in rs])
        conn[(c, p)] = (rate, p50, p99)
        print(f"| {c} | {p} | {rate:.0f} | {p50:.0f} | {p99:.0f} |")
best_peer = {c: max(conn[(c, 'pasta')][0], conn[(c, 'slirp4netns')][0]) for c in [1, 32]}
print()
for c in [1, 32]:
    print(f"- concurrency {c}: moat / better peer = {ratio(conn[(c, 'moat')][0], best_peer[c])}; moat / veth = {ratio(conn[(c, 'moat')][0], conn[(c, 'veth')][0])}")
print(f"- connect latency added over veth (p50, concurrency 1): moat {conn[(1, 'moat')][1] - conn[(1, 'veth')][1]:.0f} µs, pasta {conn[(1, 'pasta')][1] - conn[(1, 'veth')][1]:.0f} µs, slirp4netns {conn[(1, 'slirp4netns')][1] - conn[(1, 'veth')][1]:.0f} µs")

print("\n## DNS (UDP A queries; moat: the sandbox asks the gateway, moat forwards to the same server)\n")
print("| concurrency | path | queries/s | p50 µs | p99 µs |")
print("|---|---|---|---|---|")
dns = {}
for c in [1, 16]:
    for p in ["direct", "moat"]:
        rs = [r["result"] for r in rows if r["kind"] == "dns" and r["conc"] == c and r["path"] == p]
        q = med([r.get("per_sec", 0) for r in rs]); p50 = med([r.get("p50_us", 0) for r in rs]); p99 = med([r.get("p99_us", 0) for r in rs])
        dns[(c, p)] = q
        print(f"| {c} | {p} | {q:.0f} | {p50:.0f} | {p99:.0f} |")
for c in [1, 16]:
    print(f"- concurrency {c}: moat / direct = {ratio(dns[(c, 'moat')], dns[(c, 'direct')])}")

print(f"\n## Published port (iperf3, 1 stream, MTU 65520, {max(int(secs) // 2, 1)} s runs)\n")
print("| direction | veth (host → world) | moat published port (host → sandbox) | ratio |")
print("|---|---|---|---|")
for d, label in [("up", "client sends"), ("down", "client receives")]:
    v = [r["veth"] for r in rows if r["kind"] == "publish" and r["dir"] == d]
    m = [r["moat"] for r in rows if r["kind"] == "publish" and r["dir"] == d]
    print(f"| {label} | {med(v):.2f} ({span(v)}) | {med(m):.2f} ({span(m)}) | {ratio(med(m), med(v))} |")

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

print("\n## Start-up (wall time, median of 8)\n")
for r in rows:
    if r["kind"] == "start":
        print(f"- {r['path']}: {med(r['ms']):.1f} ms (min {min(r['ms']):.1f}, max {max(r['ms']):.1f})")

print("\n## Memory (moat process RSS)\n")
for r in rows:
    if r["kind"] == "rss":
        print(f"- idle: {r['idle_kib'] / 1024:.1f} MiB")
        print(f"- with {r['held']} open idle TCP connections: {r['busy_kib'] / 1024:.1f} MiB")
    if r["kind"] == "rss_stalled":
        print(f"- with {r['stalled']} connections whose far side never reads, both ways "
              f"(default --max-buffer-memory, 256 MiB): peak {r['peak_kib'] / 1024:.1f} MiB "
              f"(target ≤ 256 MiB)")
