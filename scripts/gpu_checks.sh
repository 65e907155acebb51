#!/usr/bin/env bash
# The GPU checks in one run: OpenMM's own platform test, the gpu-marked tests, bench.py on
# CUDA (chignolin, alanine dipeptide in implicit and explicit solvent, and a short chignolin
# loop) and gpu_scaling.py. Each part has its own time limit and log, so that one failure
# or overrun leaves the others' results; the whole run ends within BUDGET seconds.
#
#     bash scripts/gpu_checks.sh OUT_DIR [BUDGET_S] [LOOP_STEPS]
#
# Writes OUT_DIR/gpu-checks.log, bench-gpu.json, gpu-scaling.json and chignolin-loop.tar.gz
# (the loop's summary, config and logs).
set -u
out=${1:?usage: gpu_checks.sh OUT_DIR [BUDGET_S] [LOOP_STEPS]}
budget=${2:-540}
loop_steps=${3:-100000}
mkdir -p "$out"
log="$out/gpu-checks.log"
py=${PYTHON:-python3}
t_end=$(( $(date +%s) + budget ))
export PYTHONUNBUFFERED=1

part() {  # part NAME LIMIT_S COMMAND...: runs within min(LIMIT_S, what is left - 5 s)
  local name=$1 limit=$2; shift 2
  local left=$(( t_end - $(date +%s) - 5 ))
  (( left < limit )) && limit=$left
  if (( limit < 10 )); then echo "== $name: skipped, $left s left" | tee -a "$log"; return; fi
  echo "== $name (limit ${limit} s) $(date +%T)" | tee -a "$log"
  local t0=$(date +%s)
  timeout -k 5 "$limit" "$@" >>"$log" 2>&1
  echo "== $name: exit $? after $(( $(date +%s) - t0 )) s" | tee -a "$log"
}

part "machine" 30 bash -c "nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc; \
  $py -c 'import sys, openmm, torch, numba, numpy, mdtraj, pydantic, zuko; print(sys.version.split()[0], \"openmm\", openmm.__version__, \"torch\", torch.__version__, \"cuda\", torch.cuda.is_available(), \"numba\", numba.__version__, \"numpy\", numpy.__version__, \"mdtraj\", mdtraj.__version__); \
  print(\"platforms\", [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())], \
  \"plugin failures\", openmm.Platform.getPluginLoadFailures())'"
part "openmm.testInstallation" 90 "$py" -m openmm.testInstallation
part "gpu tests" 150 "$py" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider
part "bench (CUDA rows)" 170 "$py" scripts/bench.py --solvents chignolin,implicit,explicit --skip-training \
  --rounds 3 --min-seconds 1 --json "$out/bench-gpu.json"
part "chignolin loop" 200 "$py" scripts/bench.py --solvents "" --skip-training --chignolin-loop "$loop_steps" \
  --loop-out /tmp/cvflow-chignolin-loop --json "$out/bench-gpu-loop.json"
(cd /tmp && tar czf "$out/chignolin-loop.tar.gz" --exclude='*.dcd' --exclude='*.chk' --exclude='*.npy' \
  cvflow-chignolin-loop 2>/dev/null)
part "gpu scaling" 200 "$py" scripts/gpu_scaling.py --paddings 1.0,3.8 --cv-atoms 480 --steps 2000 --rounds 3 \
  --json "$out/gpu-scaling.json"
echo "== done $(date +%T)" | tee -a "$log"
