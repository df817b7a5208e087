"""The GPU acceptance run's report: bench/results/report_<gpu>_<date>.md from tools/gpu/check.sh's summary.jsonl.

    python -m tools.gpu.report SUMMARY.jsonl [ENV.log]
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from pathlib import Path

TARGETS = [  # (stage, figure in its JSON line, target, how to read it)
    ("loader", "dali_gpu_flips_fps", 5e6, "DALI GPU loader frames/s, flips on (target >= 5M)"),
    ("loader", "dali_gpu_flips_vs_naive", None, "DALI GPU loader vs the naive loader"),
    ("loader", "torch_device_flips_fps", None, "torch loader, GPU-resident, frames/s"),
    ("loader", "gpu_feed_vs_5M", 2.0, "the node's CPU feed ceiling vs 5M frames/s (goal >= 2)"),
    ("vicreg", "N8704_D128_triton_vs_eager", 3.0, "Triton var+cov fwd+bwd vs eager, N=8704 D=128 bf16 (>= 3x)"),
    ("vicreg", "N8704_D128_triton_vs_compiled", 1.3, "... vs torch.compile (target >= 1.3x)"),
    ("train", "jepa_fast_vs_reference", 10.0, "training vs the reference loop, same GPU (target >= 10x)"),
    ("train", "epoch_full_train_s", None, "one epoch of the full train split (2.5M frames), seconds (target <= 5)"),
    ("train", "jepa_fast_bf16_data_wait_pct", None, "data wait % (target <= 2)"),
]


def main(argv: list[str]) -> int:
    summary = [json.loads(line) for line in Path(argv[0]).read_text().splitlines() if line.strip()]
    env = {}
    if len(argv) > 1 and Path(argv[1]).exists():
        found = [line for line in Path(argv[1]).read_text().splitlines() if re.fullmatch(r"\{.*\}", line.strip())]
        env = json.loads(found[-1]) if found else {}
    gpu = env.get("gpu") or "gpu"
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    day = datetime.date.today().isoformat()
    rows = ["| stage | rc | seconds | result |", "|---|---|---|---|"]
    by_stage = {}
    for s in summary:
        by_stage[s["stage"]] = s.get("result") or {}
        if s.get("skipped"):
            rows.append(f"| {s['stage']} | skipped | - | {s['left_s']} s of the budget left |")
        else:
            res = json.dumps(s.get("result"))[:300]
            rows.append(f"| {s['stage']} | {s['rc']}{' (timed out)' if s['timed_out'] else ''} | {s['seconds']} | "
                        f"`{res}` |")
    figures = ["| figure | value | target |", "|---|---|---|"]
    for stage, key, target, what in TARGETS:
        v = (by_stage.get(stage) or {}).get(key)
        figures.append(f"| {what} | {v if v is not None else 'not measured'} | {target if target else '-'} |")
    text = "\n".join([f"# GPU acceptance run — {gpu}, {day}", "",
                      "Command: `bash tools/gpu/check.sh` (stages and their logs: tools/gpu/check.sh).", "",
                      "## Environment", "", "```", json.dumps(env, indent=1), "```", "",
                      "## Figures", "", *figures, "", "## Stages", "", *rows, ""])
    out = Path("bench/results") / f"report_{slug}_{day}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
