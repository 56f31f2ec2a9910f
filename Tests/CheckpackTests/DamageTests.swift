import CheckpackTestSupport
import Checkpack
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Damage sweeps: every single-bit change and every truncation of a small
/// archive that uses every record kind, codec and option of the format.
@Suite struct DamageTests {
    static let files: [(String, [UInt8])] = [
        ("stored.bin", sampleBytes(600, seed: 1, compressible: false)),
        ("zstd.bin", sampleBytes(900, seed: 2)),
        ("zlib.bin", sampleBytes(700, seed: 3)),
    ]

    static let archive: [UInt8] = {
        (try? buildArchive(options: WriterOptions(frameSize: 4096)) { writer in
            try writer.addDirectory("dir", mode: 0o750, attributes: ["note": "x"])
            try writer.addFile("dir/" + files[0].0, contents: files[0].1, codec: .stored)
            try writer.addFile("dir/" + files[1].0, contents: files[1].1, attributes: ["dtype": "float32"],
                               itemBoundaries: [300], codec: .zstd)
            try writer.addFile(files[2].0, contents: files[2].1, codec: .zlib)
            try writer.addFile("empty", contents: [UInt8]())
        }) ?? []
    }()

    static func expected(_ name: String) -> [UInt8]? {
        if name == "empty" { return [] }
        return files.first { name.hasSuffix($0.0) }?.1
    }

    @Test func theSampleIsSound() throws {
        let reader = try ArchiveReader(source: MemorySource(Self.archive))
        #expect(reader.entries.count == 5)
        #expect(try reader.verify().isEmpty)
        let codecs = Set(try reader.entries.flatMap { try reader.frames(of: $0) }.map(\.header.codec))
        #expect(codecs == Set(Codec.allCases))
        #expect(try streamContents(MemoryStream(Self.archive)).count == 5)
    }

    @Test func everySingleBitFlipIsDetectedAndNeverReturnedAsData() throws {
        let original = Self.archive
        #expect(original.count > 500)
        var undetected: [String] = []
        var wrongData: [String] = []
        var streamMissed: [String] = []
        let limit = Int(getenv("CHECKPACK_SWEEP_BYTES").flatMap { String(cString: $0) }.flatMap(Int.init) ?? original.count)
        for position in original.indices.prefix(limit) {
            for bit in 0..<8 {
                var damaged = original
                damaged[position] ^= UInt8(1 << bit)
                let label = "byte \(position) bit \(bit)"
                var detected = false
                if let reader = try? ArchiveReader(source: MemorySource(damaged)) {
                    detected = !(try reader.verify().isEmpty)
                    for entry in reader.entries where entry.kind == .file {
                        if let bytes = try? reader.read(entry), bytes != Self.expected(entry.name) {
                            wrongData.append("\(label): \(entry.name)")
                        }
                    }
                } else {
                    detected = true
                }
                if !detected { undetected.append(label) }
                if (try? streamContents(MemoryStream(damaged))) != nil { streamMissed.append(label) }
            }
        }
        #expect(undetected.isEmpty, "verify missed: \(undetected.prefix(20))")
        #expect(wrongData.isEmpty, "wrong bytes returned: \(wrongData.prefix(20))")
        #expect(streamMissed.isEmpty, "stream reader missed: \(streamMissed.prefix(20))")
    }

    @Test func everyTruncationIsRefused() throws {
        let original = Self.archive
        for length in 0..<original.count {
            let prefix = Array(original[..<length])
            #expect(thrownError { try ArchiveReader(source: MemorySource(prefix)) }?.isDataError == true, "length \(length)")
            #expect(thrownError { try streamContents(MemoryStream(prefix)) }?.isDataError == true, "length \(length)")
        }
    }

    @Test func appendedBytesAreRefused() throws {
        let longer = Self.archive + [0]
        #expect(errorKind { try ArchiveReader(source: MemorySource(longer)) } == .notAnArchive)   // no trailer at the end
        #expect(errorKind { try streamContents(MemoryStream(longer)) } == .corrupt)
    }

    @Test func errorsNameTheEntryFrameAndOffset() throws {
        let reader = try ArchiveReader(source: MemorySource(Self.archive))
        let entry = try #require(reader.entry(named: "zlib.bin"))
        let frame = try reader.frames(of: entry).first!
        var damaged = Self.archive
        damaged[Int(frame.archiveOffset) + 45] ^= 0xFF   // inside the stored bytes
        let broken = try ArchiveReader(source: MemorySource(damaged, name: "broken.ckpk"))
        let error = try #require(throws: CheckpackError.self) { try broken.read(try #require(broken.entry(named: "zlib.bin"))) }
        #expect(error.kind == .checksumMismatch)
        #expect(error.description == "broken.ckpk: entry \"zlib.bin\", frame 0, archive offset \(frame.archiveOffset): stored bytes CRC32C mismatch")
        let problems = try broken.verify()
        #expect(problems.count == 1)
        #expect(problems.first?.entry == "zlib.bin")
    }

    @Test func readsFromARealPipe() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let bytes = Self.archive
        let writerFD = fds[1]
        let thread = JoinableThread {
            bytes.withUnsafeBytes { raw in
                var done = 0
                while done < raw.count {
                    let n = write(writerFD, raw.baseAddress! + done, min(100, raw.count - done))
                    if n <= 0 { break }
                    done += n
                }
            }
            close(writerFD)
        }
        thread.start()
        let contents = try streamContents(SystemFile(adopting: fds[0], path: "<pipe>"))
        thread.join()
        #expect(contents["dir/zstd.bin"] == Self.files[1].1)
        #expect(contents.count == 5)
    }
}

