#!/usr/bin/python3
"""bench/report.py — medians and tollgate/nginx ratios from bench result lines.

Input (file argument or stdin): one line per measured run,
    <scenario> <contender> <round> key=value key=value ...
Output: for each scenario and each requested key, the median over rounds of
every contender, and the ratio of each contender to the base.  Then the same
ratios paired by round (each round runs the contenders back to back, so a
paired ratio cancels the machine's slow drifts): their median, range, and in
how many rounds the contender was at least as good as the base.

Several RESULTS files (runs of the same script, perhaps on different days) are
pooled: every round of every run counts once, so the paired figures answer
"across all these rounds, how does the contender compare?" with more rounds
than one run holds, and a line per run gives each run's paired median.

Usage: report.py RESULTS [RESULTS ...] --keys rps,p99_ms,cpu_us --base nginx [--title T]
"""
import argparse
import statistics
import sys
from collections import OrderedDict, defaultdict

LABELS = {
    "rps": ("requests/s", "higher is better"),
    "p99_ms": ("p99 latency ms", "lower is better"),
    "p50_ms": ("p50 latency ms", "lower is better"),
    "cpu_us": ("proxy CPU us/request", "lower is better"),
    "backend_cpu_us": ("backend CPU us/request", "info"),
    "user_us": ("  of which user space", "lower is better"),
    "sys_us": ("  of which kernel", "lower is better"),
    "errors": ("errors (sum)", "must be 0"),
    "mbps": ("MiB/s", "higher is better"),
    "redis_reads": ("Redis reads/request", "0 when hot"),
    "misses": ("cache misses/request", "0 when hot"),
    "lranges": ("Redis LRANGE/request", "0 when hot"),
    "rss_kib": ("RSS KiB after run", "info"),
}

RATIO_KEYS = {"rps", "p50_ms", "p99_ms", "cpu_us", "user_us", "sys_us", "backend_cpu_us", "mbps"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="+")
    ap.add_argument("--keys", default="rps,p99_ms,cpu_us")
    ap.add_argument("--base", default="nginx", help="contender in the denominator")
    ap.add_argument("--title", default="")
    args = ap.parse_args()

    data = defaultdict(lambda: defaultdict(list))   # (scen, cont) -> key -> values
    by_round = defaultdict(dict)                    # (scen, cont, key) -> round -> value
    scenarios = OrderedDict()
    contenders = OrderedDict()
    for run, path in enumerate(args.results):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 4 or line.startswith("#"):
                    continue
                scen, cont = parts[0], parts[1]
                scenarios[scen] = 1
                contenders[cont] = 1
                for kv in parts[3:]:
                    k, _, v = kv.partition("=")
                    try:
                        data[(scen, cont)][k].append(float(v))
                        by_round[(scen, cont, k)][(run, parts[2])] = float(v)
                    except ValueError:
                        pass

    conts = list(contenders)
    if args.base in conts:          # base last: ratio = other / base
        conts.remove(args.base)
        conts.append(args.base)
    keys = args.keys.split(",")
    if args.title:
        print(args.title)
    has_base = args.base in conts
    others = conts[:-1] if has_base else []
    hdr = "%-10s %-24s" % ("scenario", "metric") + "".join("%14s" % c for c in conts)
    hdr += "".join("%18s" % ("%s/%s" % (c[:10], args.base[:6])) for c in others)
    print(hdr)
    print("-" * len(hdr))
    for scen in scenarios:
        for k in keys:
            if not any(data[(scen, c)].get(k) for c in conts):
                continue
            meds = []
            for c in conts:
                vals = data[(scen, c)].get(k, [])
                if k == "errors":
                    meds.append(sum(vals) if vals else None)
                else:
                    meds.append(statistics.median(vals) if vals else None)
            row = "%-10s %-24s" % (scen, LABELS.get(k, (k,))[0])
            for m in meds:
                row += "%14s" % ("-" if m is None else fmt(m))
            if k in RATIO_KEYS:
                b = meds[-1] if has_base else None
                for a in meds[:len(others)]:
                    row += "%18s" % ("%.3f" % (a / b) if a is not None and b else "-")
            print(row)
    n = max((len(v) for d in data.values() for v in d.values()), default=0)
    note = "medians over %d rounds" % n
    if len(args.results) > 1:
        note += " of %d runs" % len(args.results)
    if others:
        note += "; ratios = contender / %s" % args.base
    print("(%s)" % note)
    if others and n > 1:
        paired(scenarios, others, args.base, [k for k in keys if k in RATIO_KEYS], by_round)
        if len(args.results) > 1:
            per_run(scenarios, others, args.base, [k for k in keys if k in RATIO_KEYS], by_round,
                    len(args.results))
    return 0


def paired(scenarios, others, base, keys, by_round):
    """Per-round ratios contender/base: median [min-max], rounds at least as good."""
    print()
    print("paired by round: median ratio [min-max], rounds at least as good as %s" % base)
    for scen in scenarios:
        for k in keys:
            row = "%-10s %-24s" % (scen, LABELS.get(k, (k,))[0])
            shown = False
            for c in others:
                rs = ratios(by_round, scen, c, base, k)
                if not rs:
                    row += "%30s" % "-"
                    continue
                shown = True
                higher = "higher" in LABELS.get(k, ("", ""))[1]
                good = sum(1 for x in rs if (x >= 1 if higher else x <= 1))
                row += "%30s" % ("%.3f [%.2f-%.2f] %d/%d" % (statistics.median(rs), min(rs), max(rs), good, len(rs)))
            if shown:
                print(row)


def ratios(by_round, scen, c, base, k, run=None):
    a, b = by_round.get((scen, c, k), {}), by_round.get((scen, base, k), {})
    return [a[r] / b[r] for r in a if r in b and b[r] and (run is None or r[0] == run)]


def per_run(scenarios, others, base, keys, by_round, runs):
    """Each run's paired median, run by run (in the order the files were given)."""
    print()
    print("paired median of each run (files in the order given), contender/%s" % base)
    for scen in scenarios:
        for k in keys:
            for c in others:
                meds = []
                for run in range(runs):
                    rs = ratios(by_round, scen, c, base, k, run)
                    meds.append("%.2f" % statistics.median(rs) if rs else "-")
                if any(m != "-" for m in meds):
                    label = LABELS.get(k, (k,))[0] + ("" if len(others) == 1 else " " + c)
                    print("%-10s %-24s %s" % (scen, label, " ".join("%5s" % m for m in meds)))


def fmt(v):
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return "%.0f" % v
    if abs(v) >= 10:
        return "%.1f" % v
    return "%.3g" % v


if __name__ == "__main__":
    sys.exit(main())
