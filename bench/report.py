#!/usr/bin/env python3
"""Render the benchmark results (written by run.sh) as markdown.

  report.py WORKDIR > latest.md

WORKDIR holds:
  cases.tsv   id  label  proxy                     (table order)
  wrk.tsv     id  round  rps  p50_ms  p99_ms  cpu_us  requests  non2xx  sockerr  wrapped  sys_us
  p99.tsv     id  round  p50_ms  p99_ms  achieved_rps  non200
  meta.json   run parameters, RSS figures, notes
Medians are taken over rounds.
"""
import json
import os
import statistics
import sys


def read_tsv(path):
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.rstrip("\n")
                if line:
                    rows.append(line.split("\t"))
    return rows


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def fmt_ms(v):
    if v is None:
        return "—"
    return f"{v:.2f} ms" if v < 10 else f"{v:.1f} ms"


def fmt_int(v):
    return "—" if v is None else f"{v:,.0f}"


def fmt_cpu(v):
    return "—" if v is None else f"{v:.1f}"


def main():
    work = sys.argv[1]
    cases = read_tsv(os.path.join(work, "cases.tsv"))
    wrk = read_tsv(os.path.join(work, "wrk.tsv"))
    p99 = read_tsv(os.path.join(work, "p99.tsv"))
    with open(os.path.join(work, "meta.json")) as f:
        meta = json.load(f)

    agg = {}
    flags = {}
    for cid, label, proxy in cases:
        rows = [r for r in wrk if r[0] == cid]
        if rows:
            agg[cid] = {
                "rps": med([num(r[2]) for r in rows]),
                "p50": med([num(r[3]) for r in rows]),
                "p99": med([num(r[4]) for r in rows]),
                "cpu": med([num(r[5]) for r in rows]) if proxy != "none" else None,
                "sys": med([num(r[10]) for r in rows if len(r) > 10]) if proxy != "none" else None,
                "rounds": len(rows),
            }
            non2xx = sum(int(r[7]) for r in rows)
            sockerr = sum(int(r[8]) for r in rows)
            wrapped = sum(int(r[9]) for r in rows)
            notes = []
            if non2xx:
                notes.append(f"{non2xx} non-2xx responses")
            if sockerr:
                notes.append(f"{sockerr} socket errors")
            if wrapped:
                notes.append(f"token pool wrapped in {wrapped} run(s): some tokens were reused")
            if notes:
                flags[cid] = notes
        prow = [r for r in p99 if r[0] == cid]
        if prow:
            agg.setdefault(cid, {})
            agg[cid]["p99_4k"] = med([num(r[3]) for r in prow])
            agg[cid]["rate_4k"] = med([num(r[4]) for r in prow])
            non200 = sum(int(r[5]) for r in prow)
            if non200:
                flags.setdefault(cid, []).append(f"{non200} non-200 responses at fixed rate")
            rate = agg[cid]["rate_4k"]
            if rate is not None and rate < 0.97 * meta["rate"]:
                flags.setdefault(cid, []).append(
                    f"fixed-rate run reached only {rate:,.0f} req/s of {meta['rate']:,}")

    out = []
    out.append(f"# authgate vs HAProxy {meta.get('haproxy_version', '')} — load benchmark\n")
    out.append(
        f"{meta['started']} · {meta['cpu_model']} · {meta['nproc']} cores · "
        f"proxy under test on core {meta['proxy_cpu']}, wrk + nginx on core {meta['load_cpu']} · "
        f"wrk -t1 -c{meta['conns']} -d{meta['duration']}s · {meta['rounds']} round(s), "
        f"interleaved, median shown · p99@{meta['rate'] // 1000}k: h2load --h1 -c{meta['p99_conns']} "
        f"--rps {meta['rate'] // meta['p99_conns']} (fixed {meta['rate']:,} req/s) for {meta['duration']}s\n")
    rate_hdr = f"p99@{meta['rate'] // 1000}k"
    out.append(f"| case | req/s | p50 | p99 | CPU µs/req | of which kernel | {rate_hdr} |")
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    for cid, label, proxy in cases:
        a = agg.get(cid)
        if not a:
            continue
        mark = " ⚠" if cid in flags else ""
        out.append(
            f"| {label}{mark} | {fmt_int(a.get('rps'))} | {fmt_ms(a.get('p50'))} | "
            f"{fmt_ms(a.get('p99'))} | {fmt_cpu(a.get('cpu'))} | {fmt_cpu(a.get('sys'))} | "
            f"{fmt_ms(a.get('p99_4k'))} |")
    out.append("")

    def get(cid, key):
        return agg.get(cid, {}).get(key)

    # Per-round values: cases run interleaved, so a round's authgate and
    # HAProxy figures were measured minutes apart at most; their ratio
    # cancels the drift between rounds that the medians above do not.
    columns = {"rps": (wrk, 2), "cpu": (wrk, 5), "p99_4k": (p99, 3)}

    def per_round(cid, key):
        rows, col = columns[key]
        return {r[1]: num(r[col]) for r in rows if r[0] == cid and num(r[col]) is not None}

    def paired(num_cid, den_cid, key):
        a, b = per_round(num_cid, key), per_round(den_cid, key)
        return [a[k] / b[k] for k in sorted(a, key=int) if k in b and b[k]]

    def ratio_line(text, num_, den, target, higher_better=True, unit="", pair=None):
        if num_ is None or den is None or den == 0:
            out.append(f"- {text}: n/a")
            return
        r = num_ / den
        if target is None:
            ok = r <= 1.0 if not higher_better else r >= 1.0
            tgt = "≤ 1.0" if not higher_better else "≥ 1.0"
        else:
            ok = r >= target if higher_better else r <= target
            tgt = f"{'≥' if higher_better else '≤'} {target}"
        out.append(
            f"- {text}: {num_:,.1f}{unit} / {den:,.1f}{unit} = **{r:.2f}×** "
            f"(target {tgt}) — {'PASS' if ok else 'FAIL'}")
        ratios = paired(*pair) if pair else []
        if len(ratios) > 1:
            out.append(
                f"  - round by round: {', '.join(f'{x:.2f}' for x in ratios)} — "
                f"median {med(ratios):.2f}×, {sum(1 for x in ratios if (x >= target if higher_better else x <= target))} "
                f"of {len(ratios)} rounds on target")

    out.append("Ratios (authgate / HAProxy):\n")
    ratio_line("authgate RS256 repeated token / HAProxy RS256, req/s",
               get("ag_rs", "rps"), get("hap_rs", "rps"), 2.5, pair=("ag_rs", "hap_rs", "rps"))
    ratio_line("authgate ES256 fresh token / HAProxy ES256 fresh token, req/s",
               get("ag_es_fresh", "rps"), get("hap_es_fresh", "rps"), 1.5,
               pair=("ag_es_fresh", "hap_es_fresh", "rps"))
    ratio_line("authgate none / HAProxy plain, CPU µs per request",
               get("ag_none", "cpu"), get("hap_plain", "cpu"), 1.0, higher_better=False, unit=" µs",
               pair=("ag_none", "hap_plain", "cpu"))
    ratio_line(f"{rate_hdr}: authgate none / HAProxy plain",
               get("ag_none", "p99_4k"), get("hap_plain", "p99_4k"), 1.0, higher_better=False,
               unit=" ms", pair=("ag_none", "hap_plain", "p99_4k"))
    ratio_line(f"{rate_hdr}: authgate RS256 / HAProxy RS256",
               get("ag_rs", "p99_4k"), get("hap_rs", "p99_4k"), 1.0, higher_better=False,
               unit=" ms", pair=("ag_rs", "hap_rs", "p99_4k"))
    out.append("")
    if get("bare", "cpu") is not None:
        out.append("The hyper floor (examples/bare_proxy.rs, same run, same core; no target):\n")
        for text, a, b in [
            ("hyper floor / HAProxy plain", get("bare", "cpu"), get("hap_plain", "cpu")),
            ("authgate none / hyper floor", get("ag_none", "cpu"), get("bare", "cpu")),
        ]:
            if a is not None and b:
                out.append(f"- {text}, CPU µs per request: {a:.1f} / {b:.1f} = **{a / b:.2f}×**")
        user = {c: get(c, "cpu") - get(c, "sys") for c in ("hap_plain", "bare", "ag_none")
                if get(c, "cpu") is not None and get(c, "sys") is not None}
        if len(user) == 3:
            out.append(
                "- user-space µs per request (CPU minus kernel): HAProxy plain "
                f"{user['hap_plain']:.1f}, hyper floor {user['bare']:.1f}, authgate none "
                f"{user['ag_none']:.1f}")
        out.append("")

    def plain_ratio(text, num_cid, den_cid, key, unit, fmt=".2f"):
        """A ratio with no target: the medians, then round by round."""
        a, b = get(num_cid, key), get(den_cid, key)
        if a is None or not b:
            return
        line = f"- {text}: {a:{fmt}}{unit} / {b:{fmt}}{unit} = **{a / b:.2f}×**"
        ratios = paired(num_cid, den_cid, key)
        if len(ratios) > 1:
            line += (f"; round by round {', '.join(f'{x:.2f}' for x in ratios)}, "
                     f"median {med(ratios):.2f}×")
        out.append(line)

    if get("hap_same", "cpu") is not None:
        out.append(
            "HAProxy doing the header work of authgate's `none` route (X-Request-Id to the "
            "upstream and back, X-Forwarded-Proto/-Host, the identity-prefix strip, "
            "x-authgate-auth; same run, same core; no target — the targets are against "
            "HAProxy plain):\n")
        plain_ratio("HAProxy with the headers / HAProxy plain, CPU µs per request",
                    "hap_same", "hap_plain", "cpu", " µs")
        plain_ratio("authgate none / HAProxy with the headers, CPU µs per request",
                    "ag_none", "hap_same", "cpu", " µs")
        plain_ratio(f"{rate_hdr}: authgate none / HAProxy with the headers",
                    "ag_none", "hap_same", "p99_4k", " ms")
        out.append("")

    if get("ag_h2", "cpu") is not None and get("hap_h2", "cpu"):
        out.append(
            "HTTP/2 with prior knowledge (h2load -m 10: ten streams per connection), the "
            "`none` route and HAProxy's plain frontend; no target:\n")
        plain_ratio("authgate / HAProxy, req/s", "ag_h2", "hap_h2", "rps", "", ",.1f")
        plain_ratio("authgate / HAProxy, CPU µs per request", "ag_h2", "hap_h2", "cpu", " µs", ",.1f")
        out.append("")

    rss = meta.get("rss", {})
    if rss:
        out.append("Memory (authgate, fresh process, VmRSS):\n")
        idle = rss.get("idle_kib")
        if idle is not None:
            mib = idle / 1024
            out.append(f"- idle RSS: **{mib:.1f} MiB** (target ≤ 20 MiB) — {'PASS' if mib <= 20 else 'FAIL'}")
        k = rss.get("conns")
        if k:
            mib = k["rss_kib"] / 1024
            ok = mib <= 150 and k.get("alive", 0) >= k.get("count", 0)
            out.append(
                f"- RSS with {k['count']:,} idle keep-alive connections (one request each, "
                f"{k.get('ok', 0):,} × 200, {k.get('alive', 0):,} still open when measured): "
                f"**{mib:.1f} MiB** (peak {k.get('hwm_kib', 0) / 1024:.1f} MiB; target ≤ 150 MiB) — "
                f"{'PASS' if ok else 'FAIL'}")
        if rss.get("after_bench_kib"):
            out.append(f"- for reference, RSS of the benchmark instance after all load runs: "
                       f"{rss['after_bench_kib'] / 1024:.1f} MiB")
        h = rss.get("haproxy")
        if h:
            out.append(
                f"- for reference, HAProxy: idle {h['rss_before_kib'] / 1024:.1f} MiB, "
                f"{h['rss_kib'] / 1024:.1f} MiB with {h['count']:,} idle connections")
        out.append("")

    if flags:
        out.append("⚠ flagged cases:\n")
        labels = {c[0]: c[1] for c in cases}
        for cid, notes in flags.items():
            out.append(f"- {labels.get(cid, cid)}: {'; '.join(notes)}")
        out.append("")

    for note in meta.get("notes", []):
        out.append(f"- {note}")
    print("\n".join(out).rstrip() + "\n")


if __name__ == "__main__":
    main()
