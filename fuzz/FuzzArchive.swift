// libFuzzer harness for the archive readers: open through the index, list,
// range reads, verify, and the front-to-back stream reader. Built and run by
// fuzz/run.sh; any crash, hang, or allocation beyond -rss_limit_mb is a finding.

/// Feeds the input as a pipe would, in uneven pieces.
final class PieceStream: SequentialSource {
    let bytes: [UInt8]
    var position = 0
    var name: String { "<fuzz>" }
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    func readSome(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = min(buffer.count, bytes.count - position, 7919)
        if n > 0 {
            bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[position..<position + n])) }
        }
        position += n
        return n
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzArchive(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let reader = try? ArchiveReader(source: MemorySource(bytes)) {
        for entry in reader.entries {
            _ = try? reader.read(entry)
            if entry.size > 2 {
                _ = try? reader.read(entry, offset: entry.size / 2, count: Int(min(entry.size / 2, 4096)))
            }
        }
        _ = try? reader.verify()
    }
    if let stream = try? ArchiveStreamReader(source: PieceStream(bytes)) {
        while let event = try? stream.next() { _ = event }
    }
    return 0
}
