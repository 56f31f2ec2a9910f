import Checkpack
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Deterministic pseudo-random bytes (SplitMix64), so failures reproduce.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Bytes that compress somewhat (runs of random length) or not at all.
func sampleBytes(_ count: Int, seed: UInt64, compressible: Bool = true) -> [UInt8] {
    var rng = SplitMix(seed: seed)
    var out = [UInt8]()
    out.reserveCapacity(count)
    while out.count < count {
        let value = UInt8.random(in: 0...255, using: &rng)
        let run = compressible ? Int.random(in: 1...12, using: &rng) : 1
        for _ in 0..<min(run, count - out.count) { out.append(value) }
    }
    return out
}

/// A fresh directory under /tmp, removed when the value is released.
final class TemporaryDirectory {
    let path: String
    init() {
        var template = Array("/tmp/checkpack-test-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "mkdtemp failed")
        path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }
    deinit { _ = system("rm -rf '\(path)'") }
    func sub(_ name: String) -> String { path + "/" + name }
}

func writeFile(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    #expect(fd >= 0, "cannot create \(path)")
    defer { close(fd) }
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
        #expect(n > 0)
        if n <= 0 { return }
        done += n
    }
    fchmod(fd, mode)
}

func readFile(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out = [UInt8]()
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
        if n <= 0 { break }
        out += chunk[0..<n]
    }
    return out
}

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
    let dir = TemporaryDirectory()
    let path = dir.sub("a.ckpk")
    let writer = try ArchiveWriter(path: path, options: options)
    try body(writer)
    try writer.finish()
    return readFile(path) ?? []
}
