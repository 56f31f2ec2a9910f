#!/usr/bin/env bash
# Packs and unpacks a checkpoint directory with checkpack and, alternately in
# the same run, with `tar -cf - DIR | zstd -T0 -3` and `zstd -d | tar -x`;
# prints the median times and the size and time ratios (checkpack / peer).
#
#   bench/compare.sh CHECKPOINT_DIR [ROUNDS]      (default 5 rounds)
#
# Uses .build/release/checkpack (built if missing) or $CHECKPACK; extra flags for
# its pack in $PACK_FLAGS (e.g. --fixed-frames). Work files go to $BENCH_WORK
# (default: a temporary directory on the same disk as /tmp).
set -euo pipefail

src=${1:?usage: bench/compare.sh CHECKPOINT_DIR [ROUNDS]}
rounds=${2:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
checkpack=${CHECKPACK:-$here/.build/release/checkpack}
if [[ ! -x $checkpack ]]; then (cd "$here" && swift build -c release --product checkpack >&2); fi
for tool in tar zstd python3; do command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 2; }; done

work=${BENCH_WORK:-$(mktemp -d)}
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -a ck_pack tz_pack ck_unpack tz_unpack
# Peak RSS of checkpack's own runs, through GNU time when it is installed.
timed() { if [[ -x /usr/bin/time ]]; then /usr/bin/time -f %M -o "$work/rss.$1" "${@:2}"; else "${@:2}"; echo 0 >"$work/rss.$1"; fi; }
pack_rss=0 unpack_rss=0
for ((r = 0; r < rounds; r++)); do
  rm -rf "$work"/*
  t=$(now); timed pack "$checkpack" pack "$src" "$work/a.ckpk" --quiet ${PACK_FLAGS:-}; ck_pack+=("$(echo "$(now) - $t" | bc)")
  pack_rss=$(( $(cat "$work/rss.pack") > pack_rss ? $(cat "$work/rss.pack") : pack_rss ))
  t=$(now); tar -cf - -C "$src" . | zstd -T0 -3 -q -o "$work/a.tar.zst"; tz_pack+=("$(echo "$(now) - $t" | bc)")
  t=$(now); timed unpack "$checkpack" unpack "$work/a.ckpk" "$work/ck-out" --quiet; ck_unpack+=("$(echo "$(now) - $t" | bc)")
  unpack_rss=$(( $(cat "$work/rss.unpack") > unpack_rss ? $(cat "$work/rss.unpack") : unpack_rss ))
  mkdir "$work/tz-out"
  t=$(now); zstd -d -q -c "$work/a.tar.zst" | tar -xf - -C "$work/tz-out"; tz_unpack+=("$(echo "$(now) - $t" | bc)")
  diff -r "$src" "$work/ck-out" >/dev/null || { echo "checkpack round trip differs from the source" >&2; exit 1; }
done

raw=$(du -sb --apparent-size "$src" | cut -f1)
ck_size=$(stat -c %s "$work/a.ckpk")
tz_size=$(stat -c %s "$work/a.tar.zst")
python3 - "$raw" "$ck_size" "$tz_size" "$(median "${ck_pack[@]}")" "$(median "${tz_pack[@]}")" \
  "$(median "${ck_unpack[@]}")" "$(median "${tz_unpack[@]}")" "$rounds" "$pack_rss" "$unpack_rss" <<'PY'
import sys
raw, ck, tz = map(int, sys.argv[1:4])
ckp, tzp, cku, tzu = map(float, sys.argv[4:8])
print(f"data: {raw / 1e6:.1f} MB, median of {sys.argv[8]} alternating rounds")
print(f"{'':24}{'checkpack':>12}{'tar+zstd -3':>14}{'ratio':>9}")
print(f"{'size (MB)':24}{ck / 1e6:12.2f}{tz / 1e6:14.2f}{ck / tz:9.3f}")
print(f"{'size / source':24}{ck / raw:12.3f}{tz / raw:14.3f}")
print(f"{'pack (s)':24}{ckp:12.3f}{tzp:14.3f}{ckp / tzp:9.3f}")
print(f"{'unpack (s)':24}{cku:12.3f}{tzu:14.3f}{cku / tzu:9.3f}")
print(f"checkpack peak RSS: pack {int(sys.argv[9]) / 1024:.0f} MiB, unpack {int(sys.argv[10]) / 1024:.0f} MiB")
PY
