#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Every failure Checkpack reports. `kind` says what went wrong; the optional
/// context says where: the file, the entry, the frame and the archive offset.
public struct CheckpackError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What went wrong: the CLI's exit code and Python's exception class follow from it alone.
    public enum Kind: Sendable, Equatable {
        /// The file does not start or end like a Checkpack archive.
        case notAnArchive
        /// The archive ends before a structure it promises.
        case truncated
        /// A version or required feature this reader does not know.
        case unsupported
        /// A structure breaks a rule of the format (bounds, order, reserved bits, names).
        case corrupt
        /// Stored or decoded bytes do not match their CRC32C.
        case checksumMismatch
        /// A number is beyond a limit of the format.
        case limitExceeded
        /// The caller asked for something that cannot be done (a bad argument).
        case invalidArgument
        /// The caller named an entry the archive does not have.
        case notFound
        /// The destination exists and the caller did not ask to replace it.
        case alreadyExists
        /// A system call failed; the value is `errno`.
        case io(Int32)
        /// A request to a server failed: its HTTP status, or 0 when no answer came.
        case remote(status: Int)
    }

    /// What went wrong.
    public var kind: Kind
    /// What went wrong, in words, without the place.
    public var message: String
    /// The file or URL concerned.
    public var path: String?
    /// The entry concerned.
    public var entry: String?
    /// The frame concerned, numbered from 0 in its entry.
    public var frame: Int?
    /// Where in the archive the problem lies.
    public var offset: UInt64?

    /// An error of `kind`, with as much of its place as is known.
    public init(_ kind: Kind, _ message: String, path: String? = nil, entry: String? = nil,
                frame: Int? = nil, offset: UInt64? = nil) {
        self.kind = kind
        self.message = message
        self.path = path
        self.entry = entry
        self.frame = frame
        self.offset = offset
    }

    /// True for damaged or hostile data, as opposed to I/O or caller errors.
    public var isDataError: Bool {
        switch kind {
        case .notAnArchive, .truncated, .unsupported, .corrupt, .checksumMismatch, .limitExceeded: return true
        case .invalidArgument, .notFound, .alreadyExists, .io, .remote: return false
        }
    }

    /// One line: `path: entry "a/b", frame 3, archive offset 1234: message`.
    /// Control characters (from names, paths, or a hostile archive) are
    /// escaped, so the line can neither break nor drive a terminal.
    public var description: String {
        var place: [String] = []
        if let entry { place.append("entry \"\(entry)\"") }
        if let frame { place.append("frame \(frame)") }
        if let offset { place.append("archive offset \(offset)") }
        var line = place.isEmpty ? message : place.joined(separator: ", ") + ": " + message
        if let path { line = path + ": " + line }
        return CheckpackError.escapingControlCharacters(line)
    }

    /// `text` with C0 and C1 control characters and DEL written as `\xNN` or `\u{NN}`.
    public static func escapingControlCharacters(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar.value {
            case 0..<0x20, 0x7F: out += "\\x" + (scalar.value < 0x10 ? "0" : "") + String(scalar.value, radix: 16)
            case 0x80..<0xA0: out += "\\u{" + String(scalar.value, radix: 16) + "}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    func at(path: String? = nil, entry: String? = nil, frame: Int? = nil, offset: UInt64? = nil) -> CheckpackError {
        var copy = self
        if copy.path == nil { copy.path = path }
        if copy.entry == nil { copy.entry = entry }
        if copy.frame == nil { copy.frame = frame }
        if copy.offset == nil { copy.offset = offset }
        return copy
    }

    package static func system(_ operation: String, path: String?, errno code: Int32 = errno) -> CheckpackError {
        let reason = String(cString: strerror(code))
        return CheckpackError(.io(code), "\(operation): \(reason)", path: path)
    }

    /// `error` with `context` put before its message, its kind and place kept;
    /// an error of another type becomes one of kind `fallback`.
    package static func wrapping(_ error: any Error, _ context: String, fallback: Kind = .corrupt) -> CheckpackError {
        guard var error = error as? CheckpackError else { return CheckpackError(fallback, "\(context): \(error)") }
        error.message = "\(context): \(error.message)"
        return error
    }
}

extension Error {
    /// Adds context to a `CheckpackError`; other errors pass unchanged.
    package func checkpackContext(path: String? = nil, entry: String? = nil, frame: Int? = nil,
                          offset: UInt64? = nil) -> Error {
        guard let error = self as? CheckpackError else { return self }
        return error.at(path: path, entry: entry, frame: frame, offset: offset)
    }
}
