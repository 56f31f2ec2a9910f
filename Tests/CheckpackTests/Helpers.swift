import CheckpackTestSupport
import Checkpack
import Testing
#if canImport(Glibc)
import Glibc
#endif

func makeDirectory(_ path: String, mode: mode_t = 0o755) {
    mkdir(path, 0o755)
    chmod(path, mode)
}

/// A tree's content as comparable values: name → (is directory, mode, bytes).
struct TreeSnapshot: Equatable {
    var items: [String: Item] = [:]
    struct Item: Equatable { var directory: Bool; var mode: mode_t; var bytes: [UInt8] }

    init(_ root: String) {
        walk(root, prefix: "")
    }

    private mutating func walk(_ path: String, prefix: String) {
        guard let dir = opendir(path) else { return }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(dir)
        for name in names {
            let child = path + "/" + name
            let key = prefix.isEmpty ? name : prefix + "/" + name
            var info = stat()
            lstat(child, &info)
            if (info.st_mode & S_IFMT) == S_IFDIR {
                items[key] = Item(directory: true, mode: info.st_mode & 0o777, bytes: [])
                walk(child, prefix: key)
            } else {
                items[key] = Item(directory: false, mode: info.st_mode & 0o777, bytes: readFile(child) ?? [])
            }
        }
    }
}

/// Reads an archive held in memory front to back, like a pipe would.
final class MemoryStream: SequentialSource {
    let bytes: [UInt8]
    var position = 0
    var name: String { "<stream>" }
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    func readSome(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = min(buffer.count, bytes.count - position)
        bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[position..<position + n])) }
        position += n
        return n
    }
}

/// Every event of a front-to-back read, with the file contents joined.
func streamContents(_ source: any SequentialSource) throws -> [String: [UInt8]] {
    let stream = try ArchiveStreamReader(source: source)
    var files: [String: [UInt8]] = [:]
    var current = ""
    while let event = try stream.next() {
        switch event {
        case .entryStart(let record): current = record.name; files[current] = []
        case .data(_, let bytes): files[current, default: []] += bytes
        case .entryEnd: break
        }
    }
    return files
}

/// Builds an archive in memory-backed form: writes it to a temporary file and returns its bytes.
func buildArchive(options: WriterOptions = WriterOptions(), _ body: (ArchiveWriter) throws -> Void) throws -> [UInt8] {
    let dir = Scratch()
    let path = dir.sub("a.ckpk")
    let writer = try ArchiveWriter(path: path, options: options)
    try body(writer)
    try writer.finish()
    return readFile(path) ?? []
}
