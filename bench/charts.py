#!/usr/bin/env python3
"""Draws a benchmark run (bench/run.sh's JSON lines) as two SVG charts, with no dependency
beyond Python's standard library, so that README.md can show the numbers at a glance:

  PREFIX.ratios.svg  warren ÷ direct per scenario (medians; whiskers: per-repetition range)
  PREFIX.cpu.svg     warren's CPU per operation, next to RabbitMQ's own when used directly

    python3 bench/charts.py bench/results/example.jsonl bench/results/example [SUBTITLE]

Without SUBTITLE, the heading of PREFIX.md (the run's table) is used. Medians and ratios are
computed as run.sh's table computes them. The output depends only on the input.
"""
import html
import json
import math
import statistics
import sys

GREEN, RED, GREY, BLUE, LIGHT = "#2e7d32", "#c62828", "#757575", "#1565c0", "#b0bec5"
LEFT, RIGHT, ROW, TOP = 250, 90, 24, 62
WIDTH = 820

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
prefix = sys.argv[2]
if len(sys.argv) > 3:
    subtitle = sys.argv[3]
else:
    try:
        heading = open(f"{prefix}.md").readline()
        subtitle = heading.split("—", 1)[-1].strip(" #\n")
    except OSError:
        subtitle = ""


def runs(variant, target):
    return [r for r in rows if r.get("variant") == variant and r.get("target") == target]


def med(rs, key):
    v = [r[key] for r in rs if isinstance(r.get(key), (int, float))]
    return statistics.median(v) if v else None


def rep_ratios(d, w, key):
    dv = {r.get("rep"): r.get(key) for r in d}
    return [r[key] / dv[r.get("rep")] for r in w
            if isinstance(r.get(key), (int, float)) and dv.get(r.get("rep"))]


def text(x, y, s, anchor="start", size=12, color="#212121", weight="normal"):
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
            f'fill="{color}" font-weight="{weight}">{html.escape(s)}</text>')


def chart(title, axis_label, lo, hi, ticks, items, legend):
    """items: (label, value, low, high, target, colour, value_text, base, extra) or a section
    title (str). Bars start at `base` (1× for ratios, the axis start otherwise); `extra` is an
    optional (value, colour) drawn as a thin bar under the main one."""
    height = TOP + ROW * len(items) + 70
    x_of = lambda v: LEFT + (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo)) * (
        WIDTH - LEFT - RIGHT)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           text(12, 22, title, size=15, weight="bold"), text(12, 40, subtitle, color=GREY)]
    bottom = TOP + ROW * len(items)
    for t in ticks:
        x = x_of(t)
        out.append(f'<line x1="{x:.1f}" y1="{TOP - 6}" x2="{x:.1f}" y2="{bottom}" '
                   f'stroke="#e0e0e0"/>')
        out.append(text(x, bottom + 14, f"{t:g}", anchor="middle", size=11, color=GREY))
    out.append(text(LEFT + (WIDTH - LEFT - RIGHT) / 2, bottom + 30, axis_label, "middle", 11,
                    GREY))
    for i, item in enumerate(items):
        y = TOP + ROW * i
        if isinstance(item, str):
            out.append(text(12, y + 15, item, weight="bold", color=GREY))
            continue
        label, value, low, high, target, colour, value_text, base, extra = item
        out.append(text(LEFT - 8, y + 15, label, anchor="end"))
        if value is None:
            out.append(text(LEFT + 4, y + 15, "no data", color=GREY))
            continue
        x0, x1 = sorted((x_of(base), x_of(value)))
        out.append(f'<rect x="{x0:.1f}" y="{y + 5}" width="{max(x1 - x0, 1):.1f}" height="12" '
                   f'fill="{colour}" opacity="0.85"/>')
        if extra:
            e0, e1 = sorted((x_of(base), x_of(extra[0])))
            out.append(f'<rect x="{e0:.1f}" y="{y + 18}" width="{max(e1 - e0, 1):.1f}" '
                       f'height="4" fill="{extra[1]}"/>')
        if low is not None and high is not None and high > low:
            a, b = x_of(low), x_of(high)
            out.append(f'<path d="M{a:.1f} {y + 11}H{b:.1f}M{a:.1f} {y + 7}V{y + 15}'
                       f'M{b:.1f} {y + 7}V{y + 15}" stroke="#212121" stroke-width="1"/>')
        if target is not None:
            t = x_of(target)
            out.append(f'<path d="M{t:.1f} {y + 2}V{y + 20}" stroke="#212121" '
                       f'stroke-width="2.5" stroke-dasharray="3 2"/>')
        end = max(x1, x_of(high) if high else x1, x_of(target) if target else x1)
        out.append(text(end + 6, y + 15, value_text, size=11))
    lx = 12
    for colour, name in legend:
        out.append(f'<rect x="{lx}" y="{height - 22}" width="12" height="12" fill="{colour}"/>')
        out.append(text(lx + 17, height - 12, name, size=11))
        lx += 24 + 6.2 * len(name)
    out.append("</svg>\n")
    return "\n".join(out)


def verdict_colour(ratio, target, higher_is_better):
    if target is None:
        return GREY
    ok = ratio >= target if higher_is_better else ratio <= target
    return GREEN if ok else RED


def ratio_item(label, variant, key, target, warren="warren"):
    d, w = runs(variant, "direct"), runs(variant, warren)
    dv, wv = med(d, key), med(w, key)
    if dv is None or wv is None:
        return (label, None, None, None, None, GREY, "", 1.0, None)
    ratio, per = wv / dv, rep_ratios(d, w, key)
    return (label, ratio, min(per, default=None), max(per, default=None), target,
            verdict_colour(ratio, target, True), f"{ratio:.2f}×", 1.0, None)


def latency_item(label, q, added_target):
    d, w = runs("latency", "direct"), runs("latency", "warren")
    dv, wv = med(d, f"{q}_us"), med(w, f"{q}_us")
    if dv is None or wv is None:
        return (label, None, None, None, None, GREY, "", 1.0, None)
    ratio, per = wv / dv, rep_ratios(d, w, f"{q}_us")
    target = (dv + added_target) / dv if added_target is not None else None
    return (label, ratio, min(per, default=None), max(per, default=None), target,
            verdict_colour(ratio, target, False), f"{ratio:.2f}× (+{wv - dv:.0f} µs)", 1.0, None)


ratio_items = [
    "Throughput: warren ÷ direct, higher is better",
    ratio_item("P1 connect churn", "churn", "connections_per_sec", 5.0),
    ratio_item("P1 churn, recycling off", "churn", "connections_per_sec", None,
               "warren_norecycle"),
    ratio_item("P1 churn, amqprs client", "churn_amqprs", "connections_per_sec", None),
    ratio_item("P2 publish", "publish", "msgs_per_sec", 0.98),
    ratio_item("P2 publish with confirms", "publish_confirms", "msgs_per_sec", 0.97),
    ratio_item("P3 consume, manual acks", "consume", "msgs_per_sec", 0.97),
    "Round trip: warren ÷ direct time, lower is better",
    latency_item("P4 round trip p50", "p50", 20.0),
    latency_item("P4 round trip p99", "p99", None),
]
legend = [(GREEN, "meets its target"), (RED, "misses its target"), (GREY, "no target"),
          ("#212121", "dashed: target; whiskers: range over repetitions")]
with open(f"{prefix}.ratios.svg", "w") as f:
    f.write(chart("warren compared with RabbitMQ directly", "ratio (log scale; 1 = same as direct)",
                  0.5, 10, [0.5, 0.8, 1, 1.25, 2, 5, 10], ratio_items, legend))


def cpu_item(label, variant, unit, target, warren="warren"):
    w, d = runs(variant, warren), runs(variant, "direct")
    v = med(w, "warren_cpu_us_per_op")
    broker = med(d, "broker_cpu_us_per_op")
    if v is None:
        return (label, None, None, None, None, GREY, "", 0.3, None)
    colour = BLUE if target is None else (GREEN if v <= target else RED)
    extra = (broker, LIGHT) if broker else None
    return (label, v, None, None, target, colour, f"{v:,.1f} µs/{unit}", 0.3, extra)


cpu_items = [
    cpu_item("P1 connect churn", "churn", "conn", 60.0),
    cpu_item("P1 churn, recycling off", "churn", "conn", None, "warren_norecycle"),
    cpu_item("P1 churn, amqprs client", "churn_amqprs", "conn", None),
    cpu_item("P2 publish", "publish", "msg", 1.7),
    cpu_item("P2 publish with confirms", "publish_confirms", "msg", 4.7),
    cpu_item("P3 consume, manual acks", "consume", "msg", 6.5),
    cpu_item("P4 round trip", "latency", "round trip", 25.0),
    cpu_item("P6 idle client connect", "idle", "conn", None),
]
legend = [(GREEN, "within the P5 target"), (RED, "over it"), (BLUE, "no target"),
          (LIGHT, "thin: RabbitMQ's own CPU per operation, direct")]
with open(f"{prefix}.cpu.svg", "w") as f:
    f.write(chart("warren's CPU time per operation", "µs of CPU (user + system, log scale)",
                  0.3, 3000, [0.3, 1, 3, 10, 30, 100, 300, 1000, 3000], cpu_items, legend))
print(f"{prefix}.ratios.svg {prefix}.cpu.svg", file=sys.stderr)
