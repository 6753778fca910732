"""
Instructions per job of bench/micro_job.py under valgrind's callgrind, for
one or more source trees side by side (repeatable on a noisy machine, where
jobs/s is not).

    python bench/callgrind_job.py [--jobs N] [--base N0] TREE [TREE ...]
    # e.g. a base at a fixed commit against this tree:
    git worktree add --detach /tmp/rawsvc-base <commit>
    python bench/callgrind_job.py /tmp/rawsvc-base .

This bench/micro_job.py runs with C{PYTHONPATH=<tree>} (so that tree's
C{rawsvc} is imported), once with C{--base} jobs and once with C{--base +
--jobs} jobs; the difference over C{--jobs} is the instructions of one job,
start-up and the first jobs' lazy imports excluded.  Needs valgrind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent


def instructions(tree: Path, jobs: int, workdir: Path) -> int:
    """Total instructions (Ir) of one C{micro_job.py JOBS} run of C{tree}'s rawsvc."""
    script = HERE / "micro_job.py"  # this bench, each tree's rawsvc
    out = workdir / f"callgrind.{abs(hash(str(tree)))}.{jobs}"
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0")
    env.pop("PYTHONDEVMODE", None)
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, str(script), str(jobs)],
        check=True, env=env, cwd=str(workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no instruction total in {out}")


def per_job(tree: Path, jobs: int, base: int, workdir: Path) -> float:
    with ThreadPoolExecutor(2) as pool:
        small, large = pool.map(lambda n: instructions(tree, n, workdir), (base, base + jobs))
    return (large - small) / jobs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs="+", type=Path, help="source trees (each with a rawsvc/ package)")
    p.add_argument("--jobs", type=int, default=2000, help="jobs measured (default 2000)")
    p.add_argument("--base", type=int, default=200, help="jobs of the run subtracted (default 200)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("callgrind_job: valgrind is not installed (apt-get install -y valgrind)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="rawsvc-callgrind-") as tmp:
        for tree in args.trees:
            tree = tree.resolve()
            results[str(tree)] = per_job(tree, args.jobs, args.base, Path(tmp))
    first = next(iter(results.values()))
    print(f"| tree | instructions/job | vs {Path(next(iter(results))).name} |")
    print("| --- | ---: | ---: |")
    for tree, ir in results.items():
        print(f"| {tree} | {ir:,.0f} | {ir / first:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
