import Dispatch
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Unpacks an archive into a directory, all or nothing.
public enum Unpacker {
    /// Unpacks the archive at `archive` ("-" for standard input) into
    /// `destination`. The tree is built in a staging directory beside the
    /// destination, and renamed into place only after the whole archive —
    /// every checksum, the index and the trailer — has been verified; on any
    /// error the staging directory is removed and the destination is untouched.
    /// An existing destination is refused unless `overwrite` is set.
    /// Permission bits are restored (setuid, setgid and sticky bits are not).
    @discardableResult
    public static func unpack(archive: String, to destination: String, overwrite: Bool = false,
                              progress: ((_ done: UInt64, _ total: UInt64?) -> Void)? = nil) throws -> TreeSummary {
        if archive == "-" {
            try refuseExisting(destination, overwrite: overwrite)
            return try unpack(ArchiveStreamReader(source: SystemFile.standardInput), total: nil, to: destination,
                              overwrite: overwrite, progress: progress)
        }
        return try unpack(ArchiveReader(path: archive), to: destination, overwrite: overwrite, progress: progress)
    }

    /// Unpacks an archive (a local file, or a remote object read front to
    /// back with chunks fetched ahead), opened only once the destination is
    /// known to be free. Opening it checks trailer and index, so a damaged or
    /// truncated archive fails before anything is written.
    @discardableResult
    public static func unpack(_ open: @autoclosure () throws -> ArchiveReader, to destination: String, overwrite: Bool = false,
                              progress: ((_ done: UInt64, _ total: UInt64?) -> Void)? = nil) throws -> TreeSummary {
        try refuseExisting(destination, overwrite: overwrite)
        let reader = try open()
        let total = reader.entries.reduce(UInt64(0)) { $0 + $1.size }
        let input = RangeSource(source: reader.source, range: 0..<reader.source.size)
        return try unpack(ArchiveStreamReader(source: input), total: total, to: destination, overwrite: overwrite, progress: progress)
    }

    /// A destination that exists is refused before anything is opened or made, unless `overwrite`.
    static func refuseExisting(_ destination: String, overwrite: Bool) throws {
        if FileSystem.exists(destination), !overwrite {
            throw CheckpackError(.alreadyExists, "already exists", path: destination)
        }
    }

    private static func unpack(_ stream: ArchiveStreamReader, total: UInt64?, to destination: String, overwrite: Bool,
                               progress: ((_ done: UInt64, _ total: UInt64?) -> Void)?) throws -> TreeSummary {
        let staging = try FileSystem.temporaryDirectory(beside: destination, suffix: "ckpk-unpack")
        Interruption.track(staging)
        defer { Interruption.untrack(staging) }
        do {
            let summary = try extract(stream, into: staging, progress: { progress?($0, total) })
            try replace(destination, with: staging, overwrite: overwrite)
            return summary
        } catch {
            FileSystem.removeTree(staging)
            throw error
        }
    }

    /// What reaches the extracting thread, in archive order.
    enum Step: Sendable {
        case record(StreamRecord)
        case data([UInt8])
    }

    private static func extract(_ stream: ArchiveStreamReader, into root: String,
                                progress: @escaping (UInt64) -> Void) throws -> TreeSummary {
        let tree = try TreeBuilder(root: root, progress: progress)
        // Frames decode on all cores; the tree is written in archive order.
        let threads = WriterOptions.availableCores
        let pipeline = OrderedPipeline<Step>(threads: threads, maxPending: 64 * (threads + 2),
                                             maxCost: (threads + 2) * WriterOptions.defaultFrameSize) { try tree.apply($0) }
        var entryName: String? = nil   // the entry whose frames are being read (ahead of `tree`)
        do {
            while let record = try stream.nextRecord() {
                if case .entryStart(let started) = record { entryName = started.name }
                if case .frame(let frame) = record {
                    let name = entryName
                    try pipeline.submit(cost: Int(frame.header.decodedLength) + frame.stored.count) {
                        do { return .data(try frame.decode()) } catch { throw error.checkpackContext(entry: name) }
                    }
                } else {
                    try pipeline.submitReady(.record(record))
                }
            }
            try pipeline.finish()
        } catch {
            pipeline.abandon()
            throw error.checkpackContext(path: stream.name)
        }
        try tree.finish()
        return tree.summary
    }

    /// Creates the entries under the staging root as their records arrive,
    /// every one relative to a directory descriptor opened from the root
    /// without following links (`Directory`): renaming or replacing the
    /// staging folder mid-run cannot redirect a write.
    final class TreeBuilder {
        let root: String
        let progress: (UInt64) -> Void
        var summary = TreeSummary()
        private let rootDirectory: Directory
        /// Directories opened lately, by the bytes of their names (a bounded cache).
        private var open: [[UInt8]: Directory] = [:]
        private var directoryModes: [(name: [UInt8], mode: UInt32)] = []
        /// Directories made so far, by the bytes of their names; those without an entry of their own are implied.
        private var made: Set<[UInt8]> = []
        private var implied: Set<[UInt8]> = []
        /// The file being written, synced as it grows.
        private var output: Writeback? = nil
        private var written: UInt64 = 0       // bytes of the current file
        private var current: EntryRecord? = nil

        init(root: String, progress: @escaping (UInt64) -> Void) throws {
            self.root = root
            self.progress = progress
            rootDirectory = try Directory.open(root)
        }

        /// The directory named by `name` (empty: the root), opened one component
        /// at a time from the root, never through a link.
        private func directory(_ name: ArraySlice<UInt8>) throws -> Directory {
            if name.isEmpty { return rootDirectory }
            if let found = open[Array(name)] { return found }
            var directory = rootDirectory
            for component in name.split(separator: UInt8(ascii: "/")) {
                directory = try directory.child(String(decoding: component, as: UTF8.self))
            }
            if open.count >= 64 { open.removeAll() }
            open[Array(name)] = directory
            return directory
        }

        /// The directory that holds `name`, and the last component of `name`.
        private func parentAndLeaf(_ name: ArraySlice<UInt8>) throws -> (Directory, String) {
            guard let slash = name.lastIndex(of: UInt8(ascii: "/")) else { return (rootDirectory, String(decoding: name, as: UTF8.self)) }
            return (try directory(name[..<slash]), String(decoding: name[(slash + 1)...], as: UTF8.self))
        }

        func apply(_ step: Step) throws {
            switch step {
            case .record(.entryStart(let record)): try start(record)
            case .record(.entryEnd): try end()
            case .record(.frame): throw CheckpackError(.corrupt, "undecoded frame")
            case .data(let bytes): try append(bytes)
            }
        }

        /// Zero runs of a whole aligned block become holes, as `cp --sparse=auto` makes them.
        static let holeBlock = 64 << 10
        private static let zeros = [UInt8](repeating: 0, count: holeBlock)
        private var endsInHole = false
        private let syncs = ParallelSync()

        func append(_ bytes: [UInt8]) throws {
            guard let output else { throw CheckpackError(.corrupt, "data outside a file entry") }
            let file = output.file
            try bytes.withUnsafeBytes { raw in
                var start = 0
                while start < raw.count {
                    let block = TreeBuilder.holeBlock
                    let n = min(block - Int((written + UInt64(start)) % UInt64(block)), raw.count - start)
                    let piece = UnsafeRawBufferPointer(rebasing: raw[start..<start + n])
                    let zero = n == block && TreeBuilder.zeros.withUnsafeBytes { memcmp($0.baseAddress!, piece.baseAddress!, n) == 0 }
                    if zero {
                        guard lseek(file.descriptor, off_t(n), SEEK_CUR) >= 0 else { throw CheckpackError.system("seek failed", path: file.path) }
                    } else {
                        try file.write(piece)
                    }
                    endsInHole = zero
                    start += n
                }
            }
            written += UInt64(bytes.count)
            output.wrote(bytes.count)
            summary.bytes += UInt64(bytes.count)
            progress(summary.bytes)
        }

        private func makeParents(of name: String) throws {
            for parent in EntryName.ancestors(of: Array(name.utf8)) where !made.contains(Array(parent)) {
                let (directory, leaf) = try parentAndLeaf(parent)
                try directory.makeChild(leaf, mode: 0o700)
                made.insert(Array(parent))
                implied.insert(Array(parent))
            }
        }

        func start(_ record: EntryRecord) throws {
            current = record
            try makeParents(of: record.name)
            let name = Array(record.name.utf8)
            let (directory, leaf) = try parentAndLeaf(name[...])
            switch record.kind {
            case .directory:
                // Writable while its children are extracted; its own mode is set at the end.
                if try !directory.makeChild(leaf, mode: 0o700), !made.contains(name) {
                    throw CheckpackError.system("cannot create directory", path: root + "/" + record.name, errno: EEXIST)
                }
                made.insert(name)
                implied.remove(name)
                directoryModes.append((name, record.mode))
                summary.directories += 1
            case .file:
                output = Writeback(try directory.createFile(leaf))
                written = 0
                summary.files += 1
            }
        }

        func end() throws {
            if let file = output?.file, endsInHole {
                // A hole at the end gives the file no size of its own.
                guard ftruncate(file.descriptor, off_t(written)) == 0 else { throw CheckpackError.system("cannot set size", path: file.path) }
            }
            endsInHole = false
            if let output, let current {
                guard fchmod(output.file.descriptor, mode_t(current.mode & 0o777)) == 0 else {
                    throw CheckpackError.system("cannot set mode", path: output.file.path)
                }
                // Made durable on a worker thread: fsyncs overlap instead of waiting one after another.
                syncs.sync { try output.sync() }
            }
            output = nil
            current = nil
        }

        /// Gives directories their modes, then makes the whole tree durable.
        func finish() throws {
            try rootDirectory.setMode(0o777 & ~FileSystem.umaskBits)   // mkdtemp makes it 0700
            // Parents without entries get what `mkdir -p` gives them (spec section 7).
            for name in implied { try directory(name[...]).setMode(0o777 & ~FileSystem.umaskBits) }
            // Deepest first, so that a read-only parent does not block its children.
            for (name, mode) in directoryModes.reversed() { try directory(name[...]).setMode(mode_t(mode & 0o777)) }
            // Every file's fsync has finished; then the directories, so that their entries last too.
            for name in made {
                let directory = try directory(name[...])
                let copy = dup(directory.descriptor)
                guard copy >= 0 else { throw CheckpackError.system("cannot duplicate a descriptor", path: directory.path) }
                let opened = SystemFile(descriptor: copy, path: directory.path)
                syncs.sync { try opened.sync() }
            }
            try syncs.wait()
            try rootDirectory.sync()
            // The tree is about to be renamed into place by its path: that path must
            // still be the folder it was built in, not something put there meanwhile.
            var built = stat(), named = stat()
            guard fstat(rootDirectory.descriptor, &built) == 0, lstat(root, &named) == 0,
                  built.st_dev == named.st_dev, built.st_ino == named.st_ino else {
                throw CheckpackError(.io(EEXIST), "the staging folder was replaced while the archive was unpacked into it", path: root)
            }
        }
    }

    /// Renames `staging` to `destination`. An existing destination (with
    /// `overwrite`) is exchanged with the new tree in one step (renameat2
    /// RENAME_EXCHANGE), so that a kill at any moment leaves one whole tree
    /// under its name, and the old one is then removed; where the kernel or
    /// filesystem cannot exchange, it is moved aside first.
    static func replace(_ destination: String, with staging: String, overwrite: Bool) throws {
        var old: String? = nil
        if FileSystem.exists(destination) {
            guard overwrite else { throw CheckpackError(.alreadyExists, "already exists", path: destination) }
            if try FileSystem.exchange(staging, destination) {
                try FileSystem.syncDirectory(FileSystem.parent(of: destination))
                FileSystem.removeTree(staging)   // the old tree, under the staging name now
                return
            }
            // A fresh unique name; removed again so that a file can move there too.
            let aside = try FileSystem.temporaryDirectory(beside: destination, suffix: "ckpk-old")
            _ = rmdir(aside)
            try FileSystem.rename(destination, to: aside)
            old = aside
        }
        do {
            try FileSystem.rename(staging, to: destination)
        } catch {
            if let old { try? FileSystem.rename(old, to: destination) }
            throw error
        }
        try FileSystem.syncDirectory(FileSystem.parent(of: destination))
        if let old { FileSystem.removeTree(old) }
    }
}

/// Runs fsyncs on worker threads, a bounded number at a time (each closes its
/// file when done): a tree of many small files waits for its fsyncs
/// together, not one after another. `wait()` reports the first failure.
final class ParallelSync: @unchecked Sendable {
    private let group = DispatchGroup()
    private let slots = DispatchSemaphore(value: 32)
    private let failure = Locked<CheckpackError?>(nil)

    func sync(_ work: @escaping @Sendable () throws -> Void) {
        slots.wait()
        group.enter()
        DispatchQueue.global().async { [self] in
            do { try work() } catch let error as CheckpackError {
                failure.withLock { if $0 == nil { $0 = error } }
            } catch {}
            slots.signal()
            group.leave()
        }
    }

    func wait() throws {
        group.wait()
        if let error = failure.withLock({ $0 }) { throw error }
    }
}
