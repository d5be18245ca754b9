"""`make mutate`: mutation testing of the code the guarantees rest on, with mutmut.

Each mutant is one small change to one function (a comparison flipped, a constant moved, a call's argument
dropped). mutmut runs, for each, the tests that call that function; a mutant that no test notices *survives*.
In the scope below, every survivor is either killed by a new test or listed in tests/EQUIVALENT_MUTANTS.md with
one line saying why it cannot change behaviour. This script runs mutmut over that scope, prints what it
generated, killed and let survive, and fails when a survivor is not explained (or an explanation names a mutant
that no longer survives, so the list cannot go stale).

    python tests/mutate.py [--max-children N] [PATTERN ...]

Patterns narrow the run (fnmatch on mutant names, e.g. 'jobs.runner.*'); without them, the whole scope runs.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT = ROOT / "tests" / "EQUIVALENT_MUTANTS.md"


def _methods(module: str, cls: str, *names: str) -> list[str]:
    return [f"{module}.xǁ{cls}ǁ{name}__mutmut_*" for name in names]


def _functions(module: str, *names: str) -> list[str]:
    return [f"{module}.x_{name}__mutmut_*" for name in names]


# The claim / renew / finish / save_progress paths of the stores (with the helpers only they use; on SQLite and
# PostgreSQL also the adds, closes and retries that keep the head marks a claim reads, and on SQLite the grouped
# writes and checkpoints), the group commit of Dataverse writes and of Mautic tag edits (and how Mautic's answer to
# a batch is read), the executor, the runner, the store semantics the stores share, and the rule and trigger logic.
SCOPE = [
    "jobs.executor.*",
    "jobs.runner.*",
    "jobs.store.semantics.*",
    *_methods("jobs.store.sqlite", "SqliteJobStore", "__init__", "_conn", "_writing", "_connect",
              "_checkpoint_now_and_then", "atomic", "_write", "_run_waiting", "close", "add_batch", "_insert", "_close",
              "_reopen", "retry", "cancel", "cancel_where", "retry_where", "waiting", "claim", "renew",
              "record_attempt", "save_progress", "_keeping", "finish", "release", "heartbeat"),
    *_methods("jobs.store.sqlite", "_Write", "__init__"),
    *_functions("jobs.store.sqlite", "_entry_args", "_insert_args", "_open_among", "_attempt_args", "_target_of_row",
                "_request_of_row", "_validated", "_job_from_row", "_imported_row", "_origin_column", "_job_ids",
                "_page_cache"),
    *_methods("jobs.store.dataverse", "DataverseJobStore", "claim", "_offers", "_pending_clause", "_creation_order",
              "_claim_part", "_unblocked", "_unfinished_jobs",
              "renew", "record_attempt", "_attempt_columns", "save_progress", "finish", "_new_job_parts",
              "_entry_parts", "_existing_entries", "release", "_write", "_patch", "_batch", "_refused", "refusal",
              "_effect_parts"),
    *_methods("jobs.store.dataverse", "_RowWrite", "alone", "answer"),
    *_functions("jobs.store.dataverse", "format_attempt", "last_attempt_number", "append_to_log", "_entry_id"),
    *_methods("jobs.store.postgres", "PostgresJobStore", "claim", "finish", "release", "save_progress", "add", "_add",
              "_insert", "_settle", "_keep", "add_batch", "add_raw", "retry", "_reopening", "_retry", "cancel",
              "_cancel", "_closing", "_close_keys", "cancel_where", "retry_where", "waiting"),
    *_methods("jobs.store.postgres", "_NewJobs", "__init__", "behind_older"),
    "connector.dataverse.changesets.*",
    "connector.groupcommit.*",
    *_methods("connector.mautic", "MauticPlatform", "_edit_tags", "_edit_tags_alone"),
    *_methods("connector.mautic", "TagEdit", "__init__", "alone", "answer"),
    *_methods("connector.mautic", "TagEdits", "__init__", "room", "send_together"),
    *_functions("connector.mautic", "_by_position", "_item_response"),
    "jobs.scoring.changes.*",
    "jobs.scoring.rules.*",
    "jobs.scoring.triggers.*",
]

KILLED = {"killed", "timeout", "caught by type check", "segfault"}
RESULT = re.compile(r"^\s+(?P<name>\S+): (?P<status>.+)$")
LISTED = re.compile(r"^- `(?P<name>[^`]+)`: (?P<why>.+)$")


def in_scope(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def explained() -> dict[str, str]:
    reasons: dict[str, str] = {}
    for line in EQUIVALENT.read_text(encoding="utf-8").splitlines():
        if match := LISTED.match(line):
            reasons[match["name"]] = match["why"]
    return reasons


def results(mutmut: list[str]) -> dict[str, str]:
    """Each mutant's status as mutmut last recorded it; empty before the first run."""
    if not (ROOT / "mutants").is_dir():
        return {}
    listing = subprocess.run([*mutmut, "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    return {m["name"]: m["status"] for m in map(RESULT.match, listing.splitlines()) if m}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # The tests spend most of their time waiting on loopback servers and injected timeouts, not computing: two
    # children per core keep the cores busy. Three per core ran faster still, but once made a test fail under the
    # load, and a mutant listed as equivalent then counts as caught.
    parser.add_argument("--max-children", type=int, default=2 * (os.cpu_count() or 2))
    parser.add_argument("patterns", nargs="*", help="only the mutants whose names match these (fnmatch)")
    args = parser.parse_args()
    patterns = args.patterns or SCOPE
    mutmut = [sys.executable, "-m", "mutmut"]

    started = time.monotonic()
    # mutmut re-runs every mutant it is given by name, so a later run names only those not yet caught. A function
    # that changed since gets new mutants when mutmut regenerates them, which the next round then runs.
    known = {name: s for name, s in results(mutmut).items() if in_scope(name, patterns)}
    todo = sorted(name for name, s in known.items() if s not in KILLED) if known else patterns
    if not todo:  # every mutant was caught: one re-run regenerates what changed since, for the next round
        todo = sorted(known)[:1]
    for _ in range(3):
        run = subprocess.run([*mutmut, "run", "--max-children", str(args.max_children), *todo], cwd=ROOT)
        if run.returncode != 0:
            print(f"mutmut run failed (exit {run.returncode})", file=sys.stderr)
            return run.returncode
        todo = [name for name, s in results(mutmut).items() if in_scope(name, patterns) and s == "not checked"]
        if not todo:
            break
    seconds = time.monotonic() - started

    ours = {name: s for name, s in results(mutmut).items() if in_scope(name, patterns)}
    counts = Counter("killed" if s in KILLED else s for s in ours.values())
    reasons = explained()
    survivors = sorted(name for name, s in ours.items() if s not in KILLED)
    unexplained = [name for name in survivors if name not in reasons]
    stale = sorted(name for name in reasons if in_scope(name, patterns) and ours.get(name) in KILLED | {None})

    print()
    print(f"Mutants in scope: {len(ours)} generated, {counts['killed']} killed, {len(survivors)} surviving "
          f"({len(survivors) - len(unexplained)} explained in {EQUIVALENT.relative_to(ROOT)}, "
          f"{len(unexplained)} not); {seconds / 60:.1f} min.")
    for what, n in sorted(counts.items()):
        if what != "killed":
            print(f"  {what}: {n}")
    for name in unexplained:
        print(f"\nNot explained: {name} ({ours[name]})")
        subprocess.run([*mutmut, "show", name], cwd=ROOT)
    for name in stale:
        print(f"Listed as equivalent but {'killed' if name in ours else 'no longer generated'}: {name}")
    return 1 if unexplained or stale else 0


if __name__ == "__main__":
    sys.exit(main())
