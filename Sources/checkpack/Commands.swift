import ArgumentParser
import Checkpack
import CheckpackStorage
import CheckpackRemote
import CheckpackTorch
#if canImport(Glibc)
import Glibc
#endif

struct CheckpackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpack",
        abstract: "Pack checkpoint directories into one compressed, checksummed, seekable archive (.ckpk), and back.",
        discussion: "Exit status: 0 success, 1 bad or damaged data or a failed system call, 2 usage error.",
        version: "0.1.0",
        subcommands: [PackCommand.self, UnpackCommand.self, ListCommand.self, VerifyCommand.self, CatCommand.self,
                      CopyCommand.self, SalvageCommand.self, InspectCommand.self])
}

struct PackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pack", abstract: "Pack a directory into an archive.")

    @Argument(help: "The directory to pack.") var source: String
    @Argument(help: "The archive to write (conventionally *.ckpk): a path or s3://bucket/key.") var archive: String
    // Optional, with the default in the help: ArgumentParser would show a CaseIterable default by its raw value (1).
    @Option(help: "Compression: zstd, zlib or none (default: zstd).") var codec: Codec?
    @Option(parsing: .unconditional, help: "Compression level (zstd -7...22, zlib 0...9); default 3 for zstd, 6 for zlib.")
    var level: Int32?
    @Option(name: .customLong("frame-size"), help: "Frame size: 4096, 64K, 4M ... (4K...64M).")
    var frameSize: SizeArgument = SizeArgument(argument: "4M")!
    @Option(help: "Threads that compress (default: all cores).") var threads: Int = WriterOptions.availableCores
    @Flag(help: "Replace an existing archive.") var force = false
    @Flag(name: .customLong("fixed-frames"),
          help: "Ignore checkpoint formats: cut every file into fixed-size frames only.") var fixedFrames = false
    @Flag(name: .customLong("no-planes"),
          help: "Do not split tensor items into byte planes (archives readable by Checkpack before byte planes).") var noPlanes = false
    @Option(name: .customLong("plane-frame-size"), help: "Frame size for tensor items in byte planes (4K...64M).")
    var planeFrameSize: SizeArgument = SizeArgument(argument: "\(WriterOptions.defaultPlaneFrameSize / 1024)K")!
    @OptionGroup var upload: UploadOptions
    @Flag(help: "No progress bar or summary.") var quiet = false

    func run() throws {
        guard archive != "-" else {
            // The writer finishes by rewriting the header, which a pipe cannot take.
            throw ValidationError("pack cannot write an archive to standard output; name a file")
        }
        let location = try ArchiveLocation(archive)
        if !location.isRemote { reportLeftovers(beside: archive) }
        var options = WriterOptions(codec: codec ?? .zstd, level: level, frameSize: frameSize.bytes, threads: threads, overwrite: force)
        options.bytePlanes = !noPlanes
        options.planeFrameSize = planeFrameSize.bytes
        // A torch DCP directory or safetensors files: frames are cut at their items.
        var layouts: [String: FileLayout] = [:]
        if !fixedFrames {   // a non-directory has no layouts; pack reports it
            do {
                layouts = try CheckpointLayout.layouts(forDirectory: source)
            } catch {
                if !quiet { printError("warning: \(source): \(error); packing with fixed-size frames") }
            }
        }
        let bar = ProgressBar("packing", quiet: quiet)
        let start = monotonicSeconds()
        let summary = try Packer.pack(directory: source, into: { try upload.sink(at: location, overwrite: force, forAbout: $0.bytes) },
                                      options: options, layouts: layouts) { bar.update($0, total: $1) }
        bar.clear()
        if !quiet {
            let stored = summary.archiveBytes
            writeStderr("packed \(summary.files) files and \(summary.directories) directories, \(ByteSize.format(summary.bytes)) into \(ByteSize.format(stored)) (\(ratio(stored, summary.bytes))) in \(String(format: monotonicSeconds() - start)) s\n")
        }
    }
}

struct UnpackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unpack",
        abstract: "Unpack an archive into a new directory, all or nothing.",
        discussion: "The tree is built beside DEST_DIR and renamed into place only after every checksum has passed.")

    @Argument(help: "The archive (a path, http(s):// or s3:// URL), or - to read it from standard input.") var archive: String
    @Argument(help: "The directory to create.") var destination: String
    @Flag(help: "Replace an existing DEST_DIR.") var force = false
    @Flag(help: "No progress bar or summary.") var quiet = false

    func run() throws {
        reportLeftovers(beside: destination)
        let bar = ProgressBar("unpacking", quiet: quiet)
        let start = monotonicSeconds()
        let summary: TreeSummary
        if archive == "-" {
            summary = try Unpacker.unpack(archive: archive, to: destination, overwrite: force) { bar.update($0, total: $1) }
        } else {
            summary = try Unpacker.unpack(ArchiveReader(location: archive), to: destination, overwrite: force) { bar.update($0, total: $1) }
        }
        bar.clear()
        if !quiet {
            writeStderr("unpacked \(summary.files) files and \(summary.directories) directories, \(ByteSize.format(summary.bytes)) in \(String(format: monotonicSeconds() - start)) s\n")
        }
    }
}

struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List an archive's entries.")

    @Argument(help: "The archive: a path, an http(s):// or an s3:// URL.") var archive: String
    @Flag(help: "Machine-readable output.") var json = false

    func run() throws {
        let reader = try ArchiveReader(location: archive)
        if json {
            print(JSON.array(try reader.entries.map { try describe($0, reader) }).rendered())
            return
        }
        var rows = [["SIZE", "STORED", "RATIO", "FRAMES", "CODEC", "MODE", "NAME"]]
        for entry in reader.entries {
            let name = entry.kind == .directory ? entry.name + "/" : entry.name
            rows.append([String(entry.size), String(entry.storedSize), ratio(entry.storedSize, entry.size),
                         String(entry.frameCount), codecs(entry).joined(separator: "+"),
                         String(entry.mode, radix: 8), name])
        }
        printTable(rows, rightAligned: [0, 1, 2, 3])
    }

    /// The kinds of frame the index row names: a codec, "/planes" for byte planes.
    private func codecs(_ entry: ArchiveEntry) -> [String] {
        let names = entry.frameKinds.map { $0.codec.description + ($0.bytePlanes ? "/planes" : "") }
        return names.isEmpty ? ["-"] : names
    }

    private func describe(_ entry: ArchiveEntry, _ reader: ArchiveReader) throws -> JSON {
        .object([
            ("name", .string(entry.name)),
            ("kind", .string(entry.kind == .file ? "file" : "directory")),
            ("mode", .string(String(entry.mode, radix: 8))),
            ("size", .number(entry.size)),
            ("stored_size", .number(entry.storedSize)),
            ("frames", .number(entry.frameCount)),
            ("codecs", .array(codecs(entry).filter { $0 != "-" }.map(JSON.string))),
            ("crc32c", .string(String(entry.contentCRC, radix: 16))),
            ("item_boundaries", .array(try reader.itemBoundaries(of: entry).map(JSON.number))),
            ("attributes", .object(try reader.attributes(of: entry).map { ($0.key, JSON.string($0.value)) })),
        ])
    }
}

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check an archive's structure and every checksum.",
        discussion: "Exits 0 when the archive is sound; otherwise prints one line per problem and exits 1.")

    @Argument(help: "The archive: a path, an http(s):// or an s3:// URL.") var archive: String
    @Flag(help: "Print nothing when the archive is sound.") var quiet = false

    func run() throws {
        let reader = try ArchiveReader(location: archive)
        let bar = ProgressBar("verifying", quiet: quiet)
        let total = reader.entries.reduce(UInt64(0)) { $0 + $1.size }
        let problems = try reader.verify { bar.update($0, total: total) }
        bar.clear()
        for problem in problems { printError(problem.description) }
        guard problems.isEmpty else { throw CommandFailure(code: 1) }
        if !quiet {
            print("\(archive): OK (\(reader.entries.count) entries, \(reader.entries.reduce(0) { $0 + $1.frameCount }) frames, \(ByteSize.format(total)))")
        }
    }
}

struct CatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cat", abstract: "Write an entry's bytes (or a range of them) to standard output.")

    @Argument(help: "The archive: a path, an http(s):// or an s3:// URL.") var archive: String
    @Argument(help: "The entry's name, as `ls` shows it.") var entry: String
    @Option(help: "First byte to write.") var offset: UInt64 = 0
    @Option(help: "Number of bytes to write (default: to the end).") var length: UInt64?

    func run() throws {
        let reader = try ArchiveReader(location: archive)
        guard let found = reader.entry(named: entry) else {
            throw CheckpackError(.notFound, "no entry named \"\(entry)\"", path: archive)
        }
        guard found.kind == .file else { throw CheckpackError(.notFound, "no file entry named \"\(entry)\" (it is a directory)", path: archive) }
        guard offset <= found.size, (length ?? 0) <= found.size - offset else {
            throw CheckpackError(.invalidArgument, "range \(offset)+\(length ?? 0) is past the end of \"\(entry)\" (\(found.size) bytes)", path: archive)
        }
        let end = length.map { offset + $0 } ?? found.size
        // Frame-sized pieces: memory stays bounded whatever the range.
        let piece = 8 << 20
        var buffer = [UInt8](repeating: 0, count: Int(min(UInt64(piece), end - offset)))
        var position = offset
        while position < end {
            let n = Int(min(UInt64(piece), end - position))
            try buffer.withUnsafeMutableBytes { raw in
                let part = UnsafeMutableRawBufferPointer(rebasing: raw[..<n])
                try reader.read(found, offset: position, into: part)
                var written = 0
                while written < n {
                    let w = write(1, part.baseAddress! + written, n - written)
                    if w < 0 {
                        if errno == EINTR { continue }
                        throw CheckpackError(.io(errno), "cannot write to standard output: \(String(cString: strerror(errno)))")
                    }
                    written += w
                }
            }
            position += UInt64(n)
        }
    }
}

/// How `pack` and `cp` upload to s3://.
struct UploadOptions: ParsableArguments {
    @Option(name: .customLong("part-size"), help: "Part size of an upload to s3:// (5M at least).")
    var partSize: SizeArgument = SizeArgument(argument: "16M")!

    /// A sink at `location` for an archive of about `bytes`: S3 takes at most
    /// 10,000 parts, so larger archives get larger parts.
    func sink(at location: ArchiveLocation, overwrite: Bool, forAbout bytes: UInt64) throws -> any ArchiveSink {
        try location.openSink(overwrite: overwrite, partSize: S3MultipartSink.partSize(forAbout: bytes, atLeast: partSize.bytes))
    }
}

struct CopyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cp",
        abstract: "Copy an archive between a file, an s3:// object and an http(s):// URL (read-only), checking it on the way.",
        discussion: """
            The records are copied as they are (nothing is recompressed) and every frame's checksum is checked \
            before the copy is committed: the destination appears whole and intact, or not at all.
            """)

    @Argument(help: "The archive to copy: a path, an http(s):// or an s3:// URL.") var source: String
    @Argument(help: "Where to write it: a path or s3://bucket/key.") var destination: String
    @Flag(help: "Replace an existing destination.") var force = false
    @OptionGroup var upload: UploadOptions
    @Flag(help: "No progress bar or summary.") var quiet = false

    func run() throws {
        let target = try ArchiveLocation(destination)
        if !target.isRemote { reportLeftovers(beside: destination) }
        let reader = try ArchiveReader(location: source)
        let size = reader.source.size
        let sink = try upload.sink(at: target, overwrite: force, forAbout: size)
        let writer = try ArchiveWriter(sink: sink, options: WriterOptions(overwrite: force))
        let start = monotonicSeconds()
        try writer.appendEntries(of: reader)
        try writer.finish()
        if !quiet {
            writeStderr("copied \(reader.entries.count) entries, \(ByteSize.format(writer.bytesWritten)), every frame checked, in \(String(format: monotonicSeconds() - start)) s\n")
        }
    }
}

struct SalvageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "salvage",
        abstract: "Recover what can be recovered from a damaged or truncated archive.",
        discussion: """
            Reads the records front to back without the index, writes every intact entry and the intact \
            prefix of each damaged file into DEST_DIR, and prints one line per entry. Exits 0 when everything \
            was intact, 1 when anything was lost.
            """)

    @Argument(help: "The damaged archive: a path, an http(s):// or an s3:// URL.") var archive: String
    @Argument(help: "The directory to create.") var destination: String
    @Flag(help: "Replace an existing DEST_DIR.") var force = false

    func run() throws {
        let report = try Salvager.salvage(ArchiveLocation(archive).openSource(), to: destination, overwrite: force)
        for entry in report.entries {
            let name = entry.kind == .directory ? entry.name + "/" : entry.name
            switch entry.outcome {
            case .complete: print("complete  \(entry.bytes)  \(name)")
            case .partial(let reason): print("partial   \(entry.bytes)  \(name)  (\(reason))")
            case .skipped(let reason): print("skipped   -  \(name)  (\(reason))")
            }
        }
        for range in report.damagedRanges {
            print("damaged   archive bytes \(range.lowerBound)..<\(range.upperBound) skipped")
        }
        if !report.reachedIndex { print("lost      the archive's tail: entries after the last one shown may be missing") }
        if let tail = report.ignoredTail {
            print("ignored   archive bytes \(tail.lowerBound)..<\(tail.upperBound) after the trailer (another archive appended?)")
        }
        let complete = report.entries.filter { $0.outcome == .complete }.count
        writeStderr("salvaged \(complete) of \(report.entries.count) entries intact into \(destination)\n")
        if !report.isComplete { throw CommandFailure(code: 1) }
    }
}

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "List every tensor of a checkpoint: a torch.distributed.checkpoint directory, a .safetensors file or folder, or an archive of one.",
        discussion: "Shows name, dtype, global shape, chunks and bytes (and, for archives, stored bytes and ratio). Nothing is unpacked.")

    @Argument(help: "A checkpoint directory, a .safetensors file, or a .ckpk archive (a path or a URL).") var path: String
    @Flag(help: "Machine-readable output, with every chunk's offsets and sizes.") var json = false

    func run() throws {
        let inspection = try ArchiveLocation(path).isRemote ? Inspector.inspect(reader: ArchiveReader(location: path), path: path)
            : Inspector.inspect(path: path)
        if json {
            print(JSON.object([
                ("path", .string(inspection.path)),
                ("format", .string(inspection.format.rawValue)),
                ("archive", .bool(inspection.inArchive)),
                ("items", .array(inspection.items.map(describe))),
            ]).rendered())
            return
        }
        var rows = [["NAME", "DTYPE", "SHAPE", "CHUNKS", "BYTES"] + (inspection.inArchive ? ["STORED", "RATIO"] : [])]
        for item in inspection.items {
            var row = [item.name, item.dtype?.rawValue ?? "bytes", item.dtype == nil ? "-" : "[" + item.shape.map(String.init).joined(separator: ", ") + "]",
                       item.dtype == nil ? "-" : String(item.chunks.count), String(item.bytes)]
            if inspection.inArchive {
                row += [item.storedBytes.map(String.init) ?? "-", item.storedBytes.map { ratio($0, item.bytes) } ?? "-"]
            }
            rows.append(row)
        }
        print("\(inspection.path): \(inspection.format.rawValue)\(inspection.inArchive ? " (archived)" : ""), \(inspection.items.count) items")
        printTable(rows, rightAligned: Set(3..<rows[0].count))
    }

    private func describe(_ item: Inspection.Item) -> JSON {
        var fields: [(String, JSON)] = [
            ("name", .string(item.name)),
            ("kind", .string(item.dtype == nil ? "bytes" : "tensor")),
        ]
        if let dtype = item.dtype {
            fields.append(("dtype", .string(dtype.rawValue)))
            fields.append(("shape", .array(item.shape.map { .number(UInt64($0)) })))
            fields.append(("chunks", .array(item.chunks.map { chunk in
                .object([("offsets", .array(chunk.offsets.map { .number(UInt64($0)) })),
                         ("sizes", .array(chunk.sizes.map { .number(UInt64($0)) }))])
            })))
        }
        fields.append(("bytes", .number(item.bytes)))
        fields.append(("files", .array(item.files.map(JSON.string))))
        if let stored = item.storedBytes { fields.append(("stored_bytes", .number(stored))) }
        return .object(fields)
    }
}

extension String {
    init(format seconds: Double) {
        let tenths = (seconds * 100).rounded() / 100
        self = String(tenths)
    }
}
