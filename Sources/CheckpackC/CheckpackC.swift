// A C ABI over the archive reader, for the Python adapter (python/checkpack),
// built as the shared library product CheckpackC (libCheckpackC.so).
// Functions that can fail return NULL or -1 and write a one-line message
// (NUL-terminated, truncated to fit) into the caller's `message` buffer.
import Checkpack

/// What the C side holds for an open archive.
final class ReaderHandle {
    let reader: ArchiveReader
    init(_ reader: ArchiveReader) { self.reader = reader }
}

private func report(_ error: any Error, into message: UnsafeMutablePointer<CChar>?, capacity: Int) {
    guard let message, capacity > 0 else { return }
    let bytes = Array(String(describing: error).utf8.prefix(capacity - 1))
    for (i, byte) in bytes.enumerated() { message[i] = CChar(bitPattern: byte) }
    message[bytes.count] = 0
}

private func reader(_ handle: UnsafeMutableRawPointer) -> ArchiveReader {
    Unmanaged<ReaderHandle>.fromOpaque(handle).takeUnretainedValue().reader
}

/// Opens an archive, checking its trailer and index. NULL on failure.
@_cdecl("ckpk_reader_open")
public func ckpk_reader_open(_ path: UnsafePointer<CChar>, _ message: UnsafeMutablePointer<CChar>?,
                             _ capacity: Int) -> UnsafeMutableRawPointer? {
    do {
        let opened = try ArchiveReader(path: String(cString: path))
        return Unmanaged.passRetained(ReaderHandle(opened)).toOpaque()
    } catch {
        report(error, into: message, capacity: capacity)
        return nil
    }
}

@_cdecl("ckpk_reader_close")
public func ckpk_reader_close(_ handle: UnsafeMutableRawPointer) {
    Unmanaged<ReaderHandle>.fromOpaque(handle).release()
}

/// The size of a file entry, or -1 when the archive has no file of that name.
@_cdecl("ckpk_reader_entry_size")
public func ckpk_reader_entry_size(_ handle: UnsafeMutableRawPointer, _ name: UnsafePointer<CChar>) -> Int64 {
    guard let entry = reader(handle).entry(named: String(cString: name)), entry.kind == .file else { return -1 }
    return Int64(entry.size)
}

/// Reads `length` bytes of entry `name` at `offset` into `destination`,
/// decoding only the frames they overlap. 0 on success, -1 on failure.
@_cdecl("ckpk_reader_read")
public func ckpk_reader_read(_ handle: UnsafeMutableRawPointer, _ name: UnsafePointer<CChar>, _ offset: UInt64,
                             _ length: UInt64, _ destination: UnsafeMutableRawPointer?,
                             _ message: UnsafeMutablePointer<CChar>?, _ capacity: Int) -> Int32 {
    let archive = reader(handle)
    let entryName = String(cString: name)
    do {
        guard let entry = archive.entry(named: entryName), entry.kind == .file else {
            throw CheckpackError(.notFound, "no file entry \"\(entryName)\"", path: archive.source.name)
        }
        guard length <= UInt64(Int.max), length == 0 || destination != nil else {
            throw CheckpackError(.invalidArgument, "bad destination for \(length) bytes", path: archive.source.name)
        }
        if length > 0, let destination {
            try archive.read(entry, offset: offset, into: UnsafeMutableRawBufferPointer(start: destination, count: Int(length)))
        }
        return 0
    } catch {
        report(error, into: message, capacity: capacity)
        return -1
    }
}

/// Frames this reader has decoded so far (tests use it to show a partial read stays partial).
@_cdecl("ckpk_reader_frames_decoded")
public func ckpk_reader_frames_decoded(_ handle: UnsafeMutableRawPointer) -> UInt64 {
    UInt64(reader(handle).framesDecoded)
}
