// Saves a synthetic checkpoint — RANKS in-process ranks, each holding its row
// shard of a few float32 matrices, about MEGABYTES in all — straight into one
// archive with ArchiveStorageWriter, then loads it back whole and checks it.
// The crash-safety tests kill it mid-save; it is also a small end-to-end example.
//
//   checkpoint-demo ARCHIVE [RANKS] [MEGABYTES]
import Checkpack
import CheckpackStorage
#if canImport(Glibc)
import Glibc
#endif

func complain(_ text: String) {
    var bytes = Array(text.utf8)
    _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
}

let arguments = CommandLine.arguments
guard arguments.count >= 2, let ranks = Int(arguments.count > 2 ? arguments[2] : "2"), ranks >= 1,
      let megabytes = Int(arguments.count > 3 ? arguments[3] : "8"), megabytes >= 1 else {
    complain("usage: checkpoint-demo ARCHIVE [RANKS] [MEGABYTES]\n")
    exit(2)
}
let path = arguments[1]

/// Matrix `k`: 256 columns of float32, enough rows for its share of the size.
func matrix(_ k: Int) throws -> Tensor {
    let rows = max(1, megabytes * (1 << 20) / 4 / 1024 / 4)
    var state = UInt64(k + 1) &* 0x9E37_79B9_7F4A_7C15
    let bytes = (0..<rows * 256 * 4).map { _ -> UInt8 in
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return UInt8(truncatingIfNeeded: state >> 40)   // low-entropy enough to compress a little
    }
    return try Tensor(dtype: .float32, shape: [rows, 256], bytes: bytes)
}

do {
    let matrices = try (0..<4).map(matrix)
    _ = try InProcessGroup.run(worldSize: ranks) { group in
        var state: StateDict = ["step": .bytes(Array("1000".utf8))]
        for (k, m) in matrices.enumerated() {
            state["layer\(k).weight"] = .sharded(try .evenShard(of: m, dimension: 0, rank: group.rank, worldSize: ranks))
        }
        try save(state, checkpointID: path, writer: ArchiveStorageWriter(), collectives: group)
    }
    var whole: StateDict = ["step": .bytes([])]
    for (k, m) in matrices.enumerated() { whole["layer\(k).weight"] = .tensor(.zeros(.float32, m.shape)) }
    let loaded = try load(whole, checkpointID: path, reader: ArchiveStorageReader())
    for (k, m) in matrices.enumerated() where loaded["layer\(k).weight"] != .tensor(m) {
        complain("checkpoint-demo: layer\(k).weight differs after loading\n")
        exit(1)
    }
    print("saved and loaded \(path): \(ranks) ranks, \(matrices.reduce(0) { $0 + $1.bytes.count }) bytes of tensors")
} catch {
    complain("checkpoint-demo: \(error)\n")
    exit(1)
}
