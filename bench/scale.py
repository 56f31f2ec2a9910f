#!/usr/bin/env python3
"""Scale benchmark: pack sparse (zero-filled) bf16 tensor files of growing size
and measure what opening and small reads cost, for two builds side by side.

    bench/scale.py --build v2=.build/release/checkpack --build v1=/tmp/v1/.build/release/checkpack \
        --sizes 1G,20G,180G --work /tmp/scale

Each input is one safetensors file (a header naming one bf16 tensor, then
the tensor's bytes as a hole made by truncate), so format-aware packing puts
it into byte planes in 32 KiB frames, as for a real checkpoint. Per build and
size it reports: pack throughput, pack peak RSS, archive size, index size
(the trailer's index length) and frame table size, bytes read and time to
open (`ls`), and bytes read for a 4 KiB `cat` at the start, middle and end
of the tensor. Bytes read are the process's rchar (/proc/PID/io, read while
the process is a zombie) minus that of `checkpack --version` (the loader's
own reads). Nothing here is a unit test: the figures go into BENCHMARKS.md.
"""
import argparse, json, os, struct, subprocess, sys, tempfile, time

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size_arg(text):
    text = text.strip().upper()
    return int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)


def run(argv):
    """Runs argv; returns (exit code, wall seconds, peak RSS MiB, rchar bytes, stderr)."""
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors)
        # Read /proc/PID/io once the process is a zombie, before wait4 reaps it.
        while True:
            with open(f"/proc/{proc.pid}/stat") as f:
                if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
                    break
            time.sleep(0.001)
        wall = time.perf_counter() - start
        with open(f"/proc/{proc.pid}/io") as f:
            rchar = int(dict(line.split(": ") for line in f.read().splitlines())["rchar"])
        _, status, usage = os.wait4(proc.pid, 0)
        errors.seek(0)
        return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss / 1024, rchar, errors.read().decode(errors="replace")


def available_memory():
    with open("/proc/meminfo") as f:
        return int(dict(line.split(":") for line in f.read().splitlines())["MemAvailable"].split()[0]) * 1024


def make_tensor_dir(work, size):
    """A folder with model.safetensors: one bf16 tensor of `size` bytes, sparse."""
    folder = os.path.join(work, f"tensor-{size >> 30}G" if size >= 1 << 30 else f"tensor-{size}")
    path = os.path.join(folder, "model.safetensors")
    header = json.dumps({"weight": {"dtype": "BF16", "shape": [size // 2], "data_offsets": [0, size]}}).encode()
    header += b" " * (-len(header) % 8)
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            f.truncate(8 + len(header) + size)
    return folder, 8 + len(header)


def trailer(path):
    with open(path, "rb") as f:
        f.seek(-48, os.SEEK_END)
        index_offset, index_length = struct.unpack("<QQ", f.read(16))
    return index_offset, index_length


def table_bytes(path, index_offset):
    """Bytes of frame table pages (v2): from the index rows, by the spec's shape rule."""
    with open(path, "rb") as f:
        f.seek(index_offset)
        head = f.read(16)
        if head[:4] != b"INDX":
            return 0
        count = struct.unpack_from("<Q", head, 8)[0]
        total = 0
        for _ in range(count):
            row = f.read(56)
            frames, t, name_length = struct.unpack_from("<Q", row, 24)[0], row[49], struct.unpack_from("<H", row, 52)[0]
            f.read(name_length)
            below, fanout, level = frames, 1 << t, 0
            while below > 0:
                pages = -(-below // fanout)
                total += below * (8 if level == 0 else 16) + pages * 24
                if pages == 1:
                    break
                below, level = pages, level + 1
        return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", action="append", required=True, help="NAME=PATH of a checkpack binary")
    parser.add_argument("--sizes", default="1G,20G,180G")
    parser.add_argument("--work", default="/tmp/checkpack-scale")
    parser.add_argument("--keep", action="store_true", help="keep the archives")
    args = parser.parse_args()
    builds = [b.split("=", 1) for b in args.build]
    sizes = [size_arg(s) for s in args.sizes.split(",")]
    os.makedirs(args.work, exist_ok=True)
    baseline = {name: run([binary, "--version"])[3] for name, binary in builds}

    rows = []
    for size in sizes:
        folder, data_start = make_tensor_dir(args.work, size)
        for name, binary in builds:
            archive = os.path.join(args.work, f"{name}-{size >> 20}M.ckpk")
            if size <= available_memory() * 0.9:
                # An input that fits in the page cache is read once first, so each build packs from a warm
                # cache (else the second build would find it warm); a larger one is read cold by both.
                subprocess.run(["cat", os.path.join(folder, "model.safetensors")], stdout=subprocess.DEVNULL, check=True)
            code, wall, rss, _, err = run([binary, "pack", folder, archive, "--force", "--quiet"])
            row = {"build": name, "GiB": size / (1 << 30), "pack_s": wall, "pack_GBps": size / wall / 1e9, "pack_rss_MiB": rss}
            if code != 0:
                row["error"] = err.strip().splitlines()[-1] if err.strip() else f"exit {code}"
                rows.append(row)
                print(json.dumps(row), flush=True)
                continue
            index_offset, index_length = trailer(archive)
            row["archive_MB"] = os.path.getsize(archive) / 1e6
            row["index_B"] = index_length
            row["table_B"] = table_bytes(archive, index_offset)
            row["index_overhead_pct"] = 100 * (index_length + row["table_B"]) / size
            code, wall, _, rchar, _ = run([binary, "ls", archive])
            row["open_s"], row["open_B"] = wall, rchar - baseline[name]
            tensor = size  # entry bytes: header then tensor
            for where, offset in [("start", data_start), ("middle", data_start + tensor // 2), ("end", data_start + tensor - 4096)]:
                code, wall, _, rchar, err = run([binary, "cat", archive, "model.safetensors", "--offset", str(offset), "--length", "4096"])
                row[f"read4k_{where}_B"] = rchar - baseline[name] if code == 0 else None
                row[f"read4k_{where}_s"] = wall
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not args.keep:
                os.unlink(archive)

    print()
    header = ["build", "GiB", "pack GB/s", "RSS MiB", "archive MB", "index B", "table MB", "overhead %",
              "open KiB", "open ms", "4K start KiB", "4K mid KiB", "4K end KiB", "4K end ms"]
    print(" | ".join(header))
    for r in rows:
        if "error" in r:
            print(f"{r['build']} | {r['GiB']:.0f} | {r['pack_GBps']:.2f} | {r['pack_rss_MiB']:.0f} | failed after {r['pack_s']:.0f} s: {r['error']}")
            continue
        kib = lambda b: "-" if b is None else f"{b / 1024:.1f}"
        print(" | ".join([r["build"], f"{r['GiB']:.0f}", f"{r['pack_GBps']:.2f}", f"{r['pack_rss_MiB']:.0f}", f"{r['archive_MB']:.1f}",
                          str(r["index_B"]), f"{r['table_B'] / 1e6:.2f}", f"{r['index_overhead_pct']:.3f}",
                          kib(r["open_B"]), f"{r['open_s'] * 1e3:.0f}", kib(r["read4k_start_B"]), kib(r["read4k_middle_B"]),
                          kib(r["read4k_end_B"]), f"{r['read4k_end_s'] * 1e3:.0f}"]))


if __name__ == "__main__":
    sys.exit(main())
