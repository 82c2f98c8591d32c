"""The kill rate of a `make mutation` run, read from mutmut's result files under mutants/.

Usage: python bench/mutation_score.py PATTERN [PATTERN ...]

Counts only the mutants whose names match a pattern (the functions `make mutation` runs), so a
mutant of a function outside the gateway's rules, generated because mutmut mutates whole files,
never counts. A timeout counts as killed (the mutant made a test hang), as mutmut counts it; a
mutant that no selected test reaches ("no tests") counts as survived: nothing holds it.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

KILLED = {"killed", "timeout", "caught by type check"}


def statuses(root: Path, patterns: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for meta in sorted(root.rglob("*.py.meta")):
        data = json.loads(meta.read_text("utf-8"))
        for name, code in data.get("exit_code_by_key", {}).items():
            if any(fnmatch.fnmatch(name, p) for p in patterns):
                found[name] = status_by_exit_code[code]
    return found


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    found = statuses(Path("mutants"), argv)
    if not found:
        print("no mutant results under mutants/: run `make mutation` first", file=sys.stderr)
        return 1
    counts = Counter(found.values())
    killed = sum(n for status, n in counts.items() if status in KILLED)
    for name, status in sorted(found.items()):
        if status not in KILLED:
            print(f"  {status:>12}  {name}")
    print("  ".join(f"{status}: {n}" for status, n in sorted(counts.items())))
    print(f"mutants: {len(found)}  killed: {killed}  kill rate: {100 * killed / len(found):.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
