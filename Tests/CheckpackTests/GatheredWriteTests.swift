import CheckpackTestSupport
@testable import Checkpack
import Testing

/// Archives write frames' headers and payloads gathered, one writev or
/// pwritev per flush: every part must land in order, whatever the parts.
@Suite struct GatheredWriteTests {
    /// 3,000 parts (past the 1,024 vectors of one call), some empty.
    static let parts: [[UInt8]] = (0..<3000).map { k in sampleBytes(k % 7 == 0 ? 0 : (k * 37) % 600 + 1, seed: UInt64(k)) }

    @Test func partsLandInOrderAtTheEndAndAtAnOffset() throws {
        let scratch = Scratch()
        let expected = Array(Self.parts.joined())
        try writeFile(scratch.sub("f"), [])
        let file = try SystemFile.openForWriting(scratch.sub("f"))
        try withAddresses(Self.parts) { try file.write(gathering: $0) }
        #expect(readFile(scratch.sub("f")) == expected)
        try withAddresses(Self.parts) { try file.write(gathering: $0, at: 10) }
        #expect(readFile(scratch.sub("f")) == Array(expected.prefix(10)) + expected)
    }

    @Test func anArchiveWrittenByTheBufferedOutputMatchesOneWrittenInMemory() throws {
        let scratch = Scratch()
        let files = (0..<40).map { k in ("f\(k)", sampleBytes(k * 3001 + 1, seed: UInt64(k), compressible: k % 2 == 0)) }
        let memory = MemorySink(name: "memory")
        for sink in [try FileSink(path: scratch.sub("a.ckpk"), overwrite: false) as any ArchiveSink, memory] {
            let writer = try ArchiveWriter(sink: sink, options: WriterOptions(frameSize: 4096))
            for (name, bytes) in files { try writer.addFile(name, contents: bytes) }
            try writer.finish()
        }
        #expect(readFile(scratch.sub("a.ckpk")) == memory.bytes)
        let reader = try ArchiveReader(path: scratch.sub("a.ckpk"))
        for (name, bytes) in files { #expect(try reader.read(try #require(reader.entry(named: name))) == bytes) }
    }

    private func withAddresses(_ parts: [[UInt8]], _ body: ([UnsafeRawBufferPointer]) throws -> Void) throws {
        var addresses: [UnsafeRawBufferPointer] = []
        func next(_ rest: ArraySlice<[UInt8]>) throws {
            guard let first = rest.first else { return try body(addresses) }
            try first.withUnsafeBytes { addresses.append($0); try next(rest.dropFirst()) }
        }
        try next(parts[...])
    }
}
