// A C ABI over the archive reader, for the Python adapter (python/checkpack),
// built as the shared library product CheckpackC (libCheckpackC.so).
// Functions that can fail return NULL or -1 and write a one-line message
// (NUL-terminated, truncated to fit) into the caller's `message` buffer.
import Checkpack
import CheckpackRemote
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// What the C side holds for an open archive.
final class ReaderHandle {
    let reader: ArchiveReader
    init(_ reader: ArchiveReader) { self.reader = reader }
}

/// Writes `error` for the Python side: fields separated by U+001F — kind
/// (data, notFound, exists, invalid, io, remote, other), errno or HTTP status,
/// entry, frame, archive offset — then the one-line message.
private func report(_ error: any Error, into message: UnsafeMutablePointer<CChar>?, capacity: Int) {
    guard let message, capacity > 0 else { return }
    var fields = ["other", "", "", "", ""]
    if let error = error as? CheckpackError {
        switch error.kind {
        case _ where error.isDataError: fields[0] = "data"
        case .notFound: fields[0] = "notFound"
        case .alreadyExists: fields[0] = "exists"
        case .invalidArgument: fields[0] = "invalid"
        case .io(let code): fields[0] = "io"; fields[1] = String(code)
        case .remote(let status): fields[0] = "remote"; fields[1] = String(status)
        default: break
        }
        fields[2] = error.entry ?? ""
        fields[3] = error.frame.map(String.init) ?? ""
        fields[4] = error.offset.map(String.init) ?? ""
    }
    let text = (fields + [String(describing: error)]).joined(separator: "\u{1F}")
    let bytes = Array(text.utf8.prefix(capacity - 1))
    for (i, byte) in bytes.enumerated() { message[i] = CChar(bitPattern: byte) }
    message[bytes.count] = 0
}

private func reader(_ handle: UnsafeMutableRawPointer) -> ArchiveReader {
    Unmanaged<ReaderHandle>.fromOpaque(handle).takeUnretainedValue().reader
}

/// Opens an archive — a path, an http(s):// or an s3://bucket/key URL (S3
/// settings from the AWS_* environment variables) — checking its trailer and
/// index. NULL on failure.
@_cdecl("ckpk_reader_open")
public func ckpk_reader_open(_ path: UnsafePointer<CChar>, _ message: UnsafeMutablePointer<CChar>?,
                             _ capacity: Int) -> UnsafeMutableRawPointer? {
    do {
        let opened = try ArchiveReader(location: String(cString: path))
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

/// Reads `count` ranges at once: range i is `lengths[i]` bytes of entry
/// `names[i]` at `offsets[i]`, into `destinations[i]`. Their frames are planned
/// together, so ranges close in the archive share a read (one request from a
/// remote archive) and reads run concurrently. 0 on success, -1 on failure.
@_cdecl("ckpk_reader_read_many")
public func ckpk_reader_read_many(_ handle: UnsafeMutableRawPointer, _ count: Int,
                                  _ names: UnsafePointer<UnsafePointer<CChar>?>?, _ offsets: UnsafePointer<UInt64>?,
                                  _ lengths: UnsafePointer<UInt64>?, _ destinations: UnsafePointer<UnsafeMutableRawPointer?>?,
                                  _ message: UnsafeMutablePointer<CChar>?, _ capacity: Int) -> Int32 {
    let archive = reader(handle)
    do {
        guard count >= 0, count == 0 || (names != nil && offsets != nil && lengths != nil && destinations != nil) else {
            throw CheckpackError(.invalidArgument, "bad arguments for \(count) ranges", path: archive.source.name)
        }
        var ranges: [ArchiveReader.RangeRead] = []
        for i in 0..<count {
            guard let namePointer = names?[i] else { throw CheckpackError(.invalidArgument, "range \(i) has no entry name") }
            let name = String(cString: namePointer)
            guard let entry = archive.entry(named: name), entry.kind == .file else {
                throw CheckpackError(.notFound, "no file entry \"\(name)\"", path: archive.source.name)
            }
            let length = lengths?[i] ?? 0
            guard length <= UInt64(Int.max), length == 0 || destinations?[i] != nil else {
                throw CheckpackError(.invalidArgument, "bad destination for \(length) bytes", path: archive.source.name)
            }
            if length > 0, let destination = destinations?[i] {
                ranges.append(.init(entry: entry, offset: offsets?[i] ?? 0, buffer: UnsafeMutableRawBufferPointer(start: destination, count: Int(length))))
            }
        }
        try archive.read(ranges)
        return 0
    } catch {
        report(error, into: message, capacity: capacity)
        return -1
    }
}

/// Removes the temporary files of archives this process is still writing and
/// aborts the uploads it started (what the CLI does on a signal); for a signal
/// handler of the host process, right before it exits.
@_cdecl("ckpk_remove_temporaries")
public func ckpk_remove_temporaries() {
    Interruption.removeTracked()
}

/// Frames this reader has decoded so far (tests use it to show a partial read stays partial).
@_cdecl("ckpk_reader_frames_decoded")
public func ckpk_reader_frames_decoded(_ handle: UnsafeMutableRawPointer) -> UInt64 {
    UInt64(reader(handle).framesDecoded)
}

// MARK: - Writing

/// What the C side holds for an archive being written.
final class WriterHandle {
    let writer: ArchiveWriter
    /// For a rank's segment of a shared archive: the sink `finish_segment` finishes.
    let segment: (any SegmentSink)?
    init(_ writer: ArchiveWriter, segment: (any SegmentSink)? = nil) { (self.writer, self.segment) = (writer, segment) }
}

private func writer(_ handle: UnsafeMutableRawPointer) -> ArchiveWriter {
    Unmanaged<WriterHandle>.fromOpaque(handle).takeUnretainedValue().writer
}

/// Runs `body`, turning a thrown error into -1 and a message.
private func status(_ message: UnsafeMutablePointer<CChar>?, _ capacity: Int, _ body: () throws -> Void) -> Int32 {
    do {
        try body()
        return 0
    } catch {
        report(error, into: message, capacity: capacity)
        return -1
    }
}

/// Starts an archive at `path`: a local path (built beside it, renamed into
/// place by `ckpk_writer_finish`; an existing file is replaced) or
/// s3://bucket/key (one multipart upload, completed by `ckpk_writer_finish`;
/// S3 settings from the AWS_* environment). `codec` is "zstd", "zlib" or
/// "none"; `level` below -100 means the codec's default; `frame_size` and
/// `threads` of 0 mean the defaults; `size_hint`, when
/// not 0, is about how many bytes will be written (it sizes S3 parts so that
/// 10,000 suffice). NULL on failure.
@_cdecl("ckpk_writer_open")
public func ckpk_writer_open(_ path: UnsafePointer<CChar>, _ codec: UnsafePointer<CChar>, _ level: Int32,
                             _ frameSize: Int64, _ threads: Int32, _ sizeHint: UInt64,
                             _ message: UnsafeMutablePointer<CChar>?, _ capacity: Int) -> UnsafeMutableRawPointer? {
    do {
        let options = try options(codec: codec, level: level, frameSize: frameSize, threads: threads)
        let opened: ArchiveWriter
        switch try ArchiveLocation(String(cString: path)) {
        case .file(let path):
            opened = try ArchiveWriter(path: path, options: options)
        case let location:
            let partSize = S3MultipartSink.partSize(forAbout: sizeHint, atLeast: S3MultipartSink.defaultPartSize)
            opened = try ArchiveWriter(sink: location.openSink(overwrite: true, partSize: partSize), options: options)
        }
        return Unmanaged.passRetained(WriterHandle(opened)).toOpaque()
    } catch {
        report(error, into: message, capacity: capacity)
        return nil
    }
}

@_cdecl("ckpk_writer_begin_file")
public func ckpk_writer_begin_file(_ handle: UnsafeMutableRawPointer, _ name: UnsafePointer<CChar>,
                                   _ message: UnsafeMutablePointer<CChar>?, _ capacity: Int) -> Int32 {
    status(message, capacity) { try writer(handle).beginFile(String(cString: name)) }
}

@_cdecl("ckpk_writer_write")
public func ckpk_writer_write(_ handle: UnsafeMutableRawPointer, _ data: UnsafeRawPointer?, _ length: UInt64,
                              _ message: UnsafeMutablePointer<CChar>?, _ capacity: Int) -> Int32 {
    status(message, capacity) {
        guard length <= UInt64(Int.max), length == 0 || data != nil else { throw CheckpackError(.invalidArgument, "bad buffer") }
        if length > 0 { try writer(handle).write(UnsafeRawBufferPointer(start: data, count: Int(length))) }
    }
}

/// The next byte written starts a new item (and frame).
@_cdecl("ckpk_writer_mark_item")
public func ckpk_writer_mark_item(_ handle: UnsafeMutableRawPointer, _ message: UnsafeMutablePointer<CChar>?, _ capacity: Int) -> Int32 {
    status(message, capacity) { try writer(handle).markItemBoundary() }
}

/// The next byte written starts a new item of elements of `elementSize` bytes,
/// IEEE-style floats when `isFloat` is nonzero (a complex number's element is
/// one of its two floats): its frames go into byte planes. Sizes other than
/// 2, 4 and 8 start a plain item.
@_cdecl("ckpk_writer_mark_typed_item")
public func ckpk_writer_mark_typed_item(_ handle: UnsafeMutableRawPointer, _ elementSize: Int32, _ isFloat: Int32,
                                        _ message: UnsafeMutablePointer<CChar>?, _ capacity: Int) -> Int32 {
    status(message, capacity) {
        try writer(handle).markItemBoundary(elementType: ElementType(size: Int(elementSize), isFloat: isFloat != 0))
    }
}

@_cdecl("ckpk_writer_end_file")
public func ckpk_writer_end_file(_ handle: UnsafeMutableRawPointer, _ message: UnsafeMutablePointer<CChar>?, _ capacity: Int) -> Int32 {
    status(message, capacity) { try writer(handle).endFile() }
}

/// Adds a whole file from memory.
@_cdecl("ckpk_writer_add_file")
public func ckpk_writer_add_file(_ handle: UnsafeMutableRawPointer, _ name: UnsafePointer<CChar>, _ data: UnsafeRawPointer?,
                                 _ length: UInt64, _ message: UnsafeMutablePointer<CChar>?, _ capacity: Int) -> Int32 {
    status(message, capacity) {
        guard length <= UInt64(Int.max), length == 0 || data != nil else { throw CheckpackError(.invalidArgument, "bad buffer") }
        let bytes = length == 0 ? [] : Array(UnsafeRawBufferPointer(start: data, count: Int(length)))
        try writer(handle).addFile(String(cString: name), contents: bytes)
    }
}

/// Writes index and trailer, syncs, renames into place, and releases the handle.
@_cdecl("ckpk_writer_finish")
public func ckpk_writer_finish(_ handle: UnsafeMutableRawPointer, _ message: UnsafeMutablePointer<CChar>?, _ capacity: Int) -> Int32 {
    defer { Unmanaged<WriterHandle>.fromOpaque(handle).release() }
    return status(message, capacity) { try writer(handle).finish() }
}

/// Abandons the archive (nothing is left at its path) and releases the handle.
@_cdecl("ckpk_writer_cancel")
public func ckpk_writer_cancel(_ handle: UnsafeMutableRawPointer) {
    writer(handle).cancel()
    Unmanaged<WriterHandle>.fromOpaque(handle).release()
}

// MARK: One object from many ranks (spec/CHECKPOINT.md)

/// Frees memory the library returned (an upload id, a segment record).
@_cdecl("ckpk_free")
public func ckpk_free(_ pointer: UnsafeMutableRawPointer?) {
    free(pointer)
}

private func options(codec: UnsafePointer<CChar>, level: Int32, frameSize: Int64, threads: Int32) throws -> WriterOptions {
    guard let codec = Codec(name: String(cString: codec)) else {
        throw CheckpackError(.invalidArgument, "unknown codec \"\(String(cString: codec))\" (zstd, zlib or none)")
    }
    var options = WriterOptions(codec: codec, level: level < -100 ? nil : level, overwrite: true)
    if frameSize > 0 { options.frameSize = Int(frameSize) }
    if threads > 0 { options.threads = Int(threads) }
    return options
}

/// Starts an archive that several ranks fill, at `location`: for s3://
/// URLs a multipart upload, whose id is returned; for a local path the
/// temporary file beside it, whose path is returned (an existing archive is
/// replaced on completion). Free the result with `ckpk_free`; NULL on failure.
@_cdecl("ckpk_upload_create")
public func ckpk_upload_create(_ location: UnsafePointer<CChar>, _ message: UnsafeMutablePointer<CChar>?,
                               _ capacity: Int) -> UnsafeMutablePointer<CChar>? {
    do {
        return strdup(try SharedArchive(ArchiveLocation(String(cString: location))).create())
    } catch {
        report(error, into: message, capacity: capacity)
        return nil
    }
}

/// Plans a shared upload for `count` ranks that plan to write `plannedBytes[i]`
/// each (`SharedUpload.plan`): fills `firstParts`, `lastParts` and
/// `*partSize` (`requestedPartSize` 0: chosen for the sizes).
@_cdecl("ckpk_upload_plan")
public func ckpk_upload_plan(_ count: Int, _ plannedBytes: UnsafePointer<UInt64>, _ coordinator: Int, _ requestedPartSize: Int64,
                             _ firstParts: UnsafeMutablePointer<Int32>, _ lastParts: UnsafeMutablePointer<Int32>,
                             _ partSize: UnsafeMutablePointer<Int64>,
                             _ message: UnsafeMutablePointer<CChar>?, _ capacity: Int) -> Int32 {
    status(message, capacity) {
        let planned = SharedUpload.plan(plannedBytes:coordinator:partSize:)
        let (size, ranges) = try planned(Array(UnsafeBufferPointer(start: plannedBytes, count: count)), coordinator,
                                         requestedPartSize > 0 ? Int(requestedPartSize) : nil)
        for (i, range) in ranges.enumerated() {
            firstParts[i] = Int32(range.lowerBound)
            lastParts[i] = Int32(range.upperBound)
        }
        partSize.pointee = Int64(size)
    }
}

/// Aborts what `ckpk_upload_create` started (any rank may), so that
/// nothing of it stays: the upload, or the temporary file.
@_cdecl("ckpk_upload_abort")
public func ckpk_upload_abort(_ location: UnsafePointer<CChar>, _ uploadID: UnsafePointer<CChar>) {
    try? SharedArchive(ArchiveLocation(String(cString: location))).abort(String(cString: uploadID))
}

/// Starts this rank's segment of the shared archive `uploadID` (what
/// `ckpk_upload_create` returned): entries are written with the usual calls
/// (begin_file, write, mark_item, end_file) into parts `firstPart`...`lastPart`
/// of `partSize` bytes — S3 parts, or that region of the local temporary
/// file; `holdsFirst` for the coordinator, whose segment begins the archive.
/// NULL on failure.
@_cdecl("ckpk_writer_open_segment")
public func ckpk_writer_open_segment(_ location: UnsafePointer<CChar>, _ uploadID: UnsafePointer<CChar>, _ firstPart: Int32, _ lastPart: Int32,
                                     _ partSize: Int64, _ holdsFirst: Int32, _ codec: UnsafePointer<CChar>, _ level: Int32,
                                     _ frameSize: Int64, _ threads: Int32,
                                     _ message: UnsafeMutablePointer<CChar>?, _ capacity: Int) -> UnsafeMutableRawPointer? {
    do {
        let options = try options(codec: codec, level: level, frameSize: frameSize, threads: threads)
        guard firstPart >= 1, lastPart >= firstPart, partSize > 0 else {
            throw CheckpackError(.invalidArgument, "part numbers \(firstPart)...\(lastPart) of \(partSize) bytes")
        }
        let sink = try SharedArchive(ArchiveLocation(String(cString: location)))
            .segmentSink(String(cString: uploadID), parts: Int(firstPart)...Int(lastPart), partSize: Int(partSize), holdsFirst: holdsFirst != 0)
        let opened = try ArchiveWriter(sink: sink, options: options, startsArchive: holdsFirst != 0)
        return Unmanaged.passRetained(WriterHandle(opened, segment: sink)).toOpaque()
    } catch {
        report(error, into: message, capacity: capacity)
        return nil
    }
}

/// Ends this rank's segment and releases the handle: the parts it can send
/// are sent (a region is synced), and `*record` (free with `ckpk_free`)
/// receives the `*length` bytes the coordinator passes to
/// `ckpk_upload_complete`. On failure the shared archive is aborted.
@_cdecl("ckpk_writer_finish_segment")
public func ckpk_writer_finish_segment(_ handle: UnsafeMutableRawPointer, _ record: UnsafeMutablePointer<UnsafeMutableRawPointer?>,
                                       _ length: UnsafeMutablePointer<UInt64>,
                                       _ message: UnsafeMutablePointer<CChar>?, _ capacity: Int) -> Int32 {
    let handled = Unmanaged<WriterHandle>.fromOpaque(handle)
    defer { handled.release() }
    return status(message, capacity) {
        let owner = handled.takeUnretainedValue()
        guard let sink = owner.segment else { throw CheckpackError(.invalidArgument, "not a segment writer") }
        let bytes: [UInt8]
        do {
            bytes = try sink.record(owner.writer.finishSegment())
        } catch {
            sink.abort()
            throw error
        }
        guard let out = malloc(max(1, bytes.count)) else { throw CheckpackError(.io(ENOMEM), "cannot allocate the segment record") }
        bytes.withUnsafeBytes { out.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        record.pointee = out
        length.pointee = UInt64(bytes.count)
    }
}

/// The coordinator's last step: joins the `count` segment records (rank
/// order, the coordinator's first) and file `name` of `dataLength` bytes
/// into the archive at `location`, and completes it (aborted on failure).
@_cdecl("ckpk_upload_complete")
public func ckpk_upload_complete(_ location: UnsafePointer<CChar>, _ uploadID: UnsafePointer<CChar>, _ count: Int,
                                 _ records: UnsafePointer<UnsafeRawPointer?>, _ lengths: UnsafePointer<UInt64>,
                                 _ name: UnsafePointer<CChar>, _ data: UnsafeRawPointer?, _ dataLength: UInt64,
                                 _ codec: UnsafePointer<CChar>, _ level: Int32,
                                 _ message: UnsafeMutablePointer<CChar>?, _ capacity: Int) -> Int32 {
    status(message, capacity) {
        let id = String(cString: uploadID)
        do {
            let options = try options(codec: codec, level: level, frameSize: 0, threads: 0)
            let recorded = try (0..<count).map { i in
                guard lengths[i] <= UInt64(Int.max) else { throw CheckpackError(.invalidArgument, "bad buffer") }
                return records[i].map { Array(UnsafeRawBufferPointer(start: $0, count: Int(lengths[i]))) } ?? []
            }
            guard dataLength <= UInt64(Int.max) else { throw CheckpackError(.invalidArgument, "bad buffer") }
            let files = [(name: String(cString: name), bytes: data.map { Array(UnsafeRawBufferPointer(start: $0, count: Int(dataLength))) } ?? [])]
            try SharedArchive(ArchiveLocation(String(cString: location))).complete(id, records: recorded, files: files, options: options)
        } catch {
            ckpk_upload_abort(location, uploadID)
            throw error
        }
    }
}
