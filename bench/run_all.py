"""Run every benchmark in bench/ on this machine and write one dated markdown report.

    python -m bench.run_all [--only loader,train] [--skip quality] [--out bench/results]
    jepa-fast bench ...                     (the same)

Each bench runs in its own process; its table goes into the report and its last line (a JSON object)
into the report's summary table. The report is bench/results/report_<machine>_<date>.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import machine, versions

BENCHES = ["generate", "pack", "loader", "vicreg", "train", "probe", "plan", "quality"]
OPTIONAL = ["pusht"]
"""Run only when named with --only: PushT needs the [envs] extra and ~20 minutes on 2 cores."""


def run_one(name: str) -> tuple[str, dict | None, float, int]:
    cmd = [sys.executable, "-m", f"bench.bench_{name}"]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    dt = time.perf_counter() - t
    text = r.stdout
    lines = [ln for ln in text.splitlines() if ln.strip()]
    fig = None
    if lines:
        try:
            fig = json.loads(lines[-1])
        except ValueError:
            fig = None
    if r.returncode != 0:
        text += "\n[stderr]\n" + r.stderr[-4000:]
    return text, fig, dt, r.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(BENCHES)} (or "
                    f"{','.join(OPTIONAL)}, run only when named)")
    ap.add_argument("--skip", default="", help="comma-separated benches to skip")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else BENCHES
    names = [n for n in names if n not in set(args.skip.split(","))]
    unknown = [n for n in names if n not in BENCHES + OPTIONAL]
    if unknown:
        print(f"error: unknown bench {unknown}; choose from {BENCHES + OPTIONAL}", file=sys.stderr)
        return 2
    m = machine()
    tag = "gpu-" + m["gpu"].split()[-1] if "gpu" in m else f"cpu-{m['cpu_cores']}core"
    date = datetime.date.today().isoformat()
    sections, summary, failed = [], [], []
    for name in names:
        print(f"== bench_{name}", flush=True)
        text, fig, dt, rc = run_one(name)
        print(text.splitlines()[-1] if text.strip() else "(no output)", flush=True)
        if rc != 0:
            failed.append(name)
        ratios = {k: v for k, v in (fig or {}).items() if "_vs_" in k}
        summary.append((name, rc, dt, ratios))
        sections.append(f"## bench_{name}\n\nCommand: `python -m bench.bench_{name}` ({dt:.0f} s, exit {rc})\n\n"
                        f"```\n{text.strip()}\n```\n")
    lines = [f"# jepa-fast benchmark report — {tag}, {date}", "",
             "Machine: " + ", ".join(f"{k}={v}" for k, v in m.items()), "",
             "| package | version |", "|---|---|", *[f"| {k} | {v} |" for k, v in versions().items()], "",
             "Command: `python -m bench.run_all" + (f" --only {args.only}" if args.only else "") + "`", "",
             "| bench | exit | seconds | ratios |", "|---|---|---|---|"]
    for name, rc, dt, ratios in summary:
        lines.append(f"| {name} | {rc} | {dt:.0f} | " + ", ".join(f"{k}={v}" for k, v in ratios.items()) + " |")
    report = "\n".join(lines) + "\n\n" + "\n".join(sections)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"report_{tag}_{date}.md"
    path.write_text(report)
    print(f"report: {path}")
    print(json.dumps({"bench": "run_all", "report": str(path), "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
