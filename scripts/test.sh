#!/usr/bin/env bash
# The whole test suite, from a fresh clone on Debian 12 as root:
#   installs dependencies, builds (warnings are errors), checks formatting, builds the
#   shipped templates (cached under the state dir), runs every unit, integration and
#   end-to-end test, the ASan/UBSan builds and the fuzzers.
# Environment: TARTARUS_STATE_DIR (default /var/lib/tartarus) holds the template cache.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=$(nproc)
export TARTARUS_STATE_DIR=${TARTARUS_STATE_DIR:-/var/lib/tartarus}
export TARTARUS_TEST_STATE_DIR=$TARTARUS_STATE_DIR

step() { printf '\n==> %s\n' "$*"; }
started=$(date +%s)

step "dependencies"
scripts/install-deps.sh

step "format check (.clang-format)"
mapfile -t sources < <(git ls-files '*.cc' '*.h' 2>/dev/null || find src guest tests bench fuzz -name '*.cc' -o -name '*.h')
clang-format --dry-run -Werror "${sources[@]}"

step "build (g++, -Werror)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$jobs"

step "build fuzzers (clang++, libFuzzer + ASan/UBSan)"
cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DTARTARUS_FUZZ=ON >/dev/null
cmake --build build-fuzz -j "$jobs"

step "templates (built once, cached in $TARTARUS_STATE_DIR)"
build/bin/tartarus template build base python-ds

step "PostgreSQL (one throwaway server for the store and multi-node tests)"
failed=0
pg_dir=$(mktemp -d /tmp/tartarus-test-pg.XXXXXX)
# Stopped however the script ends, failed tests included.
trap 'scripts/pg-test-server.sh stop "$pg_dir" >/dev/null 2>&1 || true' EXIT
if [[ -x /usr/lib/postgresql/15/bin/initdb ]]; then
  if pg_url=$(scripts/pg-test-server.sh start "$pg_dir"); then
    export TARTARUS_TEST_PG_URL=$pg_url
    echo "TARTARUS_TEST_PG_URL=$TARTARUS_TEST_PG_URL"
  else
    echo "PostgreSQL did not start (see above)" >&2
    failed=1
  fi
else
  echo "no PostgreSQL 15 server binaries: its tests will say skipped"
fi

step "tests"
(cd build && ctest --output-on-failure --timeout 900 -j "$jobs") | tee build/ctest.log || failed=1
step "fuzzers"
# Each fuzzer is single-threaded: run them side by side.
(cd build-fuzz && ctest --output-on-failure -j "$jobs") | tee build-fuzz/ctest.log || failed=1

passed_count=0
failed_count=0
for log in build/ctest.log build-fuzz/ctest.log; do
  line=$(grep -E 'tests passed, [0-9]+ tests failed out of' "$log" | tail -1 || true)
  total=$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$line")
  bad=$(sed -E 's/.*passed, ([0-9]+) tests failed.*/\1/' <<<"$line")
  [ -n "$total" ] || { failed=1; continue; }
  passed_count=$((passed_count + total - bad))
  failed_count=$((failed_count + bad))
done
skipped=$(grep -cE '\(Skipped\)$' build/ctest.log || true)
passed_count=$((passed_count - skipped))
printf '\ntest suite took %ss\n' $(( $(date +%s) - started ))
[ "$failed_count" -eq 0 ] && [ "$failed" -eq 0 ] || failed=1
echo "tests: ${passed_count} passed, ${failed_count} failed, ${skipped} skipped"
exit "$failed"
