#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (tests/fuzz/clang, apart from the main g++ build) and
# runs each one for a bounded time over its seed corpus. Fails on any crash, leak, sanitizer
# report or timeout; exits 77 (skipped) when clang or its fuzzer runtime is missing.
#
#   run_fuzzers.sh [WORK_DIR]      environment: FUZZ_SECONDS (per target, default 15),
#                                  FUZZ_TARGETS (default: all), FUZZ_JOBS (build jobs, default 2)
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="${1:-${PWD}/fuzz-work}"
seconds="${FUZZ_SECONDS:-15}"
jobs="${FUZZ_JOBS:-2}"
targets="${FUZZ_TARGETS:-config_fuzzer upstream_fuzzer validation_fuzzer ledger_fuzzer}"
cc="${FUZZ_CC:-clang}"
cxx="${FUZZ_CXX:-clang++}"

skip() { echo "SKIPPED: $*" >&2; exit 77; }

command -v "${cxx}" >/dev/null 2>&1 || skip "${cxx} not found (Debian: apt-get install clang libclang-rt-14-dev)"
command -v cmake >/dev/null 2>&1 || skip "cmake not found"
mkdir -p "${work}"
probe="${work}/probe"
mkdir -p "${probe}"
printf '%s\n' '#include <cstddef>' '#include <cstdint>' \
  'extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }' > "${probe}/p.cc"
if ! "${cxx}" -fsanitize=fuzzer,address,undefined "${probe}/p.cc" -o "${probe}/p" \
    >"${probe}/log" 2>&1; then
  cat "${probe}/log" >&2
  skip "${cxx} cannot link -fsanitize=fuzzer,address,undefined (Debian: libclang-rt-14-dev)"
fi

generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
build="${work}/build"
start=$(date +%s)
if [[ ! -f "${build}/CMakeCache.txt" ]]; then
  CC="${cc}" CXX="${cxx}" cmake -S "${here}/clang" -B "${build}" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=None >"${work}/configure.log" 2>&1 \
    || { cat "${work}/configure.log"; echo "FAILED: configuring the fuzz build"; exit 1; }
fi
# shellcheck disable=SC2086
cmake --build "${build}" -j "${jobs}" --target ${targets} >"${work}/build.log" 2>&1 \
  || { tail -n 60 "${work}/build.log"; echo "FAILED: building the fuzzers"; exit 1; }
echo "built ${targets} in $(( $(date +%s) - start ))s (clang, -fsanitize=fuzzer,address,undefined)"

status=0
for t in ${targets}; do
  name="${t%_fuzzer}"
  seeds="${here}/corpus/${name}"
  corpus="${work}/corpus/${name}"    # new inputs go here, never into the repository
  artifacts="${work}/artifacts/${name}"
  mkdir -p "${corpus}" "${artifacts}"
  log="${work}/${name}.log"
  t0=$(date +%s)
  # A fixed seed (FUZZ_SEED to change it) keeps CI runs comparable; run longer by hand to explore.
  "${build}/${t}" -seed="${FUZZ_SEED:-1}" -max_total_time="${seconds}" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="${artifacts}/" "${corpus}" "${seeds}" >"${log}" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "${log}" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "${log}" | tail -1)
  if [[ ${rc} -ne 0 ]]; then
    tail -n 60 "${log}"
    echo "FAILED: ${t} exit ${rc} after $(( $(date +%s) - t0 ))s; inputs in ${artifacts}" \
         "(reproduce: ${build}/${t} <input>)"
    status=1
  else
    echo "ok: ${t} ${execs:-?} executions in $(( $(date +%s) - t0 ))s, ${cov:-cov: ?}," \
         "corpus $(ls "${corpus}" | wc -l) new + $(ls "${seeds}" | wc -l) seeds"
  fi
done
exit ${status}
