import CBytePlanes
import CZlib
import CZstd

/// The element layout of an item, which selects the byte-plane transform
/// (spec/FORMAT.md section 5.1) for its frames.
public struct ElementType: Sendable, Hashable, CustomStringConvertible {
    /// Bytes per element: 2, 4 or 8.
    public let size: Int
    /// IEEE-style float: the sign bit is rotated below the exponent.
    public let isFloat: Bool

    /// An element of `size` bytes (2, 4 or 8; nil for any other), an IEEE-style float when `isFloat`.
    public init?(size: Int, isFloat: Bool) {
        guard [2, 4, 8].contains(size) else { return nil }
        self.size = size
        self.isFloat = isFloat
    }

    /// The frame header's transform parameter: element size, bit 8 for floats.
    var parameter: UInt16 { UInt16(size) | (isFloat ? 0x100 : 0) }

    init?(parameter: UInt16) {
        guard parameter & ~0x1FF == 0 else { return nil }
        self.init(size: Int(parameter & 0xFF), isFloat: parameter & 0x100 != 0)
    }

    public var description: String { "\(size)-byte \(isFloat ? "float" : "integer")" }
}

/// Transform 1: a frame's elements split into byte planes, each plane stored
/// raw or coded with the frame's codec. Stored bytes: a table of one 8-byte
/// entry per plane (u32 length, u8 method, 3 zero bytes), the planes in
/// order, then the bytes after the last whole element, raw.
enum BytePlanes {
    static let transformID: UInt8 = 1
    static let tableEntrySize = 8
    enum Method: UInt8 { case raw = 0, coded = 1 }

    /// Encodes `input` as planes, or returns nil when that is not smaller than `input`.
    /// Each plane is coded straight into the result, which is never allowed to grow
    /// to `input`'s size: a plane that would take it there ends the attempt.
    static func encode(_ input: UnsafeRawBufferPointer, element: ElementType, codec: Codec, level: Int32) throws -> [UInt8]? {
        let e = element.size
        let count = input.count / e
        let tail = input.count - count * e
        guard count >= 1, codec != .stored, e * tableEntrySize < input.count else { return nil }
        return try withUnsafeTemporaryAllocation(byteCount: count * e, alignment: 64) { planes -> [UInt8]? in
            ckpk_planes_split(input.baseAddress!.assumingMemoryBound(to: UInt8.self), count, Int32(e), element.isFloat ? 1 : 0,
                              planes.baseAddress!.assumingMemoryBound(to: UInt8.self))
            var fits = true
            let out = try [UInt8](unsafeUninitializedCapacity: input.count - 1) { buffer, written in
                let out = UnsafeMutableRawBufferPointer(buffer)
                // The table goes first and is filled in as each plane is coded.
                var position = e * tableEntrySize
                UnsafeMutableRawBufferPointer(rebasing: out[..<position]).initializeMemory(as: UInt8.self, repeating: 0)
                written = position
                for j in 0..<e {
                    let plane = UnsafeRawBufferPointer(rebasing: planes[j * count..<(j + 1) * count])
                    let room = UnsafeMutableRawBufferPointer(rebasing: out[position...])
                    // Coded only when smaller than the plane.
                    let coded = try encodePlane(plane, into: UnsafeMutableRawBufferPointer(rebasing: room.prefix(count - 1)),
                                                codec: codec, level: level)
                    if coded == nil {
                        guard count <= room.count else { fits = false; return }   // planes cannot win: code no more of them
                        room.copyMemory(from: plane)
                    }
                    out.storeBytes(of: UInt32(coded ?? count).littleEndian, toByteOffset: j * tableEntrySize, as: UInt32.self)
                    out[j * tableEntrySize + 4] = (coded == nil ? Method.raw : Method.coded).rawValue
                    position += coded ?? count
                    written = position
                }
                guard tail <= out.count - position else { fits = false; return }
                UnsafeMutableRawBufferPointer(rebasing: out[position...]).copyMemory(from: UnsafeRawBufferPointer(rebasing: input[(count * e)...]))
                written = position + tail   // the bytes after the last whole element
            }
            return fits ? out : nil
        }
    }

    /// Codes `plane` into `output`: the bytes written, or nil to keep it raw.
    ///
    /// With zstd, a plane under 7.5 bits per byte (a float's exponent, the
    /// high bits of its mantissa) is coded by its Huffman literals alone:
    /// LZ matching found next to nothing there (0.002% of a 216 MB FSDP2
    /// archive) for 6% of the save's instructions. A plane at 7.5 bits or
    /// more stays raw without being tried: a frame's plane is 8-16 KiB, and
    /// there Huffman's whole-bit codes and its table eat what little such a
    /// plane offers. In one rank's file of an FSDP2 checkpoint, 1,600 of the
    /// 7,400 planes coded then gained 0.03 MB (0.015% of it), for 9% of the
    /// pack's instructions. On the low mantissa bytes (8 bits) zstd never
    /// found anything either.
    /// zlib has no literals-only mode: it tries every plane, a near-random
    /// one at level 1, and the plane stays raw unless that wins.
    private static func encodePlane(_ plane: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer,
                                    codec: Codec, level: Int32) throws -> Int? {
        let bits = ckpk_entropy_bits(plane.baseAddress!.assumingMemoryBound(to: UInt8.self), plane.count)
        guard codec == .zstd else {
            return try FrameCodec.compress(plane, into: output, codec: codec, level: bits < 7.0 ? level : min(level, 1))
        }
        guard bits < 7.5 else { return nil }
        // Levels up to 3 code literals alike; zstd's fastest level gets there 40% sooner.
        return try FrameCodec.compress(plane, into: output, codec: .zstd, level: level > 3 ? level : -1, literalsOnly: true)
    }

    /// Decodes stored bytes of a transform-1 frame into exactly `output.count` bytes.
    static func decode(_ stored: UnsafeRawBufferPointer, parameter: UInt16, codec: Codec,
                       into output: UnsafeMutableRawBufferPointer) throws {
        guard let element = ElementType(parameter: parameter) else {
            throw CheckpackError(.corrupt, "byte-plane transform parameter 0x\(String(parameter, radix: 16)) is not valid")
        }
        let e = element.size
        let count = output.count / e
        let tail = output.count - count * e
        guard count >= 1 else { throw CheckpackError(.corrupt, "byte-plane frame of \(output.count) bytes holds no whole \(e)-byte element") }
        let tableSize = e * tableEntrySize
        guard stored.count >= tableSize else { throw CheckpackError(.corrupt, "byte-plane table is truncated") }
        /// Plane j's table entry: its length, its method byte, and whether its reserved bytes are zero.
        func entry(_ j: Int) -> (length: Int, method: UInt8, reservedZero: Bool) {
            let at = j * tableEntrySize
            return (Int(UInt32(littleEndian: stored.loadUnaligned(fromByteOffset: at, as: UInt32.self))), stored[at + 4],
                    stored[at + 5] == 0 && stored[at + 6] == 0 && stored[at + 7] == 0)
        }
        // The whole table is checked before any plane is decoded.
        var position = tableSize
        var codedCount = 0
        for j in 0..<e {
            let (length, methodByte, reservedZero) = entry(j)
            guard reservedZero else { throw CheckpackError(.corrupt, "byte-plane table reserved bytes are not zero") }
            guard let method = Method(rawValue: methodByte) else { throw CheckpackError(.corrupt, "unknown plane method \(methodByte)") }
            switch method {
            case .raw: guard length == count else { throw CheckpackError(.corrupt, "raw plane \(j) has \(length) bytes, expected \(count)") }
            case .coded: guard length >= 1 else { throw CheckpackError(.corrupt, "coded plane \(j) is empty") }
            }
            guard length <= stored.count - position else { throw CheckpackError(.corrupt, "plane \(j) runs past the stored bytes") }
            position += length
            if method == .coded { codedCount += 1 }
        }
        guard stored.count - position == tail else {
            throw CheckpackError(.corrupt, "byte-plane frame has \(stored.count - position) bytes after its planes, expected \(tail)")
        }
        // Coded planes are decoded into scratch space; raw planes are read in place.
        try withUnsafeTemporaryAllocation(of: UnsafePointer<UInt8>?.self, capacity: e) { planes in
            try withUnsafeTemporaryAllocation(byteCount: max(1, codedCount * count), alignment: 64) { scratch in
                var start = tableSize
                var slot = 0
                for j in 0..<e {
                    let (length, method, _) = entry(j)
                    let bytes = UnsafeRawBufferPointer(rebasing: stored[start..<start + length])
                    if method == Method.coded.rawValue {
                        let target = UnsafeMutableRawBufferPointer(rebasing: scratch[slot * count..<(slot + 1) * count])
                        try FrameCodec.decompress(bytes, codec: codec, into: target)
                        planes[j] = UnsafePointer(target.baseAddress!.assumingMemoryBound(to: UInt8.self))
                        slot += 1
                    } else {
                        planes[j] = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
                    }
                    start += length
                }
                ckpk_planes_merge(planes.baseAddress!, count, Int32(e), element.isFloat ? 1 : 0,
                                  output.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        }
        if tail > 0 {
            UnsafeMutableRawBufferPointer(rebasing: output[(count * e)...]).copyMemory(from: UnsafeRawBufferPointer(rebasing: stored[position...]))
        }
    }
}
