#!/bin/bash
# The CUDA checks of issue 14, as one short script for a lent GPU machine (the `device` tool's `run`):
#   1. the CUDA tests that need only torch (tests/test_device.py: a few training steps of every backward path
#      and both penalties on the GPU against the CPU), and tests/test_devices.py when nnsight and the rest of
#      the model stack import there (their CUDA tests: pinned streaming, extraction and the KL/CE splice);
#   2. the train-step benchmark on the GPU (ours vs SAELens where sae-lens imports, and the bare bf16 matmul).
# Writes $OUT/gpu_tests.log and $OUT/gpu_bench.log (+ .json) when OUT is set, else under /tmp/gpu_check.
# Run from the repository root:  bash scripts/gpu_check.sh   (about 2-4 minutes on an H100, start excluded)
set -u -o pipefail
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
py="${PYTHON:-python3}"
"$py" - <<'EOF' 2>&1 | tee "$out/gpu_env.log"
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0))
for name in ("nnsight", "transformers", "gguf", "sae_lens", "safetensors", "yaml", "tqdm"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "?"))
    except Exception as err:  # noqa: BLE001 - report and go on
        print(name, "MISSING:", type(err).__name__, err)
EOF
tests=(tests/test_device.py)
if "$py" -c "import nnsight, gguf" 2>/dev/null; then
  tests+=(tests/test_devices.py)
else
  echo "nnsight/gguf missing: tests/test_devices.py left out (carry their wheels to run it)" | tee -a "$out/gpu_env.log"
fi
"$py" -m pytest -q -rs -p no:cacheprovider "${tests[@]}" 2>&1 | tee "$out/gpu_tests.log"
rc_tests=$?
"$py" benchmarks/train_step.py --device cuda --shapes 640x5120x28 640x5120x89 2304x18432x320 --steps 20 --warmup 3 \
  --json "$out/gpu_bench.json" 2>&1 | tee "$out/gpu_bench.log"
rc_bench=$?
echo "tests rc=$rc_tests bench rc=$rc_bench"
exit $(( rc_tests != 0 || rc_bench != 0 ))
