/// Sequential writes with a buffer for the small records between frames.
struct BufferedOutput {
    let sink: any ArchiveSink
    private(set) var offset: UInt64 = 0
    private var buffer: [UInt8] = []
    private let capacity = 1 << 20

    init(sink: any ArchiveSink) {
        self.sink = sink
        buffer.reserveCapacity(capacity)
    }

    mutating func write<C: ContiguousCollection>(_ bytes: C) throws {
        if bytes.count >= capacity / 4 {
            try flush()   // keep the order: buffered bytes go first
            try bytes.withUnsafeBytes { try sink.write($0) }
        } else {
            if buffer.count + bytes.count > capacity { try flush() }
            buffer.append(contentsOf: bytes)
        }
        offset += UInt64(bytes.count)
    }

    mutating func flush() throws {
        guard !buffer.isEmpty else { return }
        try buffer.withUnsafeBytes { try sink.write($0) }
        buffer.removeAll(keepingCapacity: true)
    }
}
