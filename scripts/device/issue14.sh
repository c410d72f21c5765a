#!/usr/bin/env bash
# One device call (<= 600 s) for issue 14: the new HF fixtures (transformers on
# the GPU machine), the build, every CUDA test binary, kite generate, the
# weight-only microbenchmark, a baseline build (.baseline: git archive of an
# older commit) and scripts/device/bench_compare.sh before/after. Carry
# [".deps", ".shared-lite", ".baseline"]; results and a timeline in $OUT:
#   export OUT; timeout 590 bash scripts/device/issue14.sh
set -uo pipefail
T0=$SECONDS
el() { echo "[$((SECONDS-T0)) s] $*" | tee -a $OUT/timeline.log; }
nvidia-smi -L | tee $OUT/gpu.txt
( python3 scripts/fixtures/model_fixtures.py tests/fixtures/models mistral_sliding qwen2_sliding llama_mlp_bias > $OUT/fx.log 2>&1;
  tar czf $OUT/newfx.tar.gz -C tests/fixtures/models mistral_sliding qwen2_sliding llama_mlp_bias ) &
mkdir -p /tmp/deps; for f in .deps/*.deb; do dpkg -x $f /tmp/deps; done
export CMAKE_PREFIX_PATH=/tmp/deps/usr LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu
DEPS="-DCMAKE_INCLUDE_PATH=/tmp/deps/usr/include -DCMAKE_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu"
cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DKITE_CUDA=ON -DKITE_CUDA_ARCH=90a -DKITE_BUILD_BENCH=ON \
  -DKITE_SHARED_DIR=$(realpath .shared-lite) $DEPS > $OUT/configure.log 2>&1
el configured
cmake --build build-device -j16 --target kite > $OUT/build_kite.log 2>&1; el "kite built rc=$?"
( cmake -S .baseline -B /tmp/base -G Ninja -DCMAKE_BUILD_TYPE=Release -DKITE_CUDA=ON -DKITE_CUDA_ARCH=90a -DKITE_BUILD_TESTS=OFF -DKITE_BUILD_BENCH=OFF $DEPS > $OUT/base.log 2>&1 &&
  cmake --build /tmp/base -j5 --target kite >> $OUT/base.log 2>&1; echo "base rc=$?" >> $OUT/timeline.log ) &
BASEPID=$!
cmake --build build-device -j11 --target backend_test model_test quantize_test engine_test cuda_linear_wq_bench > $OUT/build_tests.log 2>&1; el "tests built rc=$?"
for t in backend_test model_test quantize_test engine_test; do
  timeout 150 ./build-device/tests/$t --gtest_filter='Cuda*:LinearLayer.Cuda*:*Cuda*' > $OUT/t_$t.log 2>&1; el "$t rc=$?"
  tail -3 $OUT/t_$t.log | tee -a $OUT/timeline.log
done
./build-device/kite generate --device cuda --model .shared-lite/models/kite-ref --prompt "The kernel scheduler" --max-tokens 32 > $OUT/generate.log 2>&1; el "generate rc=$?"
timeout 60 ./build-device/bench/cuda_linear_wq_bench --benchmark_min_time=0.1 > $OUT/wq_bench.log 2>&1; el "wq bench rc=$?"
wait $BASEPID; el "baseline done"
B=/tmp/base/kite; [ -x $B ] || B=
bash scripts/device/bench_compare.sh $B > $OUT/compare.out 2>&1; el "compare rc=$?"
wait
