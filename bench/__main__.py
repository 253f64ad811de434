"""`make bench [QUICK=1]`: every scenario against its own baseline, in one run.

    python -m bench [--quick] [--only ceiling,direct,...] [--results DIR]

Starts a private RabbitMQ node (and the auth service and relays as scenarios need them), all
on 127.0.0.1, runs the scenarios in order, prints one table, and writes
bench/results/<timestamp>.json and <timestamp>.png. Targets are printed beside the figures;
none of them fails the run.
"""

from __future__ import annotations

import argparse
import logging
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from bench import (
    accounts,
    backlog,
    ceiling,
    conversations,
    direct,
    flood,
    login_flood,
    online,
    paced,
    page,
)
from bench.context import Context
from bench.plot import write_png
from bench.report import ScenarioResult, markdown_table, render_table, write_json
from bench.stack import running_stack
from broker.pika_io import coalesce_pika_writes

RESULTS_DIR = Path(__file__).resolve().parent / "results"

Scenario = Callable[[Context], ScenarioResult]
SCENARIOS: dict[str, Scenario] = {
    "ceiling": ceiling.run,
    "direct": direct.run,
    "paced": paced.run,
    "backlog": backlog.run,
    "online": online.run,
    "accounts": accounts.run,
    "page": page.run,
    "login_flood": login_flood.run,
    "conversations": conversations.run,
    "flood": flood.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, under two minutes")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where to write")
    parser.add_argument("--keep", action="store_true", help="keep the logs' directory")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    coalesce_pika_writes()  # as the relay's and the CLI's entry points do
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    console = Console(width=150)

    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(SCENARIOS)
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.monotonic()
    results: list[ScenarioResult] = []
    with running_stack(keep=args.keep) as stack:
        ctx = Context(stack=stack, quick=args.quick)
        for name in chosen:
            console.print(f"[bold]running {name}[/bold] ({time.monotonic() - started:.0f} s in)")
            begin = time.monotonic()
            try:
                result = SCENARIOS[name](ctx)
            except Exception as exc:  # a broken scenario is reported, the others still run
                console.print(f"[red]{name} failed:[/red] {exc!r}")
                if args.verbose:
                    traceback.print_exc()
                result = ScenarioResult(name, name, error=f"{type(exc).__name__}: {exc}")
            finally:
                stack.stop_relays()
            result.seconds = time.monotonic() - begin
            results.append(result)

    elapsed = time.monotonic() - started
    render_table(results, console)
    options = {"quick": args.quick, "only": chosen, "seconds": round(elapsed, 1)}
    json_path = write_json(results, args.results, stamp, options)
    (args.results / f"{stamp}.md").write_text(markdown_table(results))
    title = f"Messenger benchmarks {stamp}{' (quick)' if args.quick else ''}"
    png_path = write_png(results, args.results / f"{stamp}.png", title)
    console.print(f"wrote {json_path}" + (f" and {png_path}" if png_path else ""))
    console.print(f"total {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
