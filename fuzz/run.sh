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

# The C targets, instrumented for coverage and ASan, with module maps for Swift to import them.
c_flags=(-I "$build/modules/CCRC32C" -I "$build/modules/CBytePlanes" -I "$build/modules/CSystemShims"
         -I "$repo/Sources/CZstd" -I "$repo/Sources/CZlib")
c_objects=("$build"/CCRC32C.o "$build"/CBytePlanes.o "$build"/CSystemShims.o)
c_modules() {
  for module in CCRC32C CBytePlanes CSystemShims; do
    for c in "$repo/Sources/$module"/*.c; do
      clang -c -O1 -g -fsanitize=fuzzer-no-link,address -I"$repo/Sources/$module/include" "$c" -o "$build/$module.o"
    done
    header=$(basename "$repo/Sources/$module/include/"*.h)
    mkdir -p "$build/modules/$module"
    printf 'module %s {\n  header "%s"\n  export *\n}\n' "$module" "$repo/Sources/$module/include/$header" >"$build/modules/$module/module.modulemap"
  done
}

case $target in
archive)
  c_modules
  swiftc -sanitize=fuzzer,address -parse-as-library -O -g -module-name Checkpack -package-name Checkpack \
    "${c_flags[@]}" "$repo"/Sources/Checkpack/*.swift "$here/FuzzArchive.swift" "${c_objects[@]}" \
    -lzstd -lz -lm -o "$build/fuzz-archive"
  cp "$repo"/fixtures/golden/*.ckpk "$corpus/"
  ;;
pickle)
  swiftc -sanitize=fuzzer,address -parse-as-library -O -g -module-name CheckpackTorch \
    "$repo/Sources/CheckpackTorch/Pickle.swift" "$here/FuzzPickle.swift" -o "$build/fuzz-pickle"
  cp "$repo/fixtures/example-checkpoint/.metadata" "$corpus/example-metadata"
  ;;
metadata)
  # The parsers' files as one module (they import CheckpackStorage, which this module
  # then is), over the Checkpack module built on its own (they import it too).
  c_modules
  mkdir -p "$build/swift"
  (cd "$build/swift" && swiftc -sanitize=fuzzer,address -parse-as-library -O -g -module-name Checkpack -package-name Checkpack \
    -emit-module -emit-module-path "$build/swift/Checkpack.swiftmodule" -emit-library -static \
    "${c_flags[@]}" "$repo"/Sources/Checkpack/*.swift -o "$build/swift/libCheckpack.a")
  swiftc -sanitize=fuzzer,address -parse-as-library -O -g -module-name CheckpackStorage -package-name Checkpack -suppress-warnings \
    -I "$build/swift" "${c_flags[@]}" \
    "$repo/Sources/CheckpackStorage/Model.swift" "$repo/Sources/CheckpackStorage/MetadataCoding.swift" \
    "$repo/Sources/CheckpackTorch/Pickle.swift" "$repo/Sources/CheckpackTorch/TorchMetadata.swift" \
    "$repo/Sources/CheckpackTorch/Safetensors.swift" "$here/FuzzMetadata.swift" \
    "$build/swift/libCheckpack.a" "${c_objects[@]}" -lzstd -lz -lm -o "$build/fuzz-metadata"
  cp "$here"/seeds/metadata/* "$corpus/"
  cp "$repo/fixtures/example-checkpoint/.metadata" "$corpus/torch-metadata"
  ;;
esac

export SWIFT_BACKTRACE=enable=no   # Swift's backtracer can hang after a finding
"$build/fuzz-$target" "$corpus" -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 \
  -max_len=65536 -artifact_prefix="$here/findings/" -print_final_stats=1 "$@"
