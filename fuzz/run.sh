#!/usr/bin/env bash
# Builds a libFuzzer harness (with AddressSanitizer) and runs it.
#
#   fuzz/run.sh [archive|pickle|metadata] [SECONDS] [extra libFuzzer flags]    (default: archive, 60 s)
#
# archive:  the archive readers (open, list, range reads, verify, front-to-back),
#           seeded from fixtures/golden.
# pickle:   the pickle reader, seeded with the example checkpoint's .metadata.
# metadata: the safetensors header, JSON .metadata and torch .metadata parsers
#           with their shape and range checks, seeded from fuzz/seeds/metadata.
# Findings (crash-*, leak-*, oom-*, timeout-*) land in fuzz/findings/; the
# growing corpora in fuzz/corpus-NAME/ (neither is committed). Exit status is
# libFuzzer's: 0 when nothing was found.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
target=archive
if [[ ${1:-} == archive || ${1:-} == pickle || ${1:-} == metadata ]]; then target=$1; shift; fi
seconds=${1:-60}
shift || true
build=$here/build
corpus=$here/corpus-$target
mkdir -p "$build" "$corpus" "$here/findings"
export PATH="/opt/swift/usr/bin:$PATH"

case $target in
archive)
  # C targets, instrumented for coverage and ASan; module maps for Swift to import them.
  for module in CCRC32C CBytePlanes CSystemShims; do
    for c in "$repo/Sources/$module"/*.c; do
      clang -c -O1 -g -fsanitize=fuzzer-no-link,address -I"$repo/Sources/$module/include" "$c" -o "$build/$module.o"
    done
    header=$(basename "$repo/Sources/$module/include/"*.h)
    mkdir -p "$build/modules/$module"
    printf 'module %s {\n  header "%s"\n  export *\n}\n' "$module" "$repo/Sources/$module/include/$header" >"$build/modules/$module/module.modulemap"
  done
  swiftc -sanitize=fuzzer,address -parse-as-library -O -g -module-name Checkpack -package-name Checkpack \
    -I "$build/modules/CCRC32C" -I "$build/modules/CBytePlanes" -I "$build/modules/CSystemShims" \
    -I "$repo/Sources/CZstd" -I "$repo/Sources/CZlib" \
    "$repo"/Sources/Checkpack/*.swift "$here/FuzzArchive.swift" "$build"/CCRC32C.o "$build"/CBytePlanes.o "$build"/CSystemShims.o \
    -lzstd -lz -lm -o "$build/fuzz-archive"
  cp "$repo"/fixtures/golden/*.ckpk "$corpus/"
  ;;
pickle)
  swiftc -sanitize=fuzzer,address -parse-as-library -O -g -module-name CheckpackTorch \
    "$repo/Sources/CheckpackTorch/Pickle.swift" "$here/FuzzPickle.swift" -o "$build/fuzz-pickle"
  cp "$repo/fixtures/example-checkpoint/.metadata" "$corpus/example-metadata"
  ;;
metadata)
  # One module from the parsers' files (they import CheckpackStorage, which this module then is).
  swiftc -sanitize=fuzzer,address -parse-as-library -O -g -module-name CheckpackStorage -suppress-warnings \
    "$repo/Sources/CheckpackStorage/Model.swift" "$repo/Sources/CheckpackStorage/MetadataCoding.swift" \
    "$repo/Sources/CheckpackTorch/Pickle.swift" "$repo/Sources/CheckpackTorch/TorchMetadata.swift" \
    "$repo/Sources/CheckpackTorch/Safetensors.swift" "$here/FuzzMetadata.swift" -o "$build/fuzz-metadata"
  cp "$here"/seeds/metadata/* "$corpus/"
  cp "$repo/fixtures/example-checkpoint/.metadata" "$corpus/torch-metadata"
  ;;
esac

export SWIFT_BACKTRACE=enable=no   # Swift's backtracer can hang after a finding
"$build/fuzz-$target" "$corpus" -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 \
  -max_len=65536 -artifact_prefix="$here/findings/" -print_final_stats=1 "$@"
