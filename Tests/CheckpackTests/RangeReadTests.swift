import CheckpackTestSupport
import Checkpack
import Testing

@Suite struct RangeReadTests {
    static let frame = 4096
    static let content = sampleBytes(7 * frame + 123, seed: 11)

    static func archive(codec: Codec) throws -> ArchiveReader {
        let bytes = try buildArchive(options: WriterOptions(codec: codec, frameSize: frame)) { writer in
            try writer.addFile("small", contents: [1, 2, 3])
            try writer.addFile("big", contents: content)
        }
        return try ArchiveReader(source: MemorySource(bytes))
    }

    @Test(arguments: Codec.allCases)
    func rangesAtAndAroundEveryFrameEdge(codec: Codec) throws {
        let reader = try Self.archive(codec: codec)
        let entry = try #require(reader.entry(named: "big"))
        let size = Self.content.count
        var starts: Set<Int> = [0, size - 1, size]
        for edge in stride(from: 0, through: size, by: Self.frame) {
            for delta in -2...2 where (0...size).contains(edge + delta) { starts.insert(edge + delta) }
        }
        for start in starts.sorted() {
            for length in [0, 1, 2, Self.frame - 1, Self.frame, Self.frame + 1, 2 * Self.frame + 5, size - start]
            where start + length <= size && length >= 0 {
                let got = try reader.read(entry, offset: UInt64(start), count: length)
                #expect(got[...] == Self.content[start..<start + length], "start \(start) length \(length)")
            }
        }
    }

    @Test func aReadDecodesOnlyTheFramesItTouches() throws {
        let reader = try Self.archive(codec: .zstd)
        let entry = try #require(reader.entry(named: "big"))
        var before = reader.framesDecoded
        _ = try reader.read(entry, offset: UInt64(3 * Self.frame + 10), count: 100)
        #expect(reader.framesDecoded - before == 1)
        before = reader.framesDecoded
        _ = try reader.read(entry, offset: UInt64(2 * Self.frame - 1), count: 2)   // frames 1 and 2, neither cached
        #expect(reader.framesDecoded - before == 2)
        before = reader.framesDecoded
        _ = try reader.read(entry, offset: UInt64(Self.frame), count: 3 * Self.frame)
        #expect(reader.framesDecoded - before == 3)
        before = reader.framesDecoded
        _ = try reader.read(entry, offset: 5, count: 0)
        #expect(reader.framesDecoded == before)
        // Small reads inside one frame decode it once.
        before = reader.framesDecoded
        for i in 0..<10 { _ = try reader.read(entry, offset: UInt64(5 * Self.frame + 100 * i), count: 50) }
        #expect(reader.framesDecoded - before == 1)
    }

    /// A batch read gives what single reads give, whatever the ranges: the same
    /// frame wanted twice, overlapping ranges, whole entries (content CRC checked),
    /// out of order, and with a source that merges reads and runs them concurrently.
    @Test(arguments: [ReadPlan.local, ReadPlan(mergeGap: 1 << 20, maxReadSize: 3 * 4096, concurrency: 4, readsHeaderAtOpen: false)])
    func batchReadsMatchSingleReads(plan: ReadPlan) throws {
        let bytes = try buildArchive(options: WriterOptions(codec: .zstd, frameSize: Self.frame)) { writer in
            try writer.addFile("small", contents: [1, 2, 3])
            try writer.addFile("big", contents: Self.content)
        }
        let reader = try ArchiveReader(source: PlannedSource(MemorySource(bytes), plan: plan))
        let big = try #require(reader.entry(named: "big")), small = try #require(reader.entry(named: "small"))
        let wanted: [(ArchiveEntry, Int, Int)] = [(big, 5000, 100), (small, 0, 3), (big, 5050, 9000), (big, 0, Self.content.count),
                                                  (big, 20_000, 1), (big, 4096, 4096), (small, 1, 1)]
        let buffers = wanted.map { UnsafeMutableRawBufferPointer.allocate(byteCount: $0.2, alignment: 1) }
        defer { for buffer in buffers { buffer.deallocate() } }
        try reader.read(zip(wanted, buffers).map { .init(entry: $0.0.0, offset: UInt64($0.0.1), buffer: $0.1) })
        for ((entry, offset, count), got) in zip(wanted, buffers) {
            #expect(Array(got) == (try reader.read(entry, offset: UInt64(offset), count: count)), "\(entry.name) \(offset)+\(count)")
        }
    }

    @Test func rangesPastTheEndAreRefused() throws {
        let reader = try Self.archive(codec: .zstd)
        let entry = try #require(reader.entry(named: "small"))
        #expect(errorKind { try reader.read(entry, offset: 4, count: 0) } == .invalidArgument)
        #expect(errorKind { try reader.read(entry, offset: 2, count: 2) } == .invalidArgument)
        #expect(errorKind { try reader.read(entry, offset: UInt64.max, count: 1) } == .invalidArgument)
        #expect(errorKind { try reader.read(entry, offset: 0, count: -1) } == .invalidArgument)
        #expect(try reader.read(entry, offset: 3, count: 0) == [])
    }

    @Test func concurrentReadersGetTheRightBytes() async throws {
        let reader = try Self.archive(codec: .zstd)
        let entry = try #require(reader.entry(named: "big"))
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for task in 0..<16 {
                group.addTask {
                    var rng = SplitMix(seed: UInt64(task))
                    for _ in 0..<50 {
                        let start = Int.random(in: 0..<Self.content.count, using: &rng)
                        let length = Int.random(in: 0...(Self.content.count - start), using: &rng)
                        let got = try reader.read(entry, offset: UInt64(start), count: length)
                        if got[...] != Self.content[start..<start + length] { return false }
                    }
                    return true
                }
            }
            for try await ok in group { #expect(ok) }
        }
    }
}

/// Another source's bytes, read as `plan` says (to run the merged, concurrent path on memory).
struct PlannedSource: ArchiveSource {
    let inner: MemorySource
    let readPlan: ReadPlan
    init(_ inner: MemorySource, plan: ReadPlan) { self.inner = inner; readPlan = plan }
    var size: UInt64 { inner.size }
    var name: String { inner.name }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws { try inner.read(into: buffer, at: offset) }
}

