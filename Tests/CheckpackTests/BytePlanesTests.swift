import CheckpackTestSupport
import CBytePlanes
@testable import Checkpack
import CheckpackStorage
import Testing

/// The byte-plane element of a torch dtype name (the storage layer's one table).
func element(_ dtype: String) -> ElementType? { DType(rawValue: dtype)?.planeElement }

/// Bytes that look like a tensor of `dtype`: floats near zero (skewed
/// exponents, noisy mantissas), or small integers.
func tensorLikeBytes(_ dtype: String, count: Int, seed: UInt64) -> [UInt8] {
    var rng = SplitMix(seed: seed)
    var out: [UInt8] = []
    out.reserveCapacity(count + 8)
    while out.count < count {
        let x = Double.random(in: -1...1, using: &rng) * Double.random(in: 0...0.1, using: &rng)
        switch dtype {
        case "float64", "complex128": out += withUnsafeBytes(of: x.bitPattern.littleEndian, Array.init)
        case "float32", "complex64": out += withUnsafeBytes(of: Float(x).bitPattern.littleEndian, Array.init)
        case "float16": out += withUnsafeBytes(of: Float16(x).bitPattern.littleEndian, Array.init)
        case "bfloat16": out += withUnsafeBytes(of: UInt16(Float(x).bitPattern >> 16).littleEndian, Array.init)
        default:
            let v = Int64(x * 5000)
            out += withUnsafeBytes(of: v.littleEndian, Array.init).prefix(element(dtype)?.size ?? 1)
        }
    }
    return Array(out.prefix(count))
}

@Suite struct BytePlanesTests {
    static let dtypes = ["bfloat16", "float16", "float32", "float64", "complex64", "complex128",
                         "int16", "uint16", "int32", "uint32", "int64", "uint64"]

    @Test(arguments: dtypes)
    func everyDTypeRoundTripsAtAnyLength(dtype: String) throws {
        let type = try #require(element(dtype))
        let e = type.size
        for length in [1, e - 1, e, e + 1, 3 * e + 1, 4096, 4096 + 3, 100_003] {
            let input = tensorLikeBytes(dtype, count: length, seed: UInt64(length))
            for codec in [Codec.zstd, .zlib] {
                let stored = try input.withUnsafeBytes { try BytePlanes.encode($0, element: type, codec: codec, level: codec.defaultLevel) }
                guard let stored else {
                    #expect(length < 64, "\(dtype), \(length) bytes, \(codec): planes did not win")
                    continue
                }
                #expect(stored.count < length)
                let decoded = try [UInt8](unsafeUninitializedCapacity: length) { buffer, n in
                    try stored.withUnsafeBytes { try BytePlanes.decode($0, parameter: type.parameter, codec: codec, into: UnsafeMutableRawBufferPointer(buffer)) }
                    n = length
                }
                #expect(decoded == input, "\(dtype), \(length) bytes, \(codec)")
            }
        }
    }

    /// With zstd a plane is Huffman coded below 7.5 bits per byte and kept raw,
    /// untried, from 7.5 up (spec/FORMAT.md's informative note on 5.1).
    @Test func planesAreCodedBelowSevenAndAHalfBitsAndKeptRawAbove() throws {
        let element = try #require(ElementType(size: 2, isFloat: false))
        var rng = SplitMix(seed: 7)
        // 16 Ki 2-byte integers: the high byte (plane 0) zero in `percent`% of them, else
        // any other value; the low byte (plane 1) any value.
        func encoded(zeros percent: UInt64) throws -> [UInt8]? {
            let bytes = (0..<(16 << 10)).flatMap { _ in
                [UInt8.random(in: 0...255, using: &rng), rng.next() % 100 < percent ? 0 : UInt8.random(in: 1...255, using: &rng)]
            }
            return try bytes.withUnsafeBytes { try BytePlanes.encode($0, element: element, codec: .zstd, level: 3) }
        }
        // 5.8 bits: plane 0 is coded; plane 1 (8 bits) stays raw.
        let skewed = try #require(try encoded(zeros: 40))
        #expect(skewed[4] == BytePlanes.Method.coded.rawValue && skewed[12] == BytePlanes.Method.raw.rawValue)
        // 7.76 bits: Huffman would save 2.5% of plane 0 (zstd codes it when asked), but it
        // is not tried, so no plane is smaller and the frame is not worth planes at all.
        #expect(try encoded(zeros: 8) == nil)
    }

    @Test func theSpecsExampleSplitsAsWritten() {
        // spec/FORMAT.md 5.1: bfloat16 1.0 (80 3F) and -1.0 (80 BF) → plane 0 = 7F 7F, plane 1 = 00 01.
        let input: [UInt8] = [0x80, 0x3F, 0x80, 0xBF]
        var planes = [UInt8](repeating: 0, count: 4)
        ckpk_planes_split(input, 2, 2, 1, &planes)
        #expect(planes == [0x7F, 0x7F, 0x00, 0x01])
        // float32 1.0 (00 00 80 3F): the exponent 0x7F alone in plane 0.
        var four = [UInt8](repeating: 0, count: 4)
        ckpk_planes_split([0x00, 0x00, 0x80, 0x3F], 1, 4, 1, &four)
        #expect(four == [0x7F, 0x00, 0x00, 0x00])
    }

    @Test func oneByteTypesAndUnknownNamesGetNoPlanes() {
        for name in ["uint8", "int8", "bool", "float8_e4m3fn", "-", "", "float128"] { #expect(element(name) == nil, "\(name)") }
        #expect(element("complex64") == ElementType(size: 4, isFloat: true))   // a complex number is its two floats
        #expect(ElementType(size: 1, isFloat: false) == nil && ElementType(size: 16, isFloat: true) == nil)
    }

    @Test func archivesUsePlanesForTypedItemsAndReadBackExactly() throws {
        let dir = Scratch()
        let floats = tensorLikeBytes("bfloat16", count: 300_001, seed: 1)
        let longs = tensorLikeBytes("int64", count: 80_000, seed: 2)
        let text = Array(String(repeating: "header bytes ", count: 100).utf8)
        let content = text + floats + longs
        let boundaries = [UInt64(text.count), UInt64(text.count + floats.count)]
        let writer = try ArchiveWriter(path: dir.sub("t.ckpk"), options: WriterOptions(frameSize: 64 << 10))
        try writer.addFile("t", contents: content, itemBoundaries: boundaries, itemTypes: [nil, element("bfloat16"), element("int64")])
        try writer.addFile("plain", contents: floats)
        try writer.finish()

        let reader = try ArchiveReader(path: dir.sub("t.ckpk"))
        #expect(reader.requiredFeatures == Format.bytePlanesFeature)
        let entry = try #require(reader.entry(named: "t"))
        let frames = try reader.frames(of: entry)
        #expect(frames.filter { $0.header.transform == 1 }.count >= 3)
        #expect(frames.allSatisfy { ($0.header.transform == 1) == ($0.header.entryOffset >= UInt64(text.count)) })
        // Typed items are cut into plane-sized frames; the untyped file is not.
        #expect(frames.filter { $0.header.transform == 1 }.allSatisfy { $0.header.decodedLength <= UInt32(WriterOptions.defaultPlaneFrameSize) })
        #expect(try reader.frames(of: try #require(reader.entry(named: "plain"))).allSatisfy { $0.header.transform == 0 })
        #expect(try reader.read(entry) == content)
        #expect(try reader.read(entry, offset: 12_345, count: 4096) == Array(content[12_345..<12_345 + 4096]))
        #expect(try reader.verify().isEmpty)
        let streamed = try streamContents(MemoryStream(readFile(dir.sub("t.ckpk")) ?? []))
        #expect(streamed["t"] == content)
        // Planes make the floats smaller than zstd alone does.
        let plain = try reader.frames(of: try #require(reader.entry(named: "plain"))).reduce(0) { $0 + Int($1.header.storedLength) }
        let planes = frames.filter { $0.header.entryOffset >= UInt64(text.count) && $0.header.entryOffset < boundaries[1] }.reduce(0) { $0 + Int($1.header.storedLength) }
        #expect(planes < plain)
    }

    @Test func typesGivenAtBoundariesLastForTheirItemOnly() throws {
        // As the Python writer does: a typed item, then an untyped one, then typed again.
        let floats = tensorLikeBytes("float32", count: 100_000, seed: 4)
        let text = Array(String(repeating: "zip record bytes ", count: 6000).utf8)
        let bytes = try buildArchive { writer in
            try writer.beginFile("t")
            try writer.write(text)
            try writer.markItemBoundary(elementType: element("float32"))
            try writer.write(floats)
            try writer.markItemBoundary()
            try writer.write(text)
            try writer.markItemBoundary(elementType: element("bfloat16"))
            try writer.write(floats)
            try writer.endFile()
        }
        let reader = try ArchiveReader(source: MemorySource(bytes))
        let entry = try #require(reader.entry(named: "t"))
        #expect(try reader.read(entry) == text + floats + text + floats)
        let starts = [0, text.count, text.count + floats.count, 2 * text.count + floats.count].map(UInt64.init)
        for frame in try reader.frames(of: entry) {
            let item = starts.lastIndex { $0 <= frame.header.entryOffset } ?? 0
            #expect(frame.header.transform == (item % 2 == 1 ? 1 : 0), "frame at \(frame.header.entryOffset)")
            #expect(frame.header.transformParameter == [0, 0x104, 0, 0x102][item])
        }
        // The untyped items keep the ordinary frame size: one frame each.
        #expect(try reader.frames(of: entry).filter { $0.header.transform == 0 }.count == 2)
    }

    @Test func turningPlanesOffWritesPlainFramesAndNoFeatureBit() throws {
        var options = WriterOptions()
        options.bytePlanes = false
        let bytes = try buildArchive(options: options) { writer in
            try writer.addFile("t", contents: tensorLikeBytes("float32", count: 50_000, seed: 3), itemTypes: [element("float32")])
        }
        let reader = try ArchiveReader(source: MemorySource(bytes))
        #expect(reader.requiredFeatures == 0)
        #expect(try reader.entries.flatMap { try reader.frames(of: $0) }.allSatisfy { $0.header.transform == 0 })
    }
}

@Suite struct HostilePlaneFrameTests {
    @Test func aWellFormedPlaneFrameIsAccepted() throws {
        let decoded = (0..<4001).map { UInt8(truncatingIfNeeded: $0 / 7 % 32) }
        let element = try #require(ElementType(parameter: 0x102))
        let stored = try #require(try decoded.withUnsafeBytes { try BytePlanes.encode($0, element: element, codec: .zstd, level: 3) })
        var forge = Forge()
        forge.requiredFeatures = Format.bytePlanesFeature
        forge.entry("t", frames: [.init(codec: .zstd, stored: stored, decodedLength: UInt32(decoded.count),
                                        decodedCRC: CRC32C.checksum(decoded), transform: 1, parameter: 0x102)])
        let bytes = forge.finish()
        let reader = try ArchiveReader(source: MemorySource(bytes))
        #expect(try reader.read(try #require(reader.entry(named: "t"))) == decoded)
        #expect(try streamContents(MemoryStream(bytes))["t"] == decoded)
    }

    @Test func malformedPlaneFramesAreRefused() throws {
        let decoded = (0..<4000).map { UInt8(truncatingIfNeeded: $0 / 7 % 32) }
        let element = try #require(ElementType(parameter: 0x102))
        let good = try #require(try decoded.withUnsafeBytes { try BytePlanes.encode($0, element: element, codec: .zstd, level: 3) })
        func refused(_ stored: [UInt8], parameter: UInt16 = 0x102, codec: Codec = .zstd, features: UInt32 = Format.bytePlanesFeature,
                     _ what: String) throws {
            var forge = Forge()
            forge.requiredFeatures = features
            forge.entry("t", frames: [.init(codec: codec, stored: stored, decodedLength: UInt32(decoded.count),
                                            decodedCRC: CRC32C.checksum(decoded), transform: 1, parameter: parameter)])
            try expectRefused(forge.finish(), what)
        }
        var bad = good
        bad[4] = 7
        try refused(bad, "an unknown plane method")
        bad = good
        bad[5] = 1
        try refused(bad, "a non-zero reserved byte in the plane table")
        bad = good
        bad[0] &+= 1
        try refused(bad, "a plane length that does not add up")
        try refused(Array(good.prefix(12)), "a truncated plane table")
        try refused(good + [0], "a byte after the planes")
        try refused(good, parameter: 0x103, "element size 3")
        try refused(good, parameter: 0x302, "an unknown parameter bit")
        try refused(good, parameter: 0x104, "the wrong element size")
        try refused(good, features: 0, "planes without required feature bit 0")
        try refused(good, codec: .zlib, "planes coded with another codec than the frame says")
    }

    @Test func anUnknownFeatureBitIsRefusedUpFront() throws {
        var forge = Forge()
        forge.requiredFeatures = 2
        forge.entry("t", frames: [.init(stored: [1, 2, 3])])
        try expectRefused(forge.finish(), "required feature bit 1", kind: .unsupported)
    }
}

@Suite struct EntryFramerTests {
    /// Every frame the framer emits, for a sequence of writes and item cuts.
    static func frames(itemTypes: [ElementType?] = [], planes: Bool = true,
                       _ steps: (inout EntryFramer, (EntryFramer.Frame) -> Void) -> Void) -> [EntryFramer.Frame] {
        var framer = EntryFramer(itemTypes: itemTypes, planes: planes, frameSize: 10, planeFrameSize: 4)
        var out: [EntryFramer.Frame] = []
        steps(&framer) { out.append($0) }
        framer.close { out.append($0) }
        return out
    }

    @Test func framesAreCutAtTheFrameSizeAndAtEveryItem() {
        let out = Self.frames { framer, emit in
            [UInt8](repeating: 1, count: 25).withUnsafeBytes { framer.append($0, emit: emit) }
            framer.cutItem(emit: emit)
            framer.cutItem(emit: emit)   // a second cut at the same place starts no empty item
            [UInt8](repeating: 2, count: 3).withUnsafeBytes { framer.append($0, emit: emit) }
        }
        #expect(out.map(\.data.count) == [10, 10, 5, 3])
        #expect(out.map(\.entryOffset) == [0, 10, 20, 25])
        #expect(out.map(\.startsItem) == [false, false, false, true])
    }

    @Test func typedItemsGetPlaneFramesAndTheirTypeOnly() {
        let bf16 = element("bfloat16"), f32 = element("float32")
        let out = Self.frames(itemTypes: [nil, bf16]) { framer, emit in
            [UInt8](repeating: 0, count: 3).withUnsafeBytes { framer.append($0, emit: emit) }
            framer.cutItem(emit: emit)                       // item 1: bfloat16, from the list
            [UInt8](repeating: 0, count: 6).withUnsafeBytes { framer.append($0, emit: emit) }
            framer.cutItem(elementType: .some(f32), emit: emit)   // item 2: float32, given at its boundary
            [UInt8](repeating: 0, count: 4).withUnsafeBytes { framer.append($0, emit: emit) }
            framer.cutItem(emit: emit)                       // item 3: untyped again
            [UInt8](repeating: 0, count: 12).withUnsafeBytes { framer.append($0, emit: emit) }
        }
        #expect(out.map(\.data.count) == [3, 4, 2, 4, 10, 2])
        #expect(out.map(\.element) == [nil, bf16, bf16, f32, nil, nil])
        #expect(Self.frames(itemTypes: [bf16], planes: false) { framer, emit in
            [UInt8](repeating: 0, count: 6).withUnsafeBytes { framer.append($0, emit: emit) }
        }.map(\.element) == [nil])
    }
}
