"""python -m bench [SCENARIO ...] [--quick] [--database sqlite,postgresql] [--pg-url URL]

Scenarios: fleet-query (with fleet-aggregate), bulk-import, each beside the bare database doing
the same work; checkin, beside a bare endpoint of the same server; longpoll, memory held by
10,000 open long-polls beside the idle server; simulator, memory of `fleetkeeper simulate`
with 10,000 devices beside the same simulator with one; rollout, a four-phase rollout to
10,000 emulated devices beside the policy's own pacing replayed through the planner; telemetry,
points/s ingested over HTTP beside the bare driver inserting the same rows, and a 30-day chart
query (telemetry-chart); alerting, 20 rules judged over 100,000 devices while telemetry is
ingested at full rate: detection lag beside the evaluation interval, round time, and ingestion
with the engine beside ingestion alone; dashboard, the server time of every main page of the
web dashboard on 100,000 devices beside the 500 ms bound. Each is reported as a ratio; results go to
bench/results/*.json and the table in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from bench import alerting, dashboard, device, inventory, rollout, sim, telemetry
from bench.databases import DEFAULT_PG
from bench.harness import Result, save
from bench.report import update_doc

SCENARIOS = (
    "fleet-query",
    "bulk-import",
    "checkin",
    "longpoll",
    "rollout",
    "telemetry",
    "alerting",
    "dashboard",
    "simulator",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenarios", nargs="*", choices=[*SCENARIOS, []], default=[])
    parser.add_argument("--quick", action="store_true", help="small fleets, few rounds (< 5 min)")
    parser.add_argument(
        "--database", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql"
    )
    parser.add_argument(
        "--pg-url", default=DEFAULT_PG, help="PostgreSQL server for throw-away databases"
    )
    parser.add_argument("--sizes", help="comma-separated fleet sizes for fleet-query")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/performance.md")
    args = parser.parse_args(argv)
    chosen = args.scenarios or list(SCENARIOS)
    kinds = [k.strip() for k in args.database.split(",") if k.strip()]
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else [10_000, 100_000]
        if args.quick
        else [10_000, 100_000, 1_000_000]
    )
    results: list[Result] = []
    for kind in kinds:
        if "fleet-query" in chosen:
            results += inventory.query_and_aggregate(
                kind, sizes, args.pg_url, rounds=15 if args.quick else 40
            )
        if "bulk-import" in chosen:
            results += inventory.bulk_import(
                kind, 20_000 if args.quick else 100_000, args.pg_url, rounds=1 if args.quick else 3
            )
        if "checkin" in chosen:
            results += device.checkin(
                kind,
                2_000 if args.quick else 10_000,
                args.pg_url,
                rounds=5 if args.quick else 9,
                seconds=3 if args.quick else 8,
            )
        if "longpoll" in chosen:
            results += device.longpoll(kind, 1_000 if args.quick else 10_000, args.pg_url)
        if "rollout" in chosen:
            results += rollout.rollout(
                kind,
                1_000 if args.quick else 10_000,
                args.pg_url,
                checkin=15 if args.quick else 60,
            )
        if "telemetry" in chosen:
            results += telemetry.telemetry(
                kind,
                2_000 if args.quick else 10_000,
                args.pg_url,
                rounds=3 if args.quick else 7,
                seconds=3 if args.quick else 8,
                limit_rows=30_000 if args.quick else 100_000,
                chart_metrics=1 if args.quick else len(telemetry.METRICS),
            )
        if "alerting" in chosen:
            results += alerting.alerting(
                kind,
                5_000 if args.quick else 100_000,
                args.pg_url,
                seconds=20 if args.quick else 60,
                alone=10 if args.quick else 30,
            )
        if "dashboard" in chosen:
            results += dashboard.dashboard(
                kind, 20_000 if args.quick else 100_000, args.pg_url, rounds=5 if args.quick else 15
            )
    if "simulator" in chosen:  # no database: the simulator runs against a stand-in server
        results += sim.simulator(
            2_000 if args.quick else 10_000, duration=70 if args.quick else 110
        )
    path = save(results, "quick" if args.quick else "full")
    if not args.no_doc:
        update_doc()
    if args.json:
        print(json.dumps([asdict(r) | {"ratio": r.ratio} for r in results], indent=2))
    else:
        for r in results:
            unit, scale = ("MB", 1) if r.extra.get("unit") == "MB" else ("ms", 1000)
            print(
                f"{r.scenario:16} {r.database:10} {r.fleet_size:>9,}"
                f"  ours {r.ours['median_s'] * scale:9.1f} {unit}"
                f"  limit {r.limit['median_s'] * scale:9.1f} {unit}  ratio {r.ratio:5.1f}x"
            )
        print(f"saved {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
