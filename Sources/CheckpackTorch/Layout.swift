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
        return FileLayout(itemBoundaries: starts.filter { $0 > 0 },
                          attributes: dtypes.isEmpty ? [:] : [itemDTypesKey: dtypes.joined(separator: ",")])
    }
}
