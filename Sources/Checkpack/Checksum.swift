import CCRC32C

/// CRC32C (Castagnoli), as used for every checksum in the format.
package enum CRC32C {
    /// Continues `crc` (a finished CRC32C, 0 to start) over `bytes`.
    @inlinable
    public static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return crc }
        return ckpk_crc32c_update(crc, base, bytes.count)
    }

    public static func checksum<C: ContiguousCollection>(_ bytes: C, continuing crc: UInt32 = 0) -> UInt32
    where C.Element == UInt8 {
        bytes.withUnsafeBytes { update(crc, $0) }
    }

    /// The CRC32C of A followed by B, given `crc(A)`, `crc(B)` and B's length.
    public static func combine(_ a: UInt32, _ b: UInt32, length: UInt64) -> UInt32 {
        ckpk_crc32c_combine(a, b, length)
    }

    public static var usesHardware: Bool { ckpk_crc32c_uses_hardware() != 0 }
}

/// The collections whose bytes can be viewed in place.
public protocol ContiguousCollection: Collection where Element == UInt8 {
    /// Calls `body` with the collection's bytes, in place.
    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R
}
extension Array: ContiguousCollection where Element == UInt8 {}
extension ArraySlice: ContiguousCollection where Element == UInt8 {}
extension UnsafeRawBufferPointer: ContiguousCollection {
    /// Calls `body` with the bytes themselves.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R { try body(self) }
}
