import Checkpack
#if canImport(Glibc)
import Glibc
#endif

/// A fresh directory under /tmp, removed (through descriptors, never by a
/// shell) when the value is released.
public final class Scratch: @unchecked Sendable {
    public let path: String

    /// A new folder in `parent` (another filesystem than /tmp's, for tests that depend on one).
    public init(_ prefix: String = "checkpack-test", in parent: String = "/tmp") {
        var template = Array("\(parent)/\(prefix)-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        path = made == nil ? "\(parent)/\(prefix)-unmade" : template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    deinit { removeTree(path) }

    public func sub(_ name: String) -> String { path + "/" + name }

    /// Names in the directory, hidden ones included, sorted.
    public var contents: [String] { (try? FileSystem.listDirectory(path))?.sorted() ?? [] }
}

/// Removes a file or a directory tree, if there is one.
public func removeTree(_ path: String) { FileSystem.removeTree(path) }

/// A file's bytes, read with POSIX calls (Foundation's FileManager.contents(atPath:)
/// leaks a buffer, which LeakSanitizer reports); nil when it cannot be read.
public func readFile(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out = [UInt8]()
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
        if n < 0 { return nil }
        if n == 0 { return out }
        out += chunk[0..<n]
    }
}

/// Writes `bytes` to a new (or truncated) file with `mode`.
public func writeFile(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw CheckpackError(.io(errno), "cannot create", path: path) }
    defer { close(fd) }
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
        guard n > 0 else { throw CheckpackError(.io(errno), "cannot write", path: path) }
        done += n
    }
    fchmod(fd, mode)
}

/// Deterministic pseudo-random bytes (SplitMix64), so failures reproduce.
public struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Bytes that compress somewhat (runs of random length) or not at all.
public func sampleBytes(_ count: Int, seed: UInt64, compressible: Bool = true) -> [UInt8] {
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

/// The kind of the `CheckpackError` that `body` throws; nil when it throws
/// nothing or another error. Tests assert kinds, not message text.
public func errorKind<T>(_ body: () throws -> T) -> CheckpackError.Kind? { thrownError(body)?.kind }

/// The `CheckpackError` that `body` throws; nil when it throws nothing or another error.
public func thrownError<T>(_ body: () throws -> T) -> CheckpackError? {
    do {
        _ = try body()
        return nil
    } catch {
        return error as? CheckpackError
    }
}
