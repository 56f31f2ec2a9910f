/// Sequential writes, gathered into few system calls. Frames' headers and
/// payloads are held as they are until a flush writes them all at once (a
/// file: one writev), so the bytes are never copied together first; the
/// small records between them are.
struct BufferedOutput {
    let sink: any ArchiveSink
    /// The sink, when it takes all the parts of a flush in one call.
    private let gathering: (any GatheringSink)?
    private(set) var offset: UInt64 = 0
    /// What waits to be written, in order.
    private var held: [ArraySlice<UInt8>] = []
    private var heldBytes = 0
    /// Small records after the last part held, copied together.
    private var staged: [UInt8] = []
    /// A flush comes after this many bytes, or this many parts.
    private let capacity = 1 << 20
    private let maxParts = 256

    init(sink: any ArchiveSink) {
        self.sink = sink
        gathering = sink as? any GatheringSink
    }

    /// Writes `bytes`, copied (they are the caller's).
    mutating func write<C: ContiguousCollection>(_ bytes: C) throws {
        if bytes.count >= capacity / 4 {
            try flush()   // keep the order: what waits goes first
            try bytes.withUnsafeBytes { try sink.write($0) }
        } else {
            staged.append(contentsOf: bytes)
            heldBytes += bytes.count
        }
        offset += UInt64(bytes.count)
        if heldBytes >= capacity { try flush() }
    }

    /// Writes `bytes`, held until the next flush rather than copied.
    mutating func write(holding bytes: ArraySlice<UInt8>) throws {
        holdStaged()
        held.append(bytes)
        heldBytes += bytes.count
        offset += UInt64(bytes.count)
        if heldBytes >= capacity || held.count >= maxParts { try flush() }
    }

    mutating func flush() throws {
        holdStaged()
        if let gathering {
            var parts: [UnsafeRawBufferPointer] = []
            parts.reserveCapacity(held.count)
            try BufferedOutput.withAddresses(of: held[...], into: &parts) { try gathering.write(gathering: $0) }
        } else {
            for chunk in held { try chunk.withUnsafeBytes { try sink.write($0) } }
        }
        held.removeAll(keepingCapacity: true)
        heldBytes = 0
    }

    /// The small records copied so far become a part of their own, before what is held next.
    private mutating func holdStaged() {
        guard !staged.isEmpty else { return }
        held.append(staged[...])
        staged = []
    }

    /// Calls `body` with the addresses of all of `chunks`' bytes, each valid for the call.
    private static func withAddresses(of chunks: ArraySlice<ArraySlice<UInt8>>, into parts: inout [UnsafeRawBufferPointer],
                                      _ body: ([UnsafeRawBufferPointer]) throws -> Void) throws {
        guard let first = chunks.first else { return try body(parts) }
        try first.withUnsafeBytes { bytes in
            parts.append(bytes)
            try withAddresses(of: chunks.dropFirst(), into: &parts, body)
        }
    }
}
