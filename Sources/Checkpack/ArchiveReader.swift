#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Synchronization

/// Random access to an archive's bytes: a local file, or anything else that
/// can serve reads at an offset (an object store, memory).
public protocol ArchiveSource: Sendable {
    var size: UInt64 { get }
    /// A name for error messages.
    var name: String { get }
    /// Fills `buffer` with the bytes at `offset`, or throws (`truncated` past the end).
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws
}

/// An archive file on disk, read with pread.
public struct FileSource: ArchiveSource {
    let file: SystemFile
    public let size: UInt64
    public var name: String { file.path }

    public init(path: String) throws {
        file = try SystemFile.openForReading(path)
        size = try file.size
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        try file.read(into: buffer, at: offset)
    }
}

/// An archive held in memory.
public struct MemorySource: ArchiveSource {
    public let bytes: [UInt8]
    public var size: UInt64 { UInt64(bytes.count) }
    public var name: String

    public init(_ bytes: [UInt8], name: String = "<memory>") {
        self.bytes = bytes
        self.name = name
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        guard offset <= size, UInt64(buffer.count) <= size - offset else {
            throw CheckpackError(.truncated, "read past the end of the archive", offset: offset)
        }
        bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(offset)..<Int(offset) + buffer.count])) }
    }
}

extension ArchiveSource {
    func read(count: Int, at offset: UInt64) throws -> [UInt8] {
        if count == 0 { return [] }
        return try [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            try read(into: UnsafeMutableRawBufferPointer(buffer), at: offset)
            initialized = count
        }
    }
}

/// Reads an archive through its footer index. Opening costs a bounded read of
/// the file's tail and validates trailer and index completely before any number
/// in them is used. Reads of any byte range decode only the frames they overlap
/// and verify every frame's checksums. Safe to share between threads.
public final class ArchiveReader: Sendable {
    public let source: any ArchiveSource
    public let index: ArchiveIndex
    /// The archive's required feature bits (spec section 10).
    public let requiredFeatures: UInt32
    private let entryNumbers: [String: Int]
    private let decodedFrames = Atomic<Int>(0)
    /// The last frames decoded for partial reads: many small reads near each
    /// other (a zip directory, a header) then decode a frame once, not each time.
    private let recentFrames = Locked<[(number: Int, bytes: [UInt8])]>([])
    static let recentFrameCount = 2

    /// How many bytes of the tail `open` reads first: the trailer and, for most
    /// archives, the whole index.
    static let tailReadSize: UInt64 = 1 << 20

    public convenience init(path: String) throws {
        try self.init(source: FileSource(path: path))
    }

    public init(source: any ArchiveSource) throws {
        self.source = source
        do {
            let size = source.size
            guard size >= Format.minimumArchiveSize else {
                if size >= UInt64(Format.headerSize) {
                    _ = try FileHeader.decode(try source.read(count: Format.headerSize, at: 0)[...])
                }
                throw CheckpackError(.truncated, "\(size) bytes is too short for an archive (at least \(Format.minimumArchiveSize))")
            }
            let header = try FileHeader.decode(try source.read(count: Format.headerSize, at: 0)[...])
            let tailLength = min(size, ArchiveReader.tailReadSize)
            let tail = try source.read(count: Int(tailLength), at: size - tailLength)
            let trailerOffset = size - UInt64(Format.trailerSize)
            let trailer = try Trailer.decode(tail.suffix(Format.trailerSize), base: trailerOffset)
            guard trailer.requiredFeatures == header.requiredFeatures else {
                throw CheckpackError(.corrupt, "trailer and file header name different required features", offset: trailerOffset)
            }
            guard trailer.indexLength <= Format.maxIndexLength else {
                throw CheckpackError(.limitExceeded, "index length \(trailer.indexLength) exceeds \(Format.maxIndexLength)", offset: trailerOffset)
            }
            guard trailer.indexOffset >= UInt64(Format.headerSize), trailer.indexLength >= UInt64(Format.indexHeaderSize),
                  try trailer.indexOffset.adding(trailer.indexLength, "index end") == trailerOffset else {
                throw CheckpackError(.corrupt, "index at \(trailer.indexOffset) with length \(trailer.indexLength) does not end where the trailer starts (\(trailerOffset))", offset: trailerOffset)
            }
            let indexBytes: [UInt8]
            if trailer.indexOffset >= size - tailLength {
                let start = Int(trailer.indexOffset - (size - tailLength))
                indexBytes = Array(tail[start..<start + Int(trailer.indexLength)])
            } else {
                indexBytes = try source.read(count: Int(trailer.indexLength), at: trailer.indexOffset)
            }
            guard CRC32C.checksum(indexBytes) == trailer.indexCRC else {
                throw CheckpackError(.checksumMismatch, "index CRC32C mismatch", offset: trailer.indexOffset)
            }
            index = try ArchiveIndex.parse(indexBytes, indexOffset: trailer.indexOffset)
            requiredFeatures = trailer.requiredFeatures
            if trailer.requiredFeatures & Format.bytePlanesFeature == 0,
               let frame = index.frames.first(where: { $0.header.transform == BytePlanes.transformID }) {
                throw CheckpackError(.corrupt, "a frame uses the byte-plane transform but the archive does not declare required feature bit 0",
                                     offset: frame.archiveOffset)
            }
            var numbers: [String: Int] = [:]
            numbers.reserveCapacity(index.entries.count)
            for (number, entry) in index.entries.enumerated() { numbers[entry.name] = number }
            entryNumbers = numbers
        } catch {
            throw error.checkpackContext(path: source.name)
        }
    }

    public var entries: [ArchiveEntry] { index.entries }

    public func entry(named name: String) -> ArchiveEntry? {
        entryNumbers[name].map { index.entries[$0] }
    }

    /// Frames decoded by this reader so far (stored frames count too).
    public var framesDecoded: Int { decodedFrames.load(ordering: .relaxed) }

    public func frames(of entry: ArchiveEntry) -> ArraySlice<FrameLocation> { index.frames[entry.frames] }

    // MARK: Range reads

    /// Reads `count` bytes of `entry` starting at `offset`.
    public func read(_ entry: ArchiveEntry, offset: UInt64 = 0, count: Int? = nil) throws -> [UInt8] {
        guard offset <= entry.size else {
            throw CheckpackError(.invalidArgument, "offset \(offset) is past the end (\(entry.size) bytes)", path: source.name, entry: entry.name)
        }
        let available = entry.size - offset
        if let count, count < 0 {
            throw CheckpackError(.invalidArgument, "negative length \(count)", path: source.name, entry: entry.name)
        }
        let length = count.map(UInt64.init) ?? available
        guard length <= available else {
            throw CheckpackError(.invalidArgument, "range \(offset)+\(length) is past the end (\(entry.size) bytes)", path: source.name, entry: entry.name)
        }
        let n = try Int(checked: length, "read length")
        // Zero bytes: no uninitialized-capacity array (it would write to the shared empty array).
        if n == 0 { return [] }
        return try [UInt8](unsafeUninitializedCapacity: n) { buffer, initialized in
            try read(entry, offset: offset, into: UnsafeMutableRawBufferPointer(buffer))
            initialized = n
        }
    }

    /// Fills `buffer` with the entry's bytes at `offset`. Only the frames the
    /// range overlaps are read and decoded; whole frames decode straight into
    /// `buffer`. On error the buffer's contents are unspecified.
    public func read(_ entry: ArchiveEntry, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        let end = offset.addingReportingOverflow(UInt64(buffer.count))
        guard !end.overflow, end.partialValue <= entry.size else {
            throw CheckpackError(.invalidArgument, "range \(offset)+\(buffer.count) is past the end (\(entry.size) bytes)", path: source.name, entry: entry.name)
        }
        guard !buffer.isEmpty else { return }
        var number = firstFrame(of: entry, containing: offset)
        var position = offset
        while position < end.partialValue {
            let frame = index.frames[number]
            let range = frame.entryRange
            let lower = position, upper = min(range.upperBound, end.partialValue)
            let target = UnsafeMutableRawBufferPointer(rebasing: buffer[Int(lower - offset)..<Int(upper - offset)])
            do {
                if lower == range.lowerBound && upper == range.upperBound {
                    try decodeFrame(frame, into: target)
                } else {
                    let whole = try recentlyDecoded(number) ?? remember(number, try decodeFrame(frame))
                    whole.withUnsafeBytes {
                        target.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(lower - range.lowerBound)..<Int(upper - range.lowerBound)]))
                    }
                }
            } catch {
                throw error.checkpackContext(path: source.name, entry: entry.name, frame: number - entry.frames.lowerBound,
                                             offset: frame.archiveOffset)
            }
            position = upper
            number += 1
        }
    }

    private func recentlyDecoded(_ number: Int) -> [UInt8]? {
        recentFrames.withLock { frames in frames.first { $0.number == number }?.bytes }
    }

    private func remember(_ number: Int, _ bytes: [UInt8]) -> [UInt8] {
        recentFrames.withLock { frames in
            frames.removeAll { $0.number == number }
            frames.append((number, bytes))
            if frames.count > ArchiveReader.recentFrameCount { frames.removeFirst() }
        }
        return bytes
    }

    private func firstFrame(of entry: ArchiveEntry, containing offset: UInt64) -> Int {
        var low = entry.frames.lowerBound, high = entry.frames.upperBound - 1
        while low < high {
            let mid = (low + high + 1) / 2
            if index.frames[mid].header.entryOffset <= offset { low = mid } else { high = mid - 1 }
        }
        return low
    }

    /// Decodes one whole frame.
    func decodeFrame(_ frame: FrameLocation) throws -> [UInt8] {
        let n = Int(frame.header.decodedLength)
        return try [UInt8](unsafeUninitializedCapacity: n) { buffer, initialized in
            try decodeFrame(frame, into: UnsafeMutableRawBufferPointer(buffer))
            initialized = n
        }
    }

    /// Reads a frame's header and stored bytes, checks the header against the
    /// index and both checksums, and decodes into `output` (exactly the decoded length).
    func decodeFrame(_ frame: FrameLocation, into output: UnsafeMutableRawBufferPointer) throws {
        let header = frame.header
        let storedLength = Int(header.storedLength)
        if header.codec == .stored {
            // Stored bytes go straight into the caller's buffer.
            let headerBytes = try source.read(count: Format.frameHeaderSize, at: frame.archiveOffset)
            try checkHeader(headerBytes[...], against: header)
            try source.read(into: output, at: frame.payloadOffset)
        } else {
            let bytes = try source.read(count: Format.frameHeaderSize + storedLength, at: frame.archiveOffset)
            try checkHeader(bytes[..<Format.frameHeaderSize], against: header)
            try bytes.withUnsafeBytes { raw in
                let stored = UnsafeRawBufferPointer(rebasing: raw[Format.frameHeaderSize...])
                guard CRC32C.update(0, stored) == header.storedCRC else {
                    throw CheckpackError(.checksumMismatch, "stored bytes CRC32C mismatch")
                }
                try FrameCodec.decode(stored, header: header, into: output)
            }
        }
        decodedFrames.add(1, ordering: .relaxed)
        guard CRC32C.update(0, UnsafeRawBufferPointer(output)) == header.decodedCRC else {
            throw CheckpackError(.checksumMismatch, header.codec == .stored ? "stored bytes CRC32C mismatch" : "decoded bytes CRC32C mismatch")
        }
    }

    private func checkHeader(_ bytes: ArraySlice<UInt8>, against expected: FrameHeader) throws {
        let found = try FrameHeader.decode(bytes)
        guard found == expected else { throw CheckpackError(.corrupt, "frame header differs from its copy in the index") }
    }
}
