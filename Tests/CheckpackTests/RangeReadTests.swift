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

    @Test func rangesPastTheEndAreRefused() throws {
        let reader = try Self.archive(codec: .zstd)
        let entry = try #require(reader.entry(named: "small"))
        #expect(throws: CheckpackError.self) { try reader.read(entry, offset: 4, count: 0) }
        #expect(throws: CheckpackError.self) { try reader.read(entry, offset: 2, count: 2) }
        #expect(throws: CheckpackError.self) { try reader.read(entry, offset: UInt64.max, count: 1) }
        #expect(throws: CheckpackError.self) { try reader.read(entry, offset: 0, count: -1) }
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
