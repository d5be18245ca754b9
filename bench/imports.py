"""How long `connector jobs import` takes for a large file, and the most memory it holds while it runs.

Writes a CSV of N rows (a mix of operations over 1,000 contacts), then times `connector jobs import` as a user runs
it, in a fresh data directory, and reads the process's peak resident set size and CPU time from the kernel
(`wait4`). With --against, another checkout of the code (a `git worktree` of an older commit, say) imports the same
file too, the two taking turns for --rounds rounds: on a machine whose load comes and goes, a change is only seen
beside what it changes, measured at the same moments.

Usage: python bench/imports.py [N] [--against CHECKOUT] [--rounds R]   (N defaults to 1,000,000; R to 1)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from throughput import run, write_jobs

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Import:
    code: str  # "this" or the checkout it ran
    seconds: float
    cpu: float
    peak_mib: float
    output: str


def imported(code: Path, jobs: Path, count: int) -> Import:
    """One `connector jobs import` of `jobs` by the code in `code`, in a data directory of its own."""
    with tempfile.TemporaryDirectory() as home:
        env = {name: value for name, value in os.environ.items() if not name.startswith("CONNECTOR_")}
        env["PYTHONPATH"] = str(code)  # ahead of the installed package, whichever checkout that points to
        seconds, output, cpu, peak_mib = run([sys.executable, "-m", "jobs.cli", "jobs", "import", str(jobs)],
                                             cwd=Path(home), env=env)
    if f"Queued {count} jobs" not in output:
        raise SystemExit(f"{code}: {output}")
    return Import("this" if code == ROOT else str(code), seconds, cpu, peak_mib, output.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", nargs="?", type=int, default=1_000_000)
    parser.add_argument("--against", type=Path, help="another checkout, imported in turn with this one")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    codes = [ROOT] + ([args.against.resolve()] if args.against else [])
    with tempfile.TemporaryDirectory() as tmp:
        jobs = Path(tmp) / "jobs.csv"
        write_jobs(jobs, args.count, contacts=1000)
        size_mib = jobs.stat().st_size / 2**20
        print(f"{args.count:,} rows ({size_mib:.0f} MiB of CSV); times include the process's start")
        runs: list[Import] = []
        for turn in range(args.rounds):
            # Each goes first in every other round: neither always meets the page cache the other left.
            for code in codes if turn % 2 == 0 else codes[::-1]:
                runs.append(done := imported(code, jobs, args.count))
                print(f"  {done.code}: {done.seconds:.1f} s ({args.count / done.seconds:,.0f} rows/s), "
                      f"{done.cpu:.1f} s of CPU, peak RSS {done.peak_mib:.0f} MiB", flush=True)
    for code in dict.fromkeys(each.code for each in runs):
        mine = [each for each in runs if each.code == code]
        seconds = statistics.median(each.seconds for each in mine)
        print(f"{code}: median of {len(mine)}: {args.count / seconds:,.0f} rows/s, "
              f"{statistics.median(each.cpu for each in mine):.1f} s of CPU, "
              f"peak RSS {max(each.peak_mib for each in mine):.0f} MiB")


if __name__ == "__main__":
    main()
