/// The rules for entry names: relative, `/`-separated, UTF-8 paths that
/// cannot leave the directory they are unpacked into.
package enum EntryName {
    /// Returns the name as a String, or throws naming the rule it breaks.
    public static func validate(_ bytes: ArraySlice<UInt8>) throws -> String {
        func reject(_ why: String) -> CheckpackError {
            let shown = String(decoding: bytes.prefix(200), as: UTF8.self)
            return CheckpackError(.corrupt, "unsafe entry name \"\(shown)\": \(why)")
        }
        guard !bytes.isEmpty else { throw reject("empty") }
        guard bytes.count <= Format.maxNameLength else { throw reject("longer than \(Format.maxNameLength) bytes") }
        for byte in bytes {
            if byte < 0x20 || byte == 0x7F { throw reject("contains a control character") }
            if byte == UInt8(ascii: "\\") { throw reject("contains a backslash") }
        }
        for component in bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
            if component.isEmpty { throw reject("absolute, or has an empty path component") }
            if component.elementsEqual([UInt8(ascii: ".")]) || component.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) {
                throw reject("has a '.' or '..' component")
            }
            if component.count > Format.maxNameComponentLength {
                throw reject("has a component longer than \(Format.maxNameComponentLength) bytes")
            }
        }
        guard let name = String(validating: bytes, as: UTF8.self) else { throw reject("not valid UTF-8") }
        return name
    }

    public static func validate(_ name: String) throws {
        _ = try validate(Array(name.utf8)[...])
    }

    /// The proper ancestors of a name, as bytes: "a/b/c" → ["a", "a/b"].
    static func ancestors(of name: [UInt8]) -> [ArraySlice<UInt8>] {
        name.indices.filter { name[$0] == UInt8(ascii: "/") }.map { name[..<$0] }
    }
}

/// Checks that a sequence of entries forms a tree: names unique, and no
/// entry below a name that is a file. Names compare as their UTF-8 bytes
/// (spec section 7): "café" in NFC and in NFD are two names.
struct TreeCheck {
    private var kinds: [[UInt8]: EntryKind] = [:]
    private var ancestorNames: Set<[UInt8]> = []

    mutating func add(_ name: String, kind: EntryKind) throws {
        let bytes = Array(name.utf8)
        guard kinds[bytes] == nil else { throw CheckpackError(.corrupt, "duplicate entry name \"\(name)\"") }
        if kind == .file, ancestorNames.contains(bytes) {
            throw CheckpackError(.corrupt, "file entry \"\(name)\" is also the parent of another entry")
        }
        let parents = EntryName.ancestors(of: bytes).map(Array.init)
        for parent in parents where kinds[parent] == .file {
            throw CheckpackError(.corrupt, "entry \"\(name)\" lies below file entry \"\(String(decoding: parent, as: UTF8.self))\"")
        }
        ancestorNames.formUnion(parents)
        kinds[bytes] = kind
    }
}
