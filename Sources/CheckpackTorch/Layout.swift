import Checkpack
import CheckpackStorage
import Foundation

/// Format-aware packing: where the items of a checkpoint's files start, so
/// that frames are cut at them and each item's dtype is recorded.
public enum CheckpointLayout {
    /// Attribute naming each item's dtype, in item order (spec/FORMAT.md 4.4).
    public static let itemDTypesKey = "checkpack.item-dtypes"

    /// Layouts for the files of the checkpoint directory `directory`: a torch
    /// DCP (or checkpack) directory by its `.metadata`, and every
    /// `*.safetensors` file by its header. Other files get none.
    public static func layouts(forDirectory directory: String) throws -> [String: FileLayout] {
        let tree = Inspector.Tree.directory(directory)
        var layouts: [String: FileLayout] = [:]
        let names = tree.names
        if names.contains(".metadata") {
            let (metadata, _) = try Inspector.decodeMetadataFile(try tree.read(".metadata"), source: directory + "/.metadata")
            layouts.merge(dcpLayouts(metadata)) { a, _ in a }
        }
        for name in names where name.hasSuffix(".safetensors") {
            let file = try SystemFile.openForReading(directory + "/" + name)
            let header = try Inspector.safetensorsHeader({ try file.read(count: $1, at: $0) }, fileSize: try file.size, name: name)
            layouts[name] = safetensorsLayout(header.tensors, dataStart: header.dataStart)
        }
        return layouts
    }

    /// Items are the byte ranges the metadata gives, per data file.
    static func dcpLayouts(_ metadata: Metadata) -> [String: FileLayout] {
        var ranges: [String: [(range: Range<UInt64>, dtype: String)]] = [:]
        for (index, info) in metadata.storageData {
            var dtype = "-"
            if case .tensor(let t)? = metadata.stateDictMetadata[index.fqn] { dtype = t.properties.dtype.rawValue }
            ranges[info.relativePath, default: []].append((info.offset..<info.offset + info.length, dtype))
        }
        return ranges.mapValues { items in
            layout(items.sorted { $0.range.lowerBound < $1.range.lowerBound })
        }
    }

    static func safetensorsLayout(_ tensors: [Inspector.SafetensorsTensor], dataStart: UInt64) -> FileLayout {
        layout([(0..<dataStart, "-")] + tensors.map { (dataStart + $0.range.lowerBound..<dataStart + $0.range.upperBound, $0.dtype.rawValue) })
    }

    /// Items smaller than this share frames with their neighbours: a frame
    /// of its own would cost more (per-frame work, lost compression) than it gains.
    public static let smallItem: UInt64 = 64 << 10

    /// Boundaries at item starts, with one dtype per item ("-" for bytes that
    /// are not one tensor's elements). Runs of small items and gaps between
    /// items are merged into one item; the last item runs to the end of the file.
    static func layout(_ items: [(range: Range<UInt64>, dtype: String)]) -> FileLayout {
        // Split the file into pieces: the items, and the gaps before them.
        var pieces: [(start: UInt64, length: UInt64, dtype: String)] = []
        var position: UInt64 = 0
        for item in items where !item.range.isEmpty && item.range.lowerBound >= position {
            if item.range.lowerBound > position { pieces.append((position, item.range.lowerBound - position, "-")) }
            pieces.append((item.range.lowerBound, UInt64(item.range.count), item.dtype))
            position = item.range.upperBound
        }
        // Merge neighbouring small pieces.
        var merged: [(start: UInt64, length: UInt64, dtype: String)] = []
        for piece in pieces {
            if let last = merged.last, last.length < smallItem, piece.length < smallItem {
                merged[merged.count - 1].length += piece.length
                if last.dtype != piece.dtype { merged[merged.count - 1].dtype = "-" }
            } else {
                merged.append(piece)
            }
        }
        let boundaries = merged.map(\.start).filter { $0 > 0 }
        let dtypes = merged.map(\.dtype)
        return FileLayout(itemBoundaries: boundaries, attributes: dtypes.isEmpty ? [:] : [itemDTypesKey: dtypes.joined(separator: ",")])
    }
}
