/// Appends little-endian integers and raw bytes to a growing buffer.
package struct ByteWriter {
    package private(set) var bytes: [UInt8] = []

    package init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    package mutating func u8(_ value: UInt8) { bytes.append(value) }
    package mutating func u16(_ value: UInt16) { append(littleEndian: value) }
    package mutating func u32(_ value: UInt32) { append(littleEndian: value) }
    package mutating func u64(_ value: UInt64) { append(littleEndian: value) }
    package mutating func raw<C: Collection>(_ data: C) where C.Element == UInt8 { bytes.append(contentsOf: data) }

    /// Appends the CRC32C of everything written so far.
    mutating func crcOfAll() { u32(CRC32C.checksum(bytes)) }

    private mutating func append<T: FixedWidthInteger>(littleEndian value: T) {
        var v = value.littleEndian
        withUnsafeBytes(of: &v) { bytes.append(contentsOf: $0) }
    }
}

/// Reads little-endian integers from a byte slice; every read is bounds-checked
/// and a short buffer is reported as `truncated`.
package struct ByteReader {
    let bytes: ArraySlice<UInt8>
    private(set) var position: Int

    init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        self.position = bytes.startIndex
    }

    package init(_ bytes: [UInt8]) { self.init(bytes[...]) }

    package var remaining: Int { bytes.endIndex - position }
    var consumed: Int { position - bytes.startIndex }

    /// A little-endian u32 from exactly four bytes (0 for any other count).
    static func u32(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        guard bytes.count == 4 else { return 0 }
        return bytes.enumerated().reduce(0) { $0 | UInt32($1.element) << ($1.offset * 8) }
    }

    package mutating func u8() throws -> UInt8 { try integer() }
    package mutating func u16() throws -> UInt16 { try integer() }
    package mutating func u32() throws -> UInt32 { try integer() }
    package mutating func u64() throws -> UInt64 { try integer() }

    package mutating func take(_ count: Int) throws -> ArraySlice<UInt8> {
        guard count >= 0, count <= remaining else {
            throw CheckpackError(.truncated, "needs \(count) more bytes, has \(remaining)")
        }
        defer { position += count }
        return bytes[position..<position + count]
    }

    private mutating func integer<T: FixedWidthInteger>() throws -> T {
        let size = MemoryLayout<T>.size
        let slice = try take(size)
        var value: T = 0
        for (shift, byte) in slice.enumerated() { value |= T(byte) << (shift * 8) }
        return value
    }
}

extension Int {
    /// Converts a 64-bit count from a file, refusing values that do not fit.
    package init(checked value: UInt64, _ what: @autoclosure () -> String) throws {
        guard value <= UInt64(Int.max) else {
            throw CheckpackError(.limitExceeded, "\(what()) \(value) does not fit in memory")
        }
        self = Int(value)
    }
}

extension UInt64 {
    /// Addition that reports overflow of numbers read from a file as corruption.
    func adding(_ other: UInt64, _ what: @autoclosure () -> String) throws -> UInt64 {
        let (sum, overflow) = addingReportingOverflow(other)
        guard !overflow else { throw CheckpackError(.corrupt, "\(what()) overflows 64 bits") }
        return sum
    }

    func multiplied(by other: UInt64, _ what: @autoclosure () -> String) throws -> UInt64 {
        let (product, overflow) = multipliedReportingOverflow(by: other)
        guard !overflow else { throw CheckpackError(.corrupt, "\(what()) overflows 64 bits") }
        return product
    }
}
