"""The generated table in docs/performance.md, between markers, from result files."""

from __future__ import annotations

import json
from typing import Any

from bench.harness import RESULTS, ROOT

DOC = ROOT / "docs" / "performance.md"
START, END = "<!-- bench:table:start -->", "<!-- bench:table:end -->"


def _ms(seconds: float) -> str:
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _value(value: float, unit: str | None) -> str:
    """Times by default; results whose `extra.unit` says otherwise (MB) keep their unit."""
    return _ms(value) if unit in (None, "s") else f"{value:,.1f} {unit}"


def latest() -> list[dict[str, Any]]:
    """The newest result for each (scenario, database, fleet size) over all result files."""
    newest: dict[tuple[str, str, int], dict[str, Any]] = {}
    for path in sorted(RESULTS.glob("*.json")):
        payload = json.loads(path.read_text())
        for r in payload["results"]:
            r = r | {"date": payload["date"][:10], "file": path.name}
            newest[(r["scenario"], r["database"], r["fleet_size"])] = r
    return [newest[k] for k in sorted(newest)]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | database | fleet | ours (median, p10-p90) | limit: what | limit (median) "
        "| ratio | goal | run |",
        "| --- | --- | ---: | --- | --- | --- | ---: | --- | --- |",
    ]
    for r in rows:
        o, lim = r["ours"], r["limit"]
        unit = r.get("extra", {}).get("unit")

        def fmt(v: float, unit: str | None = unit) -> str:
            return _value(v, unit)

        lines.append(
            f"| {r['scenario']} | {r['database']} | {r['fleet_size']:,} "
            f"| {fmt(o['median_s'])} ({fmt(o['p10_s'])}-{fmt(o['p90_s'])}, n={o['rounds']}) "
            f"| {r['limit_name']} | {fmt(lim['median_s'])} | {r['ratio']:.1f}x | {r['goal']} "
            f"| {r['date']} |"
        )
    return "\n".join(lines)


def update_doc() -> None:
    text = DOC.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{table(latest())}\n{END}{tail}")
