"""Before/after: one bench run from two versions of the code, alternately, in one session.

    python -m bench.ab --base HEAD~3 --rounds 3 bench_pack -- --n 3000 --hot
    python -m bench.ab --base v0.1 bench_train -- --steps 30

The base revision is checked out into a temporary git worktree; each round runs the bench from the base
tree and then from this tree (``python -m bench.<name> ARGS`` with the tree first on the import path), so
both see the same machine state, round after round. Every numeric field of the benches' last JSON line is
collected; the table shows each side's median (min-max) and the ratio new / base of the medians. Whether
a larger value is better depends on the field (frames/s: larger; seconds, ms: smaller). The last line is
one JSON object with ``<field>_new_vs_base`` ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import header, print_json, print_table

ROOT = Path(__file__).resolve().parent.parent


def _run(tree: Path, bench: str, args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    r = subprocess.run([sys.executable, "-m", f"bench.{bench}", *args], cwd=tree, env=env, capture_output=True,
                       text=True)
    lines = [line for line in r.stdout.strip().splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines:
        raise SystemExit(f"bench.{bench} failed in {tree} (exit {r.returncode}):\n{r.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="HEAD", help="git revision to compare against (default HEAD: the last commit "
                    "vs the working tree)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("bench", help="bench module name, e.g. bench_pack")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- then the bench's own arguments")
    a = ap.parse_args()
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    rev = subprocess.run(["git", "rev-parse", "--short", a.base], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    header(f"bench.ab: bench.{a.bench} {' '.join(args)} | base {a.base} ({rev}) vs this tree, {a.rounds} rounds")
    work = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    base = work / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(base), rev], cwd=ROOT, check=True, capture_output=True)
    try:
        runs: dict[str, list[dict]] = {"base": [], "new": []}
        for i in range(a.rounds):
            for side, tree in (("base", base), ("new", ROOT)):
                runs[side].append(_run(tree, a.bench, args))
                print(f"round {i + 1}/{a.rounds} {side}: done", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    fields = [k for k, v in runs["new"][0].items()
              if isinstance(v, int | float) and not isinstance(v, bool) and all(k in r for r in runs["base"])]
    rows, ratios = [], {}
    for k in fields:
        b = [float(r[k]) for r in runs["base"]]
        n = [float(r[k]) for r in runs["new"]]
        mb, mn = statistics.median(b), statistics.median(n)
        ratio = mn / mb if mb else float("nan")
        ratios[f"{k}_new_vs_base"] = round(ratio, 3)
        rows.append({"field": k, "base median (min-max)": f"{mb:.4g} ({min(b):.4g}-{max(b):.4g})",
                     "new median (min-max)": f"{mn:.4g} ({min(n):.4g}-{max(n):.4g})", "new / base": ratio})
    print()
    print_table(rows, ["field", "base median (min-max)", "new median (min-max)", "new / base"])
    print_json({"bench": f"ab-{a.bench}", "base": rev, "rounds": a.rounds, **ratios})


if __name__ == "__main__":
    main()
