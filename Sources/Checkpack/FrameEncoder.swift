/// Encodes one frame's bytes (spec section 5): chooses the transform and
/// codec, computes both CRC32Cs and builds the header. Runs on the writer's
/// compressing threads.
enum FrameEncoder {
    /// The frame for `data`: byte planes when the element type is known and
    /// they win; else the codec; else the bytes stored as they are.
    static func encode(_ data: [UInt8], entryOffset: UInt64, startsItem: Bool, codec: Codec, level: Int32,
                       element: ElementType?) throws -> (header: FrameHeader, payload: [UInt8]) {
        let decodedCRC = CRC32C.checksum(data)
        var transform: UInt8 = 0, parameter: UInt16 = 0
        var compressed: [UInt8]? = nil
        if let element {
            compressed = try data.withUnsafeBytes { try BytePlanes.encode($0, element: element, codec: codec, level: level) }
            if compressed != nil { (transform, parameter) = (BytePlanes.transformID, element.parameter) }
        }
        if compressed == nil {
            compressed = try data.withUnsafeBytes { try FrameCodec.compress($0, codec: codec, level: level) }
        }
        let payload = compressed ?? data
        let header = FrameHeader(codec: compressed == nil ? .stored : codec, transform: transform, transformParameter: parameter,
                                 entryOffset: entryOffset, storedLength: UInt32(payload.count), decodedLength: UInt32(data.count),
                                 storedCRC: compressed == nil ? decodedCRC : CRC32C.checksum(payload), decodedCRC: decodedCRC,
                                 startsItem: startsItem)
        return (header, payload)
    }
}
