"""Run every benchmark: ``python -m benchmarks [--quick] [--only NAME] [--json]``.

Discovery: every module ``benchmarks/bench_*.py`` that defines ``run(args) -> list[Figure]``
(``Figure`` from :mod:`benchmarks.figures`) is imported and run in name order.  ``args``
is the parsed ``argparse.Namespace`` below (``args.quick`` asks for a smaller data set,
for a smoke run).  Anything a module raises (a missing service, a
missing optional dependency) is reported as that module's failure and the others still
run.  Each figure is printed
beside the raw limit measured in the same run and the ratio, with the goal, and each
module's report names the machine's load averages before and after it ran.

Every module runs under the runtime settings of a ``skyferry`` process
(``skyferry.runtime.tune_process``: GC and heap), for our code and the raw side alike, so the
figures are what production gets.

To add a benchmark: create ``benchmarks/bench_<topic>.py`` with ``run(args)``; nothing
else to register.  Exit status: 0 when every module ran, 1 when one failed (goals not
met are reported, not failures).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import traceback
from pathlib import Path

from benchmarks.figures import Figure
from skyferry.runtime import tune_process


def discover() -> list[str]:
    """The names of the ``bench_*`` modules beside this file, sorted."""
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def load() -> str:
    """The machine's load averages (1, 5, 15 minutes), as ``uptime`` prints them."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def report(module: str, figures: list[Figure], load_before: str) -> None:
    """Print ``figures`` as aligned lines: value, raw limit, ratio, goal; and the load around the run."""
    print(f"\n{module}   (load average {load_before} before, {load()} after)")
    for f in figures:
        line = f"  {f.name:<44} {_fmt(f.value):>12} {f.unit}"
        if f.raw is not None:
            ratio = f"{f.ratio or 0:.2f}x" if f.times else f"{f.ratio or 0:.0%}"
            line += f"   raw {f.raw_name or 'limit'}: {_fmt(f.raw)} {f.unit}   ratio {ratio}"
        if f.goal is not None:
            line += f"   goal >= {f.goal:.1f}x" if f.times else f"   goal >= {f.goal:.0%}"
        elif f.goal_value is not None:
            line += f"   goal >= {_fmt(f.goal_value)} {f.unit}"
        met = f.met
        if met is not None:
            line += "   ok" if met else "   BELOW GOAL"
        if f.note:
            line += f"   ({f.note})"
        print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks named by ``argv`` (all by default)."""
    tune_process()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data sets (a smoke run)")
    parser.add_argument("--only", action="append", default=[], help="run only bench_NAME (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON document at the end")
    args = parser.parse_args(argv)
    failed = False
    results: dict[str, list[dict[str, object]]] = {}
    for name in discover():
        if args.only and name.removeprefix("bench_") not in args.only and name not in args.only:
            continue
        load_before = load()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            figures: list[Figure] = module.run(args)
        except Exception:
            failed = True
            print(f"\n{name}: FAILED", file=sys.stderr)
            traceback.print_exc()
            continue
        report(name, figures, load_before)
        results[name] = [
            {"name": f.name, "value": f.value, "unit": f.unit, "raw": f.raw, "ratio": f.ratio, "met": f.met}
            for f in figures
        ]
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
