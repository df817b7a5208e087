#!/usr/bin/env bash
# tools/gpu/check.sh -- the GPU acceptance run: one command, time-budgeted (<= 6 minutes on an H100 without the
# optional recipe stage), on a node without network access. Run from the repo root:
#
#     bash tools/gpu/check.sh                      # every stage; BUDGET=360 s
#     STAGES=env,import,tests bash tools/gpu/check.sh
#     RECIPE=1 BUDGET=560 bash tools/gpu/check.sh  # also the last, optional stage: ours at the published budget
#
# The offline bundle (python -m tools.gpu.bundle --out .gpu, on a machine with package access) arrives as
# .gpu/p1 .. .gpu/pN, one per call; the unpack stage reassembles, verifies and unpacks it to $SITE.
# Stages: env (versions, nvidia-smi), unpack, import, tests (the gpu-marked tests, TRITON_INTERPRET=0),
# loader (DALI GPU, torch GPU-resident, naive), vicreg (Triton vs eager vs compiled, N=8704, D=128..512,
# bf16 and fp32), train (compiled bf16 jepa-fast vs the reference loop), recipe (optional).
# A stage that fails records its error and the run goes on. Writes $OUT/summary.jsonl (one JSON line per
# stage: rc, seconds, and the stage's own last JSON line) and bench/results/report_<gpu>_<date>.md.
set -u
REPO=$(pwd)
OUT=${OUT:-/tmp/gpucheck}
SITE=${SITE:-/tmp/jf-site}
PARTS=${PARTS:-/tmp/jf-parts}
BUDGET=${BUDGET:-360}
STAGES=${STAGES:-env,unpack,import,tests,loader,vicreg,train,recipe}
RECIPE=${RECIPE:-0}
PY=${PY:-python3}
SUM=$OUT/summary.jsonl
T0=$(date +%s)
mkdir -p "$OUT" "$PARTS"
: >"$SUM"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 TRITON_INTERPRET=0
export TORCHINDUCTOR_CACHE_DIR=/tmp/jf-inductor TRITON_CACHE_DIR=/tmp/jf-triton  # a rerun reuses compiled kernels
export PYTHONPATH=$SITE:$SITE-fallback:$REPO${PYTHONPATH:+:$PYTHONPATH}

want() { [[ ",$STAGES," == *",$1,"* ]]; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }

# stage NAME CAP_S MIN_LEFT_S CMD...: run CMD capped at CAP_S (and at what is left of the budget); append
# {stage, rc, seconds, timed_out, result} to summary.jsonl, result = CMD's last line that is a JSON object.
stage() {
  local name=$1 cap=$2 need=$3; shift 3
  want "${name%%_*}" || return 0
  local l; l=$(left)
  if (( l < need )); then
    echo "=== [$name] SKIPPED: ${l}s of the budget left, needs ${need}s"
    printf '{"stage":"%s","skipped":true,"left_s":%d}\n' "$name" "$l" >>"$SUM"; return 0
  fi
  (( cap > l )) && cap=$l
  echo "=== [$name] $(date +%T) cap ${cap}s (${l}s left): $*"
  local t tmp rc last
  t=$(date +%s); tmp=$OUT/$name.log
  timeout -k 10 "$cap" "$@" >"$tmp" 2>&1; rc=$?
  tail -n 40 "$tmp"
  last=$(grep -E '^\{.*\}$' "$tmp" | tail -n 1)
  printf '{"stage":"%s","rc":%d,"seconds":%d,"timed_out":%s,"result":%s}\n' "$name" "$rc" $(( $(date +%s) - t )) \
    "$([[ $rc == 124 || $rc == 137 ]] && echo true || echo false)" "${last:-null}" >>"$SUM"
  return 0
}

env_report() {
  nvidia-smi || true
  echo "nproc $(nproc)"; free -g | head -2
  $PY - <<'EOF'
import importlib.metadata as md, json, sys
out = {"python": sys.version.split()[0]}
try:
    import torch
    out.update(torch=torch.__version__, cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(0),
               capability=".".join(map(str, torch.cuda.get_device_capability(0))), bf16=torch.cuda.is_bf16_supported())
except Exception as e:  # noqa: BLE001
    out["torch_error"] = repr(e)
for p in ("triton", "numpy", "accelerate", "zarr", "numcodecs", "lz4", "google-crc32c", "nvidia-dali-cuda130",
          "nvidia-libnvcomp-cu13"):
    try:
        out[p] = md.version(p)
    except md.PackageNotFoundError:
        out[p] = None
print(json.dumps(out))
EOF
}

unpack() {
  set -e
  for d in "$REPO"/.gpu/p*/; do [ -d "$d" ] && cp -r "$d". "$PARTS"/; done
  bash "$REPO/tools/gpu/install_bundle.sh" "$PARTS" "$SITE"
  echo '{"unpacked": true}'
}

imports() {
  $PY - <<'EOF'
import importlib, json
out = {}
for m in ("zarr", "numcodecs", "lz4", "google_crc32c", "nvidia.dali", "nvidia.dali.plugin.pytorch", "jepa_fast.data.dali",
          "jepa_fast.kernels.vicreg", "jepa_fast.train"):
    try:
        importlib.import_module(m)
        out[m] = "ok"
    except Exception as e:  # noqa: BLE001
        out[m] = f"FAIL {type(e).__name__}: {e}"
from jepa_fast.data.loader import dali_importable
out["dali_importable"] = dali_importable()
print(json.dumps(out))
EOF
}

main() {
  echo "gpu_check: stages=$STAGES budget=${BUDGET}s git=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)"
  stage env 60 10 bash -c "$(declare -f env_report); PY=$PY env_report"
  stage unpack 150 30 bash -c "$(declare -f unpack); REPO=$REPO PARTS=$PARTS SITE=$SITE PY=$PY unpack"
  stage import 60 15 bash -c "$(declare -f imports); PY=$PY imports"
  stage tests 150 40 $PY -m pytest -q -p no:cacheprovider -m gpu -rA tests/test_gpu.py
  stage loader 120 40 $PY -m bench.bench_loader --n 3072 --batch 512 --epochs 2 --no-cold
  stage vicreg 90 30 $PY -m bench.bench_vicreg --ns 8704 --ds 128,256,512 --dtype bf16 --repeats 20
  stage vicreg_fp32 60 20 $PY -m bench.bench_vicreg --ns 8704 --ds 128,256,512 --dtype fp32 --repeats 20
  stage train 180 60 $PY -m bench.bench_train --n 4096 --batch 512 --steps 20 --warmup 5 --rounds 1
  if [[ "$RECIPE" == 1 ]]; then
    stage recipe 300 120 $PY -m bench.bench_quality --budget gpu --ours-only
  fi
  echo "=== gpu_check done in $(( $(date +%s) - T0 ))s"
  cat "$SUM"
  $PY -m tools.gpu.report "$SUM" "$OUT/env.log" || true
}

main 2>&1 | tee "$OUT/all.log"
