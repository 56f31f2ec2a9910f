import Checkpack
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// The few text and process helpers the remote code needs, without Foundation:
// the Python wheel links the Swift runtime statically, and Foundation would
// add tens of megabytes (ICU) for these.

extension StringProtocol {
    /// Without leading and trailing spaces, tabs, carriage returns and newlines.
    func trimmed() -> String {
        let blank: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" || $0 == "\r\n" }
        guard let first = firstIndex(where: { !blank($0) }), let last = lastIndex(where: { !blank($0) }) else { return "" }
        return String(self[first...last])
    }
}

/// The process's environment variables.
enum Environment {
    static var current: [String: String] {
        var values: [String: String] = [:]
        var entry = environ
        while let pointer = entry.pointee {
            let pair = String(cString: pointer)
            if let equals = pair.firstIndex(of: "=") {
                values[String(pair[..<equals])] = String(pair[pair.index(after: equals)...])
            }
            entry += 1
        }
        return values
    }

    /// The home folder: HOME, else the password database's.
    static func home(_ environment: [String: String]) -> String {
        if let home = environment["HOME"], !home.isEmpty { return home }
        if let entry = getpwuid(getuid()), let directory = entry.pointee.pw_dir { return String(cString: directory) }
        return "/"
    }
}

enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i < bytes.count {
            let a = UInt32(bytes[i]), b = i + 1 < bytes.count ? UInt32(bytes[i + 1]) : 0, c = i + 2 < bytes.count ? UInt32(bytes[i + 2]) : 0
            let triple = a << 16 | b << 8 | c
            out.append(alphabet[Int(triple >> 18 & 63)])
            out.append(alphabet[Int(triple >> 12 & 63)])
            out.append(i + 1 < bytes.count ? alphabet[Int(triple >> 6 & 63)] : UInt8(ascii: "="))
            out.append(i + 2 < bytes.count ? alphabet[Int(triple & 63)] : UInt8(ascii: "="))
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// A small text file's contents (nil if it cannot be read).
func readTextFile(_ path: String) -> String? {
    guard let file = try? SystemFile.openForReading(path), let size = try? file.size, size <= 1 << 20,
          let bytes = try? file.read(count: Int(size), at: 0) else { return nil }
    return String(decoding: bytes, as: UTF8.self)
}

/// One line on standard error.
func warn(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}
