import CSystemShims
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

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

    /// Copies `range` of `source` to the end of the output, in the kernel
    /// where both are local files (copy_file_range), else by reading and writing.
    mutating func copy(from source: any ArchiveSource, range: Range<UInt64>) throws {
        try flush()
        var position = range.lowerBound
        var kernel = ((source as? FileSource)?.file, (sink as? FileSink)?.file)
        while position < range.upperBound {
            let want = Int(min(range.upperBound - position, 1 << 30))
            if case (let input?, let output?) = kernel {
                let n = ckpk_copy_file_range(input.descriptor, Int64(position), output.descriptor, want)
                if n > 0 {
                    position += UInt64(n)
                    continue
                }
                if n == 0 { throw CheckpackError(.truncated, "source ends early", path: input.path) }
                if errno == EINTR { continue }
                kernel = (nil, nil)   // not supported here: copy through memory
            }
            let chunk = try source.read(count: min(want, 4 << 20), at: position)
            try chunk.withUnsafeBytes { try sink.write($0) }
            position += UInt64(chunk.count)
        }
        offset += range.upperBound - range.lowerBound
    }

    mutating func flush() throws {
        guard !buffer.isEmpty else { return }
        try buffer.withUnsafeBytes { try sink.write($0) }
        buffer.removeAll(keepingCapacity: true)
    }
}
