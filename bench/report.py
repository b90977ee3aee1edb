"""The markdown the bench prints: one column per system, then ratios and the issue's goals."""

from __future__ import annotations

import statistics
from typing import Any

#: (key, label, unit, higher is better)
ROWS: list[tuple[str, str, str, bool]] = [
    ("enqueue_delay", "enqueue: delay()", "msg/s", True),
    ("enqueue_group", "enqueue: group of N", "msg/s", True),
    ("drain", "drain: N queued, 2 procs", "tasks/s", True),
    ("e2e", "end-to-end with results", "tasks/s", True),
    ("rtt_p50", "round-trip p50", "ms", False),
    ("rtt_p90", "round-trip p90", "ms", False),
    ("rtt_p99", "round-trip p99", "ms", False),
    ("rss_mib", "worker peak RSS (tree)", "MiB", False),
    ("pss_mib", "worker peak PSS (tree)", "MiB", False),
    ("idle_cpu", "idle worker CPU (tree)", "% core", False),
    ("worker_drain_us", "worker CPU/task, drain (tree)", "µs", False),
    ("worker_e2e_us", "worker CPU/task, end-to-end (tree)", "µs", False),
    ("redis_drain_cmds", "Redis commands/task, drain", "cmds", False),
    ("redis_drain_us", "Redis CPU/task, drain", "µs", False),
    ("redis_e2e_cmds", "Redis commands/task, end-to-end", "cmds", False),
    ("redis_e2e_us", "Redis CPU/task, end-to-end", "µs", False),
]

#: The issues' goals for chard, by family (18 on Redis, 15 on RabbitMQ): key ->
#: [(against, bound)]. "against" is a system name, "best" (the best peer, floor
#: excluded), "floor" (a share of it) or "abs" (µs).
GOALS: dict[str, dict[str, list[tuple[str, float]]]] = {
    "redis": {
        "enqueue_delay": [("huey", 1.2)],
        "drain": [("best", 1.5), ("floor", 0.75)],
        "e2e": [("huey", 1.2)],
        "rtt_p50": [("huey", 0.8)],
        "rss_mib": [("best", 1.2)],
        "pss_mib": [("best", 1.2)],
        "redis_drain_us": [("abs", 20.0)],
        "redis_e2e_us": [("abs", 60.0)],
    },
    "amqp": {
        "enqueue_delay": [("celery", 3.0)],
        "drain": [("celery", 5.0)],
        "e2e": [("celery", 3.0)],
        "rtt_p50": [("celery", 0.5)],
    },
}

LEADS = {"redis": "chard", "amqp": "chard", "sqlite": "chard-sqlite", "postgres": "chard-pg"}


def medians(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Median of each numeric figure over the rounds of each system."""
    out: dict[str, dict[str, float]] = {}
    for name, rounds in runs.items():
        keys = {k for r in rounds for k, v in r.items() if isinstance(v, int | float)}
        out[name] = {k: statistics.median(r[k] for r in rounds if k in r) for k in sorted(keys)}
    return out


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def _best(values: list[float], higher: bool) -> float | None:
    return (max(values) if higher else min(values)) if values else None


def ratio_columns(families: dict[str, str]) -> list[tuple[str, str, str]]:
    """Return (header, lead, against) for each ratio: lead/peer, lead/best peer, % of floor."""
    cols = []
    for family, lead in LEADS.items():
        if lead not in families or families[lead] != family:
            continue
        peers = [n for n, f in families.items() if f == family and n != lead and n != "floor"]
        peers = [n for n in peers if not n.startswith("chard")]
        cols += [(f"{lead}/{p}", lead, p) for p in peers]
        if len(peers) > 1:
            cols.append((f"{lead}/best peer", lead, "best"))
        if families.get("floor") == family:
            cols.append((f"{lead} % of floor", lead, "floor"))
    return cols


def _against(med: dict[str, dict[str, float]], families: dict[str, str], lead: str,
             against: str, key: str, higher: bool) -> float | None:  # fmt: skip
    if against == "best":
        family = families[lead]
        values = [
            m[key] for n, m in med.items()
            if families[n] == family and n != "floor" and not n.startswith("chard") and key in m
        ]  # fmt: skip
        return _best(values, higher)
    return med.get(against, {}).get(key)


def _goal(
    med: dict[str, dict[str, float]], families: dict[str, str], key: str, higher: bool
) -> str:
    out = []
    for against, bound in GOALS.get(families.get("chard", ""), {}).get(key, []):
        value = med.get("chard", {}).get(key)
        if against == "abs":
            text, got = f"≤ {bound:g} µs", value
        else:
            ref = _against(med, families, "chard", against, key, higher)
            got = value / ref if value is not None and ref else None
            text = f"{'≥' if higher else '≤'} {bound:g}x {against}"
        if got is not None:
            text += " ✓" if (got >= bound if higher else got <= bound) else " ✗"
        out.append(text)
    return "; ".join(out)


def table(med: dict[str, dict[str, float]], families: dict[str, str]) -> str:
    names = list(med)
    ratios = ratio_columns(families)
    goals = families.get("chard", "") in GOALS
    head = ["metric", "unit", *names, *(h for h, _, _ in ratios), *(["goal"] if goals else [])]
    lines = ["| " + " | ".join(head) + " |"]
    lines.append("|---|---|" + "---:|" * (len(names) + len(ratios)) + ("---|" if goals else ""))
    for key, label, unit, higher in ROWS:
        if not any(key in m for m in med.values()):
            continue
        cells = [label, unit, *(fmt(med[n].get(key)) for n in names)]
        for _, lead, against in ratios:
            a = med.get(lead, {}).get(key)
            b = _against(med, families, lead, against, key, higher)
            if against == "floor":
                cells.append(f"{a / b * 100:.0f}%" if a is not None and b else "n/a")
            else:
                cells.append(_ratio(a, b))
        if goals:
            cells.append(_goal(med, families, key, higher))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def by_command(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Redis commands per task, by command, averaged over the rounds (drain, end-to-end)."""
    lines = []
    for name, rounds in runs.items():
        for phase in ("drain", "e2e"):
            counts: dict[str, float] = {}
            seen = [r[f"redis_{phase}_by"] for r in rounds if f"redis_{phase}_by" in r]
            for one in seen:
                for cmd, n in one.items():
                    counts[cmd] = counts.get(cmd, 0.0) + n / len(seen)
            if counts:
                top = sorted(counts.items(), key=lambda kv: -kv[1])
                text = ", ".join(f"{cmd} {n:.2f}" for cmd, n in top if n >= 0.005)
                lines.append(f"- {name}, {phase}: {text}")
    return "\n".join(lines)


def details(runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| system | metric | rounds |", "|---|---|---|"]
    for name, rounds in runs.items():
        for key, *_ in ROWS:
            values = ", ".join(fmt(r[key]) for r in rounds if key in r)
            if values:
                lines.append(f"| {name} | {key} | {values} |")
    return "\n".join(lines)


def scale_table(rows: list[dict[str, Any]]) -> str:
    """One line per system and node count; the projection is 1e6 / Redis µs per task."""
    lines = [
        "| system | nodes | drain tasks/s | Redis cmds/task | Redis µs/task | tasks/s per Redis"
        " core (drain) | end-to-end tasks/s | Redis cmds/task | Redis µs/task | tasks/s per"
        " Redis core (e2e) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per_core = [1e6 / r[k] if r.get(k) else None for k in ("redis_drain_us", "redis_e2e_us")]
        lines.append(
            f"| {r['system']} | {r['nodes']} | {fmt(r.get('drain'))} | "
            f"{fmt(r.get('redis_drain_cmds'))} | {fmt(r.get('redis_drain_us'))} | "
            f"{fmt(per_core[0])} | {fmt(r.get('e2e'))} | {fmt(r.get('redis_e2e_cmds'))} | "
            f"{fmt(r.get('redis_e2e_us'))} | "
            f"{fmt(per_core[1])} |"
        )
    return "\n".join(lines)
