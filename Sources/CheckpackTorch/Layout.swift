import Checkpack
import CheckpackStorage
import Foundation

/// Format-aware packing: where the items of a checkpoint's files start, so
/// that frames are cut at them and each item's dtype is recorded.
public enum CheckpointLayout {
    /// Attribute naming each item's dtype, in item order (spec/FORMAT.md 4.4).
    public static let itemDTypesKey = Format.itemDTypesKey

    /// Layouts for the files of the checkpoint directory `directory`: a torch
    /// DCP (or checkpack) directory by its `.metadata`, and every
    /// `*.safetensors` file by its header. Other files get none.
    public static func layouts(forDirectory directory: String) throws -> [String: FileLayout] {
        let tree = Inspector.Tree.directory(directory)
        var layouts: [String: FileLayout] = [:]
        let names = tree.names
        if names.contains(".metadata") {
            let (metadata, format, transformed) = try Inspector.decodeMetadataFile(try tree.read(".metadata"),
                                                                                   source: directory + "/.metadata")
            // torch writes each tensor with torch.save; items with stream
            // transforms (torch's ZStandard extension) are opaque bytes.
            let items = format == .torchDistributed ? TensorItems.torchSaved(opaque: transformed) : .raw
            layouts.merge(dcpLayouts(metadata, items: items, directory: directory)) { a, _ in a }
        }
        for name in names where name.hasSuffix(".safetensors") {
            let file = try SystemFile.openForReading(directory + "/" + name)
            let header = try SafetensorsHeader.parse({ try file.read(count: $1, at: $0) }, fileSize: try file.size, name: name)
            layouts[name] = safetensorsLayout(header.tensors, dataStart: header.dataStart)
        }
        return layouts
    }

    /// What a tensor item's bytes are.
    enum TensorItems {
        /// The elements themselves (this package's checkpoints).
        case raw
        /// A torch.save zip whose storage record holds the elements; the
        /// listed items are something else (compressed by a stream transform).
        case torchSaved(opaque: Set<MetadataIndex>)
    }

    /// Items are the byte ranges the metadata gives, per data file; inside a
    /// torch.save item, the storage record is an item of its own.
    static func dcpLayouts(_ metadata: Metadata, items kind: TensorItems = .raw, directory: String? = nil) -> [String: FileLayout] {
        var ranges: [String: [(range: Range<UInt64>, dtype: String)]] = [:]
        var files: [String: SystemFile] = [:]
        for (index, info) in metadata.storageData {
            let range = info.offset..<info.offset + info.length
            guard case .tensor(let t)? = metadata.stateDictMetadata[index.fqn] else {
                ranges[info.relativePath, default: []].append((range, "-"))
                continue
            }
            let dtype = t.properties.dtype.rawValue
            switch kind {
            case .raw:
                ranges[info.relativePath, default: []].append((range, dtype))
            case .torchSaved(let opaque):
                var storage: Range<UInt64>? = nil
                if !opaque.contains(index), let directory {
                    if files[info.relativePath] == nil {
                        files[info.relativePath] = try? SystemFile.openForReading(directory + "/" + info.relativePath)
                    }
                    storage = files[info.relativePath].flatMap { TorchSaveZip.storageRecord(in: $0, item: range) }
                }
                if let storage {
                    ranges[info.relativePath, default: []].append(contentsOf: [
                        (range.lowerBound..<storage.lowerBound, "-"), (storage, dtype), (storage.upperBound..<range.upperBound, "-"),
                    ])
                } else {
                    ranges[info.relativePath, default: []].append((range, "-"))
                }
            }
        }
        return ranges.mapValues { items in
            layout(items.sorted { $0.range.lowerBound < $1.range.lowerBound })
        }
    }

    static func safetensorsLayout(_ tensors: [SafetensorsHeader.Tensor], dataStart: UInt64) -> FileLayout {
        layout([(0..<dataStart, "-")] + tensors.map { (dataStart + $0.range.lowerBound..<dataStart + $0.range.upperBound, $0.dtype.rawValue) })
    }

    /// Boundaries at every item start, with one dtype per item ("-" for bytes
    /// that are not one tensor's, such as a gap between items or a file
    /// header). The last item runs to the end of the file.
    static func layout(_ items: [(range: Range<UInt64>, dtype: String)]) -> FileLayout {
        var starts: [UInt64] = []
        var dtypes: [String] = []
        var position: UInt64 = 0
        for item in items where !item.range.isEmpty && item.range.lowerBound >= position {
            if item.range.lowerBound > position {   // a gap before the item is an item of its own
                starts.append(position)
                dtypes.append("-")
            }
            starts.append(item.range.lowerBound)
            dtypes.append(item.dtype)
            position = item.range.upperBound
        }
        return FileLayout(itemBoundaries: starts.filter { $0 > 0 }, itemTypes: dtypes.map { DType(rawValue: $0)?.planeElement },
                          attributes: dtypes.isEmpty ? [:] : [itemDTypesKey: dtypes.joined(separator: ",")])
    }
}

/// The zip records torch.save writes, named as Go's archive/zip names them
/// (APPNOTE.TXT sections 4.3.7, 4.3.12, 4.3.14-16).
enum Zip {
    static let fileHeaderSignature: UInt64 = 0x0403_4B50
    static let fileHeaderLength = 30
    static let directoryHeaderSignature: UInt64 = 0x0201_4B50
    static let directoryHeaderLength = 46
    static let endSignature: UInt64 = 0x0605_4B50
    static let endLength = 22
    static let end64LocatorSignature: UInt64 = 0x0706_4B50
    static let end64LocatorLength = 20
    static let end64Signature: UInt64 = 0x0606_4B50
}

/// Finds the storage record inside one torch.save zip (an item of a torch
/// DCP file). torch stores records uncompressed, the storage's raw
/// little-endian elements in the record named `…/data/<key>`; it streams
/// them, so sizes are only in the central directory at the item's end.
/// Every number is checked against the item; anything unexpected yields nil
/// and the item is then packed as plain bytes.
enum TorchSaveZip {
    static let tailReadLimit = 1 << 20

    /// Little-endian fields of a byte array, nil past its end.
    struct Fields {
        let bytes: [UInt8]
        func u16(_ at: Int) -> UInt64? {
            guard at >= 0, at + 2 <= bytes.count else { return nil }
            return UInt64(bytes[at]) | UInt64(bytes[at + 1]) << 8
        }
        func u32(_ at: Int) -> UInt64? {
            guard let low = u16(at), let high = u16(at + 2) else { return nil }
            return low | high << 16
        }
        func u64(_ at: Int) -> UInt64? {
            guard let low = u32(at), let high = u32(at + 4) else { return nil }
            return low | high << 32
        }
    }

    static func storageRecord(in file: SystemFile, item: Range<UInt64>) -> Range<UInt64>? {
        let itemLength = item.upperBound - item.lowerBound
        let tailLength = Int(min(itemLength, UInt64(tailReadLimit)))
        guard tailLength >= Zip.endLength, let tailBytes = try? file.read(count: tailLength, at: item.upperBound - UInt64(tailLength)) else { return nil }
        let tail = Fields(bytes: tailBytes)
        let tailStart = itemLength - UInt64(tailLength)   // item offset of tail[0]
        // The end-of-central-directory record closes the item (torch writes no comment).
        let eocd = tailLength - Zip.endLength
        guard tail.u32(eocd) == Zip.endSignature, tail.u16(eocd + 20) == 0,
              var entries = tail.u16(eocd + 10), var directorySize = tail.u32(eocd + 12),
              var directoryOffset = tail.u32(eocd + 16) else { return nil }
        if entries == 0xFFFF || directorySize == 0xFFFF_FFFF || directoryOffset == 0xFFFF_FFFF {
            // zip64: a locator right before the record points at the zip64 end record.
            guard tail.u32(eocd - Zip.end64LocatorLength) == Zip.end64LocatorSignature, let end64 = tail.u64(eocd - Zip.end64LocatorLength + 8),
                  end64 >= tailStart, end64 < itemLength else { return nil }
            let at = Int(end64 - tailStart)
            guard tail.u32(at) == Zip.end64Signature, let n = tail.u64(at + 32), let size = tail.u64(at + 40),
                  let offset = tail.u64(at + 48) else { return nil }
            (entries, directorySize, directoryOffset) = (n, size, offset)
        }
        guard directoryOffset >= tailStart, directorySize <= itemLength - directoryOffset else { return nil }
        var at = Int(directoryOffset - tailStart)
        for _ in 0..<min(entries, 1 << 16) {
            guard tail.u32(at) == Zip.directoryHeaderSignature, let method = tail.u16(at + 10),
                  var size = tail.u32(at + 20), let nameLength = tail.u16(at + 28).map(Int.init),
                  let extraLength = tail.u16(at + 30).map(Int.init), let commentLength = tail.u16(at + 32).map(Int.init),
                  var localOffset = tail.u32(at + 42), at + Zip.directoryHeaderLength + nameLength + extraLength <= tailLength else { return nil }
            let name = tailBytes[(at + Zip.directoryHeaderLength)..<(at + Zip.directoryHeaderLength + nameLength)]
            if method == 0, let slash = name.lastIndex(of: UInt8(ascii: "/")), name[..<slash].suffix(5).elementsEqual("/data".utf8) {
                // zip64 extra field: the sizes and offset that did not fit, in this order.
                let extra = Fields(bytes: Array(tailBytes[(at + Zip.directoryHeaderLength + nameLength)..<(at + Zip.directoryHeaderLength + nameLength + extraLength)]))
                if size == 0xFFFF_FFFF || localOffset == 0xFFFF_FFFF {
                    guard let values = zip64Values(extra) else { return nil }
                    var next = values.makeIterator()
                    if tail.u32(at + 24) == 0xFFFF_FFFF { _ = next.next() }   // uncompressed size
                    if size == 0xFFFF_FFFF { guard let v = next.next() else { return nil }; size = v }
                    if localOffset == 0xFFFF_FFFF { guard let v = next.next() else { return nil }; localOffset = v }
                }
                return dataRange(file: file, item: item, localOffset: localOffset, size: size)
            }
            at += Zip.directoryHeaderLength + nameLength + extraLength + commentLength
        }
        return nil
    }

    /// Where a record's data starts: after its local header, name and extra field.
    private static func dataRange(file: SystemFile, item: Range<UInt64>, localOffset: UInt64, size: UInt64) -> Range<UInt64>? {
        let itemLength = item.upperBound - item.lowerBound
        guard size > 0, localOffset < itemLength, itemLength - localOffset >= UInt64(Zip.fileHeaderLength),
              let header = try? file.read(count: Zip.fileHeaderLength, at: item.lowerBound + localOffset) else { return nil }
        let local = Fields(bytes: header)
        guard local.u32(0) == Zip.fileHeaderSignature, let nameLength = local.u16(26), let extraLength = local.u16(28) else { return nil }
        let dataOffset = localOffset + UInt64(Zip.fileHeaderLength) + nameLength + extraLength
        guard dataOffset <= itemLength, size <= itemLength - dataOffset else { return nil }
        return item.lowerBound + dataOffset..<item.lowerBound + dataOffset + size
    }

    /// The 64-bit values of a zip64 extended-information extra field (id 1).
    private static func zip64Values(_ extra: Fields) -> [UInt64]? {
        var at = 0
        while let id = extra.u16(at), let length = extra.u16(at + 2).map(Int.init) {
            if id == 1 { return (0..<length / 8).compactMap { extra.u64(at + 4 + 8 * $0) } }
            at += 4 + length
        }
        return nil
    }
}
