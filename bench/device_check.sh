#!/usr/bin/env bash
# The GPU measurements in one short run, for a machine lent for minutes (figures go to bench/README.md):
#   1. each stage's step against one classifier forward+backward, on the device (bench_cost.py --device);
#   2. two references audited on the CPU and on the device: verdicts, leading figures, what differs
#      (bench_verdict.py --device);
#   3. where the real-data cache travelled along (.cache/realdata/fashion-mnist.npz), the quick ResNet-18 audit at
#      3x224x224 of docs/performance.md on the device, timed.
# From the repository root:  bench/device_check.sh [RESULTS_DIR]     (default: $OUT, else bench/out/device)
# Settings by environment: PYTHON (python3), DEVICE (cuda), COST_MODELS (mlp,cnn,resnet18), SIZES (224), REFERENCES
# (digits-mlp-2pc,digits-cnn-20pc). Wheels of packages the machine lacks (lpips) may travel in .whl/:
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl lpips
set -euo pipefail
cd "$(dirname "$0")/.."
results=${1:-${OUT:-bench/out/device}}
mkdir -p "$results"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
device=${DEVICE:-cuda}
py=${PYTHON:-python3}
"$py" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'GPU:',
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')" | tee "$results/machine.txt"

"$py" bench/bench_cost.py --device "$device" --models "${COST_MODELS:-mlp,cnn,resnet18}" --sizes "${SIZES:-224}" \
    --steps 3 2>&1 | tee "$results/cost.txt"
"$py" bench/bench_verdict.py --device "$device" --models "${REFERENCES:-digits-mlp-2pc,digits-cnn-20pc}" \
    --effort quick 2>&1 | tee "$results/verdict.txt"

if [ -f .cache/realdata/fashion-mnist.npz ]; then
    "$py" bench/resnet224_inputs.py --out /tmp/r18 >/dev/null
    started=$(date +%s)
    status=0
    "$py" -m leakaudit run /tmp/r18/r18.pt --data /tmp/r18/train --holdout /tmp/r18/holdout --effort quick \
        --device "$device" --out /tmp/r18-out --quiet || status=$?
    echo "ResNet-18 3x224x224 quick on $device: exit $status in $(( $(date +%s) - started )) s" \
        | tee "$results/resnet224.txt"
    cp /tmp/r18-out/leakaudit.json "$results/resnet224.json" 2>/dev/null || true
else
    echo "ResNet-18 audit skipped: .cache/realdata/fashion-mnist.npz did not travel" | tee "$results/resnet224.txt"
fi
