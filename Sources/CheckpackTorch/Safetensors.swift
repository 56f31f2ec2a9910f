import Checkpack
import CheckpackStorage
import Foundation

/// The header of a safetensors file: an 8-byte little-endian length, then a
/// JSON object naming each tensor's dtype, shape and byte range. Every number
/// is checked (ShapeMath) before it is used; memory is a small multiple of the
/// header, which is at most 100 MiB as the format says.
public enum SafetensorsHeader {
    static let types: [String: DType] = [
        "F64": .float64, "F32": .float32, "F16": .float16, "BF16": .bfloat16,
        "F8_E4M3": .float8_e4m3fn, "F8_E5M2": .float8_e5m2,
        "I64": .int64, "I32": .int32, "I16": .int16, "I8": .int8,
        "U64": .uint64, "U32": .uint32, "U16": .uint16, "U8": .uint8, "BOOL": .bool,
        "C64": .complex64,
    ]

    /// One tensor of a safetensors header: its byte range is relative to the end of the header.
    public struct Tensor: Sendable {
        public var name: String
        public var dtype: DType
        public var shape: [Int]
        public var range: Range<UInt64>
    }

    /// One value of a safetensors header: a tensor's entry, or anything else
    /// (`__metadata__` is a map of strings; any other key must be a tensor).
    enum Value: Decodable {
        case tensor(Entry)
        case other

        struct Entry: Decodable {
            var dtype: String
            var shape: [Int]
            var dataOffsets: [Int]
            enum CodingKeys: String, CodingKey { case dtype, shape, dataOffsets = "data_offsets" }
        }

        init(from decoder: Decoder) throws {
            self = (try? Entry(from: decoder)).map(Value.tensor) ?? .other
        }
    }

    /// Parses a safetensors header (8-byte little-endian length, then JSON)
    /// from the start of a file; returns the tensors and where the data starts.
    public static func parse(_ read: (UInt64, Int) throws -> [UInt8], fileSize: UInt64, name: String) throws
        -> (tensors: [Tensor], dataStart: UInt64) {
        guard fileSize >= 8 else { throw CheckpackError(.corrupt, "\(name): too short for a safetensors file") }
        let lengthBytes = try read(0, 8)
        let length = lengthBytes.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * $1.offset) }
        guard length <= 100 << 20, 8 + length <= fileSize else {
            throw CheckpackError(.corrupt, "\(name): safetensors header of \(length) bytes does not fit the file")
        }
        let json = try read(8, Int(length))
        // Decoded into plain values (not Foundation objects): memory stays a small multiple of the header.
        let header: [String: Value]
        do {
            header = try JSONDecoder().decode([String: Value].self, from: Data(json))
        } catch {
            throw CheckpackError(.corrupt, "\(name): safetensors header is not a JSON object")
        }
        let dataStart = 8 + length
        var tensors: [Tensor] = []
        tensors.reserveCapacity(header.count)
        for (key, value) in header where key != "__metadata__" {
            guard case .tensor(let info) = value, info.dataOffsets.count == 2,
                  info.dataOffsets[0] >= 0, info.dataOffsets[1] >= info.dataOffsets[0] else {
                throw CheckpackError(.corrupt, "\(name): tensor \"\(key)\" has a malformed header entry")
            }
            guard let dtype = types[info.dtype] else {
                throw CheckpackError(.corrupt, "\(name): tensor \"\(key)\" has unknown dtype \(info.dtype)")
            }
            let range = UInt64(info.dataOffsets[0])..<UInt64(info.dataOffsets[1])
            guard let bytes = ShapeMath.byteCount(info.shape, elementSize: dtype.elementSize),
                  range.upperBound <= fileSize - dataStart, range.count == UInt64(bytes) else {
                throw CheckpackError(.corrupt, "\(name): tensor \"\(key)\" bytes \(range) do not match its shape \(info.shape) or the file")
            }
            tensors.append(.init(name: key, dtype: dtype, shape: info.shape, range: range))
        }
        return (tensors.sorted { $0.range.lowerBound < $1.range.lowerBound }, dataStart)
    }

}
