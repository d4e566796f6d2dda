"""
`python -m bench [--quick] [--only N ...] [--index-mb MB] [--json FILE]`: run the scenarios,
print a table, write the results as JSON (default under bench/results/).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import orjson

from bench import bulk, connections, e2e, history, link, live, search, startup
from bench.common import client_cpu, pin

SCENARIOS = {"1": bulk, "2": live, "3": e2e, "4": history, "5": connections, "6": link, "7": startup, "8": search}
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "load average": os.getloadavg()}


def speed_ratio(row, reference) -> str:
    """How fulabd's figure compares with this row's, as "fulabd is N x (as fast)"."""
    if reference is None or row is reference or not row.value or not reference.value:
        return ""
    ratio = reference.value / row.value if row.higher_is_better else row.value / reference.value
    return f"{ratio:.2f}x"


def table(rows) -> str:
    header = ("scenario", "measure", "value", "kind", "fulabd vs this", "target", "met")
    lines = [header]
    for row in rows:
        reference = next((r for r in rows if r.scenario == row.scenario and r.kind == "fulabd"
                          and row.versus in (None, r.what)), None)
        value = f"{row.value:,.1f} {row.unit}" if row.value >= 10 else f"{row.value:,.3g} {row.unit}"
        met = "" if row.met is None else ("yes" if row.met else "NO")
        ratio = speed_ratio(row, reference) if row.kind != "fulabd" and row.unit == reference.unit else ""
        lines.append((row.scenario, row.what, value, row.kind, ratio, row.target or "", met))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [" | ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in lines]
    out.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs: checks the harness works")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help="run only these scenarios")
    parser.add_argument("--json", type=Path, help="where to write the results (default bench/results/<time>.json)")
    parser.add_argument("--index-mb", type=int, help="scenario 8: MB of sessions to index (default 1024; --quick 50)")
    parser.add_argument("--work", type=Path, help="scratch folder on the disk to measure (default under bench/results)")
    args = parser.parse_args(argv)

    pin(os.getpid(), client_cpu())
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = Path(tempfile.mkdtemp(prefix="work-", dir=args.work or RESULTS))
    rows = []
    try:
        for key in args.only or sorted(SCENARIOS):
            module = SCENARIOS[key]
            print(f"running {module.NAME} ...", file=sys.stderr, flush=True)
            folder = work / key
            folder.mkdir()
            options = {"size_mb": args.index_mb} if module is search and args.index_mb else {}
            done = module.run(folder, args.quick, **options)
            print(table(done), file=sys.stderr, flush=True)  # as it goes: a later scenario's failure loses nothing
            rows += done
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = machine()
    print(f"\nfulabd benchmark {'(quick) ' if args.quick else ''}{stamp} on {info['cpu']}, {info['cores']} cores, "
          f"Linux {info['kernel']}, Python {info['python']}; daemon on core 0, clients on core 1\n")
    print(table(rows))
    output = args.json or RESULTS / f"{stamp}{'-quick' if args.quick else ''}.json"
    output.write_bytes(orjson.dumps({"when": stamp, "quick": args.quick, "machine": info,
                                     "rows": [row.as_dict() for row in rows]}, option=orjson.OPT_INDENT_2))
    print(f"\nresults written to {output}")
    return 0 if all(row.met is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
