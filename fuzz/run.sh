#!/usr/bin/env bash
# Builds the libFuzzer harness for the archive readers (with AddressSanitizer)
# and runs it on a corpus seeded from fixtures/.
#
#   fuzz/run.sh [SECONDS] [extra libFuzzer flags]     (default 60 s)
#
# Findings (crash-*, leak-*, oom-*, timeout-*) land in fuzz/findings/; the
# growing corpus in fuzz/corpus/ (neither is committed). Exit status is
# libFuzzer's: 0 when nothing was found.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
seconds=${1:-60}
shift || true
build=$here/build
mkdir -p "$build" "$here/corpus" "$here/findings"
export PATH="/opt/swift/usr/bin:$PATH"

# C targets, instrumented for coverage and ASan; module maps for Swift to import them.
for target in CCRC32C CSystemShims; do
  for c in "$repo/Sources/$target"/*.c; do
    clang -c -O1 -g -fsanitize=fuzzer-no-link,address -I"$repo/Sources/$target/include" "$c" -o "$build/$target.o"
  done
  header=$(basename "$repo/Sources/$target/include/"*.h)
  mkdir -p "$build/modules/$target"
  printf 'module %s {\n  header "%s"\n  export *\n}\n' "$target" "$repo/Sources/$target/include/$header" >"$build/modules/$target/module.modulemap"
done

swiftc -sanitize=fuzzer,address -parse-as-library -O -g \
  -module-name Checkpack \
  -I "$build/modules/CCRC32C" -I "$build/modules/CSystemShims" \
  -I "$repo/Sources/CZstd" -I "$repo/Sources/CZlib" \
  "$repo"/Sources/Checkpack/*.swift "$here/FuzzArchive.swift" \
  "$build"/*.o -lzstd -lz -o "$build/fuzz-archive"

# Seeds: the golden archives and small archives of the example checkpoint.
cp "$repo"/fixtures/golden/*.ckpk "$here/corpus/" 2>/dev/null || true

export SWIFT_BACKTRACE=enable=no   # Swift's backtracer can hang after a finding
"$build/fuzz-archive" "$here/corpus" -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 \
  -max_len=65536 -artifact_prefix="$here/findings/" -print_final_stats=1 "$@"
