#!/usr/bin/env python3
"""Collects the load-test records, the machine description and criterion's summary lines
into one JSON file, and draws docs/bench.svg from them. Plain Python 3, no third-party
packages: the SVG is written by hand.

Usage (scripts/bench.sh runs it):

    python3 scripts/chart.py --load target/bench/load.jsonl --machine target/bench/machine.json \
        --criterion target/bench/criterion-*.txt --json target/bench/results.json \
        --svg docs/bench.svg --markdown target/bench/summary.md
"""

import argparse
import html
import json
import math
import os
import re
import sys

BASELINES = ["axum-broadcast", "hyper-bare"]
LABELS = {
    "tower-sse": "tower-sse (axum::serve)",
    "axum-broadcast": "axum Sse + broadcast",
    "hyper-bare": "bare hyper (floor)",
    "tower-sse-hyper": "tower-sse, bare hyper loop",
    "tower-sse:hyper": "tower-sse router, bare hyper loop",
    "axum-broadcast:hyper": "axum Sse router, bare hyper loop",
    "tokio-raw": "no HTTP library (kernel floor)",
}
ORDER = list(LABELS)


def load_records(path):
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                records.append(json.loads(line))
    return records


def parse_criterion(paths):
    """Criterion prints `name  time: [lo mid hi]` (the name may stand on its own line before
    it) and, for benches with a throughput, a `thrpt: [...]` line after it."""
    out = []
    for path in paths:
        bench = re.sub(r"^criterion-|\.txt$", "", os.path.basename(path))
        name = None
        last = None
        in_change = False
        with open(path, errors="replace") as f:
            for raw in f:
                line = raw.rstrip("\n")
                # `change:` blocks compare with the previous run on this machine: not ours.
                if re.match(r"^\s+change:", line):
                    in_change = True
                    continue
                if in_change and re.match(r"^\s+(time|thrpt):", line):
                    continue
                in_change = False
                m = re.match(r"^(\S.*?)\s+time:\s+\[(.*)\]", line)
                if m:
                    name = m.group(1).strip()
                    last = {"bench": bench, "name": name, "time": m.group(2).strip()}
                    out.append(last)
                    continue
                m = re.match(r"^\s+time:\s+\[(.*)\]", line)
                if m and name:
                    last = {"bench": bench, "name": name, "time": m.group(1).strip()}
                    out.append(last)
                    continue
                m = re.match(r"^\s+thrpt:\s+\[(.*)\]", line)
                if m and last is not None:
                    last["thrpt"] = m.group(1).strip()
                    continue
                if line and not line.startswith(" ") and not re.match(
                    r"^(Benchmarking|Found|Warning|Gnuplot|WARNING|Running|Finished|Compiling)", line
                ):
                    name = line.strip()
    return out


def pick(records, scenario, **kw):
    rows = [r for r in records if r.get("scenario") == scenario and not r.get("error")]
    for k, v in kw.items():
        rows = [r for r in rows if r.get(k) == v]
    by_mode = {}
    for r in rows:
        by_mode[r["mode"]] = r  # the last run wins
    return by_mode


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def slow_medians(records):
    """{mode: {"fast"|"slow": {"dps", "p99", "runs", "rss_max"}}} over the repetitions."""
    out = {}
    for r in records:
        if r.get("scenario") != "slow" or r.get("error"):
            continue
        key = "slow" if r.get("slow_pct", 0) > 0 else "fast"
        out.setdefault(r["mode"], {}).setdefault(key, []).append(r)
    for mode, d in out.items():
        for key, rows in d.items():
            d[key] = {
                "dps": median(get(r, "deliveries_per_s") for r in rows),
                "p99": median(get(r, "latency", "p99_ms") for r in rows),
                "runs": [get(r, "deliveries_per_s") for r in rows],
                "rss_max": max(get(r, "rss_max_kib") or 0 for r in rows),
                "open_end": [get(r, "open_end") for r in rows],
            }
    return out


def get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def fmt(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1000:
        v = int(v)
    if isinstance(v, int) and abs(v) < 100000:
        return f"{v:,}"
    if abs(v) >= 1000000:
        return f"{v / 1e6:.2f}M".replace(".00M", "M")
    if abs(v) >= 100000:
        return f"{v / 1000:,.0f}k"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def ordered(modes):
    return sorted(modes, key=lambda m: ORDER.index(m) if m in ORDER else len(ORDER))


# --------------------------------------------------------------------------------------------
# SVG


class Svg:
    def __init__(self, w, h):
        self.w, self.h = w, h
        self.parts = []

    def add(self, s):
        self.parts.append(s)

    def text(self, x, y, s, size=12, anchor="start", weight="normal", fill="#222"):
        self.add(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}">{html.escape(str(s))}</text>'
        )

    def rect(self, x, y, w, h, fill):
        self.add(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{h:.1f}" fill="{fill}"/>')

    def line(self, x1, y1, x2, y2, stroke="#999", dash=None, width=1):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" stroke-width="{width}"{d}/>'
        )

    def render(self):
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.w}" height="{self.h}" '
            f'viewBox="0 0 {self.w} {self.h}" font-family="Helvetica, Arial, sans-serif">'
            f'<rect width="100%" height="100%" fill="white"/>'
        )
        return head + "".join(self.parts) + "</svg>\n"


COLORS = ["#2b6cb0", "#dd6b20", "#38a169"]
TARGET = "#c53030"


def panel(svg, x, y, w, h, title, subtitle, modes, series, targets=(), unit="", log_from=None):
    """Horizontal grouped bars: `series` is [(label, {mode: value})], `targets` is
    [(label, value)] drawn as dashed vertical lines. With `log_from`, the axis is logarithmic
    from that value, with a grid line at every power of ten."""
    svg.text(x, y + 14, title, size=13, weight="bold")
    svg.text(x, y + 30, subtitle, size=10, fill="#555")
    label_w = 190
    top = y + 56
    plot_x = x + label_w
    plot_w = w - label_w - 60
    values = [v for _, d in series for v in d.values() if v is not None and not math.isnan(v)]
    values += [t for _, t in targets if t is not None]
    vmax = max(values) * 1.08 if values else 1
    if log_from:
        lo, hi = math.log10(log_from), math.log10(max(vmax, log_from * 10) * 1.3)

        def scale(v):
            return plot_w * max(0.0, (math.log10(max(v, log_from)) - lo) / (hi - lo))
    else:
        def scale(v):
            return plot_w * v / vmax
    n = max(len(modes), 1)
    group_h = (h - (96 if log_from else 80)) / n
    bar_h = min(14, (group_h - 6) / max(len(series), 1))
    for i, mode in enumerate(modes):
        gy = top + i * group_h
        svg.text(plot_x - 8, gy + group_h / 2 + 4, LABELS.get(mode, mode), size=11, anchor="end",
                 weight="bold" if mode.startswith("tower-sse") else "normal")
        for j, (_, d) in enumerate(series):
            v = d.get(mode)
            by = gy + (group_h - bar_h * len(series)) / 2 + j * bar_h
            if v is None or (isinstance(v, float) and math.isnan(v)):
                svg.text(plot_x + 4, by + bar_h - 3, "n/a", size=10, fill="#888")
                continue
            bw = scale(v)
            svg.rect(plot_x, by, bw, bar_h - 2, COLORS[j % len(COLORS)])
            svg.text(plot_x + bw + 4, by + bar_h - 4, fmt(v) + unit, size=10)
    bottom = top + n * group_h
    svg.line(plot_x, top - 4, plot_x, bottom, stroke="#444")
    if log_from:
        p = 10 ** math.ceil(math.log10(log_from))
        while scale(p) <= plot_w:
            gx = plot_x + scale(p)
            svg.line(gx, top - 4, gx, bottom, stroke="#ddd")
            svg.text(gx, bottom + 11, fmt(p), size=9, anchor="middle", fill="#777")
            p *= 10
    for k, (label, t) in enumerate(targets):
        if t is None:
            continue
        tx = plot_x + scale(t)
        svg.line(tx, top - 12, tx, bottom, stroke=TARGET, dash="4,3", width=1.5)
        svg.text(tx + 3, top - 4, label, size=10, fill=TARGET)
    ly = y + h - 8
    lx = plot_x
    if len(series) > 1:
        for j, (label, _) in enumerate(series):
            svg.rect(lx, ly - 9, 10, 10, COLORS[j % len(COLORS)])
            svg.text(lx + 14, ly, label, size=10)
            lx += 20 + 6.2 * len(label)


def draw(records, machine):
    W, PW, PH = 1100, 540, 250
    svg = Svg(W, 3 * PH + 60)
    head = "tower-sse load test on loopback, one run on a shared "
    head += f"{machine.get('nproc', '?')}-core VM ({machine.get('cpu', '?')})"
    svg.text(10, 22, head, size=15, weight="bold")
    svg.text(10, 40, "Server: 2 tokio workers; load generator in its own process on the same cores. "
             "Dashed red: the issue 6 target. Source: target/bench/results.json", size=11, fill="#555")

    def cell(i):
        return 10 + (i % 2) * (PW + 10), 50 + (i // 2) * PH

    fan_s = pick(records, "fanout", variant="single")
    fan_p = pick(records, "fanout", variant="pipelined")
    fan_c = pick(records, "fanout", variant="coalesced")
    modes = ordered(set(fan_s) | set(fan_p) | set(fan_c))
    n = next((r.get("clients") for r in list(fan_s.values()) + list(fan_c.values())), "?")
    x, y = cell(0)
    panel(svg, x, y, PW, PH, f"Fan-out to {fmt(n)} clients: deliveries/s (log scale)",
          "closed loop: one event per write; one event per publish, 64 in flight; bursts of 64",
          modes,
          [("one per write", {m: get(r, "deliveries_per_s") for m, r in fan_s.items()}),
           ("pipelined", {m: get(r, "deliveries_per_s") for m, r in fan_p.items()}),
           ("coalesced", {m: get(r, "deliveries_per_s") for m, r in fan_c.items()})],
          targets=[("150k", 150000), ("800k", 800000)], log_from=10000)

    lat = pick(records, "latency")
    n = next((r.get("clients") for r in lat.values()), "?")
    x, y = cell(1)
    panel(svg, x, y, PW, PH, f"Latency, 1 publish/s to {fmt(n)} clients (ms)",
          "per event: publish timestamp to the last client's read",
          ordered(lat),
          [("p50", {m: get(r, "latency", "p50_ms") for m, r in lat.items()}),
           ("p99", {m: get(r, "latency", "p99_ms") for m, r in lat.items()})],
          targets=[("100 ms", 100)])

    idle = pick(records, "idle")
    floor = get(idle.get("hyper-bare", {}), "rss_per_conn_bytes")
    x, y = cell(2)
    panel(svg, x, y, PW, PH, "Server memory per idle connection (bytes)",
          "RSS delta / connections; the last three rows tell the crate from axum::serve",
          ordered(idle),
          [("bytes", {m: get(r, "rss_per_conn_bytes") for m, r in idle.items()})],
          targets=[("floor + 1 KiB", floor + 1024 if floor is not None else None)])

    x, y = cell(3)
    idle_cpu = {m: r for m, r in idle.items() if r.get("window_s", 0) >= 30}
    n = next((r.get("clients") for r in idle_cpu.values()), "?")
    panel(svg, x, y, PW, PH, f"Idle CPU, {fmt(n)} connections, heartbeat 15 s",
          "% of one core over a window of at least 30 s",
          ordered(idle_cpu),
          [("% of a core", {m: get(r, "server_cpu_pct") for m, r in idle_cpu.items()})],
          targets=[("5 %", 5)], unit=" %")

    med = slow_medians(records)
    n = next((r.get("clients") for r in records if r.get("scenario") == "slow"), "?")
    x, y = cell(4)
    panel(svg, x, y, PW, PH, f"Slow clients: the readers' deliveries/s ({fmt(n)} clients)",
          "one event per write; median of the runs with 0 % / 1 % of clients never reading",
          ordered(med),
          [("0 % slow", {m: d.get("fast", {}).get("dps") for m, d in med.items()}),
           ("1 % slow", {m: d.get("slow", {}).get("dps") for m, d in med.items()})])

    churn = pick(records, "churn")
    x, y = cell(5)
    panel(svg, x, y, PW, PH, "Churn: connect, receive one event, close",
          "cycles per second with bounded concurrency",
          ordered(churn),
          [("cycles/s", {m: get(r, "cycles_per_s") for m, r in churn.items()})],
          targets=[("5,000/s", 5000)])
    return svg.render()


# --------------------------------------------------------------------------------------------
# Markdown summary with ratios


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def markdown(records, criterion):
    out = []

    def table(title, rows, cols):
        out.append(f"\n### {title}\n")
        out.append("| mode | " + " | ".join(c for c, _ in cols) + " |")
        out.append("|---" * (len(cols) + 1) + "|")
        for mode, r in rows:
            out.append(f"| {mode} | " + " | ".join(fmt(f(r)) if not isinstance(f(r), str) else f(r)
                                                  for _, f in cols) + " |")

    for variant in ["single", "pipelined", "coalesced"]:
        d = pick(records, "fanout", variant=variant)
        t = d.get("tower-sse", {})
        cols = [("deliveries/s", lambda r: get(r, "deliveries_per_s")),
                ("events/read", lambda r: get(r, "events_per_read")),
                ("p50 ms", lambda r: get(r, "latency", "p50_ms")),
                ("p99 ms", lambda r: get(r, "latency", "p99_ms")),
                ("server CPU %", lambda r: get(r, "server_cpu_pct")),
                ("loadgen CPU %", lambda r: get(r, "loadgen_cpu_pct")),
                ("other CPU %", lambda r: get(r, "other_cpu_pct"))]
        for b in BASELINES:
            cols.append((f"tower-sse / {b}",
                         lambda r, b=b: ratio(get(t, "deliveries_per_s"), get(d.get(b, {}), "deliveries_per_s"))
                         if r is t else ""))
        table(f"fanout, {variant}", [(m, d[m]) for m in ordered(d)], cols)
    d = pick(records, "latency")
    table("latency, 1 publish/s", [(m, d[m]) for m in ordered(d)],
          [("p50 ms", lambda r: get(r, "latency", "p50_ms")), ("p99 ms", lambda r: get(r, "latency", "p99_ms")),
           ("max ms", lambda r: get(r, "latency", "max_ms")), ("events", lambda r: get(r, "latency", "events"))])
    d = pick(records, "idle")
    floor = get(d.get("hyper-bare", {}), "rss_per_conn_bytes")
    table("idle", [(m, d[m]) for m in ordered(d)],
          [("clients", lambda r: get(r, "clients")), ("B/conn", lambda r: get(r, "rss_per_conn_bytes")),
           ("B/conn above bare hyper", lambda r: (get(r, "rss_per_conn_bytes") - floor) if floor is not None else None),
           ("CPU % of a core", lambda r: get(r, "server_cpu_pct")), ("window s", lambda r: get(r, "window_s")),
           ("heartbeats/s", lambda r: get(r, "heartbeats_per_s"))])
    med = slow_medians(records)

    def change(a, b):
        return f"{100 * (b - a) / a:+.1f} %" if a and b is not None else "n/a"

    out.append("\n### slow (medians over repetitions, 0 % vs 1 % of clients never reading)\n")
    out.append("| mode | deliveries/s 0 % | deliveries/s 1 % | change | p99 ms 0 % | p99 ms 1 % | change "
               "| runs 0 % | runs 1 % | RSS max KiB | open at end (1 %) |")
    out.append("|---" * 11 + "|")
    for mode in ordered(med):
        f, sl = med[mode].get("fast", {}), med[mode].get("slow", {})
        out.append(
            f"| {mode} | {fmt(f.get('dps'))} | {fmt(sl.get('dps'))} | {change(f.get('dps'), sl.get('dps'))} "
            f"| {fmt(f.get('p99'))} | {fmt(sl.get('p99'))} | {change(f.get('p99'), sl.get('p99'))} "
            f"| {', '.join(fmt(v) for v in f.get('runs', []))} | {', '.join(fmt(v) for v in sl.get('runs', []))} "
            f"| {max(f.get('rss_max', 0), sl.get('rss_max', 0)):,} | {sl.get('open_end')} |")
    d = pick(records, "churn")
    table("churn", [(m, d[m]) for m in ordered(d)],
          [("cycles/s", lambda r: get(r, "cycles_per_s")), ("p99 ms", lambda r: get(r, "cycle_p99_ms")),
           ("open start/end", lambda r: f"{get(r, 'open_start')}/{get(r, 'open_end')}"),
           ("tasks start/end", lambda r: f"{get(r, 'tasks_start')}/{get(r, 'tasks_end')}"),
           ("fds start/end", lambda r: f"{get(r, 'fds_start')}/{get(r, 'fds_end')}"),
           ("RSS KiB start/end", lambda r: f"{get(r, 'rss_start_kib')}/{get(r, 'rss_end_kib')}")])
    errors = [r for r in records if r.get("error")]
    if errors:
        out.append("\n### errors\n")
        for r in errors:
            out.append(f"- {r.get('scenario')}/{r.get('variant', '')} {r.get('mode')}: {r['error']}")
    if criterion:
        out.append("\n### criterion\n")
        out.append("| bench | name | time | throughput |")
        out.append("|---|---|---|---|")
        for c in criterion:
            out.append(f"| {c['bench']} | {c['name']} | {c['time']} | {c.get('thrpt', '')} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--load", required=True)
    ap.add_argument("--machine")
    ap.add_argument("--criterion", nargs="*", default=[])
    ap.add_argument("--commands")
    ap.add_argument("--json", required=True)
    ap.add_argument("--svg", required=True)
    ap.add_argument("--markdown")
    a = ap.parse_args()
    records = load_records(a.load)
    machine = json.load(open(a.machine)) if a.machine and os.path.exists(a.machine) else {}
    commands = json.load(open(a.commands)) if a.commands and os.path.exists(a.commands) else {}
    criterion = parse_criterion(a.criterion)
    result = {"machine": machine, "commands": commands, "load": records, "criterion": criterion}
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(result, f, indent=1)
    os.makedirs(os.path.dirname(a.svg) or ".", exist_ok=True)
    with open(a.svg, "w") as f:
        f.write(draw(records, machine))
    md = markdown(records, criterion)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(md)
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
