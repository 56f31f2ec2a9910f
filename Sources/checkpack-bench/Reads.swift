// Range reads, decode speed and full loads, on real weights converted to
// bfloat16, with and without byte planes.
import Checkpack
import CheckpackStorage
import CheckpackTorch
import Foundation

/// Real weights: every float32 tensor of a safetensors file, as bfloat16
/// (round to nearest even), by name and shape.
struct Weights {
    var tensors: [(name: String, shape: [Int], bf16: [UInt8])] = []

    init(safetensors path: String) throws {
        let file = try SystemFile.openForReading(path)
        let header = try SafetensorsHeader.parse({ try file.read(count: $1, at: $0) }, fileSize: try file.size, name: path)
        for t in header.tensors where t.dtype == .float32 {
            let raw = try file.read(count: t.range.count, at: header.dataStart + t.range.lowerBound)
            var out = [UInt8](repeating: 0, count: raw.count / 2)
            raw.withUnsafeBytes { src in
                for i in 0..<raw.count / 4 {
                    let bits = src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)
                    let rounded = (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16
                    out[2 * i] = UInt8(truncatingIfNeeded: rounded)
                    out[2 * i + 1] = UInt8(truncatingIfNeeded: rounded >> 8)
                }
            }
            tensors.append((t.name, t.shape, out))
        }
        guard !tensors.isEmpty else { throw BenchError("\(path): no float32 tensors") }
    }

    var all: [UInt8] { tensors.flatMap(\.bf16) }
}

struct ReadResult {
    var label: String
    var bigRead: Double, smallRead: Double   // seconds per 4 KiB read
    var decodeBytesPerSecond: Double
    var bigEntrySize: UInt64, smallEntrySize: UInt64
}

/// One archive: a ~100 MB entry (the weights repeated) and 64 small entries
/// of 26 KB each, all tagged bfloat16; 4 KiB reads at random places.
func measureReads(_ weights: Weights, work: String, planes: Bool, label: String, reads: Int) throws -> ReadResult {
    let all = weights.all
    var big: [UInt8] = []
    big.reserveCapacity(100_000_000)
    while big.count < 100_000_000 { big += all.prefix(100_000_000 - big.count) }
    let path = work + "/reads-\(planes ? "planes" : "plain").ckpk"
    var options = WriterOptions(overwrite: true)
    options.bytePlanes = planes
    let writer = try ArchiveWriter(path: path, options: options)
    let tag = [Format.itemDTypesKey: "bfloat16"], bf16 = [DType.bfloat16.planeElement]
    try writer.addFile("big", contents: big, attributes: tag, itemTypes: bf16)
    let smallSize = 26_000
    for k in 0..<64 {
        let start = (all.count / 64) * k
        try writer.addFile("small/\(k)", contents: all[start..<start + smallSize], attributes: tag, itemTypes: bf16)
    }
    try writer.finish()
    big = []

    let reader = try ArchiveReader(path: path)
    guard let bigEntry = reader.entry(named: "big") else { throw BenchError("no big entry") }
    let smalls = (0..<64).compactMap { reader.entry(named: "small/\($0)") }
    var rng = SystemRandomNumberGenerator()
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 64)
    defer { buffer.deallocate() }
    // Alternate the two kinds so that both see the same machine state.
    var bigTimes: [Double] = [], smallTimes: [Double] = []
    for _ in 0..<reads {
        let offset = UInt64.random(in: 0...(bigEntry.size - 4096), using: &rng)
        var t = now()
        try reader.read(bigEntry, offset: offset, into: buffer)
        bigTimes.append(now() - t)
        let small = smalls[Int.random(in: 0..<smalls.count, using: &rng)]
        let smallOffset = UInt64.random(in: 0...(small.size - 4096), using: &rng)
        t = now()
        try reader.read(small, offset: smallOffset, into: buffer)
        smallTimes.append(now() - t)
    }
    // Decode speed: every frame of the big entry, one at a time, on this thread.
    let frameBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Format.maxFrameSize, alignment: 64)
    defer { frameBuffer.deallocate() }
    let frames = try reader.frameExtents(of: bigEntry)
    let start = now()
    for frame in frames {
        try reader.read(bigEntry, offset: frame.entryRange.lowerBound,
                        into: UnsafeMutableRawBufferPointer(rebasing: frameBuffer[..<frame.entryRange.count]))
    }
    let decode = Double(bigEntry.size) / (now() - start)
    return ReadResult(label: label, bigRead: median(bigTimes), smallRead: median(smallTimes),
                      decodeBytesPerSecond: decode, bigEntrySize: bigEntry.size, smallEntrySize: UInt64(smallSize))
}

func readTable(_ results: [ReadResult], reads: Int) -> String {
    var table = Table(header: ["4 KiB range read (median of \(reads))", "100 MB entry µs", "26 KB entry µs", "ratio", "decode GB/s/core"])
    for r in results {
        table.rows.append([r.label, f(r.bigRead * 1e6, 1), f(r.smallRead * 1e6, 1), f(r.bigRead / r.smallRead, 2),
                           f(r.decodeBytesPerSecond / 1e9, 2)])
    }
    return table.render()
}

/// The weights as a bfloat16 state dict saved by both storage backends,
/// then loaded whole through each, alternately.
func compareLoads(_ weights: Weights, work: String, rounds: Int) throws -> String {
    var state: StateDict = [:]
    for t in weights.tensors { state[t.name] = .tensor(try Tensor(dtype: .bfloat16, shape: t.shape, bytes: t.bf16)) }
    let directory = work + "/load-dir", archive = work + "/load.ckpk"
    try? FileManager.default.removeItem(atPath: directory)
    try save(state, checkpointID: directory, writer: FileSystemStorageWriter())
    try save(state, checkpointID: archive, writer: ArchiveStorageWriter())
    var empty: StateDict = [:]
    for t in weights.tensors { empty[t.name] = .tensor(.zeros(.bfloat16, t.shape)) }
    var fromDirectory: [Double] = [], fromArchive: [Double] = []
    for _ in 0..<rounds {
        var t = now()
        let a = try load(empty, checkpointID: directory, reader: FileSystemStorageReader())
        fromDirectory.append(now() - t)
        t = now()
        let b = try load(empty, checkpointID: archive, reader: ArchiveStorageReader())
        fromArchive.append(now() - t)
        guard a == state, b == state else { throw BenchError("a load returned different tensors") }
    }
    var table = Table(header: ["full load, bf16 MiniLM (median of \(rounds))", "size MB", "load ms", "ratio"])
    let dirSize = treeSize(directory), archiveSize = fileSize(archive)
    table.rows.append(["FileSystemStorageReader (directory)", mb(dirSize), f(median(fromDirectory) * 1e3, 1), "1.000"])
    table.rows.append(["ArchiveStorageReader (archive)", mb(archiveSize), f(median(fromArchive) * 1e3, 1),
                       f(median(fromArchive) / median(fromDirectory))])
    return table.render()
}
