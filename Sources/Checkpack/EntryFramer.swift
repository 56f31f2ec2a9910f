/// Cuts one file entry's content into frames as the format wants them: at
/// the frame size, and at every item boundary (each item starts a frame,
/// flagged in its header); an item of a known element type gets byte-plane
/// frames of the plane frame size. No I/O: the writer hands each frame it
/// emits to its compressing pipeline, and tests drive it alone.
struct EntryFramer {
    /// A frame to encode.
    struct Frame {
        var data: [UInt8]
        /// Where the frame's bytes start in the entry.
        var entryOffset: UInt64
        /// The frame starts an item (the first frame of the entry never does: item 0 starts at 0).
        var startsItem: Bool
        /// The element type when the frame goes into byte planes.
        var element: ElementType?
    }

    /// Bytes framed so far (the entry's size once closed).
    private(set) var size: UInt64 = 0
    /// The frame size of the item being written.
    private(set) var frameSize: Int
    /// Items started so far after the first (item k starts at the k-th boundary).
    private var boundaryCount = 0
    /// The next frame starts an item.
    private var itemStartPending = false
    private var buffer: [UInt8] = []
    /// The element type of each item, by item number, where known.
    private var itemTypes: [ElementType?]
    /// The element type of the item being written, when it goes into planes.
    private var element: ElementType? = nil
    private let planes: Bool
    private let plainFrameSize: Int
    private let planeFrameSize: Int

    /// `itemTypes[k]` is item k's element type; `planes` false codes every item plainly.
    init(itemTypes: [ElementType?], planes: Bool, frameSize: Int, planeFrameSize: Int) {
        self.itemTypes = itemTypes
        self.planes = planes
        plainFrameSize = frameSize
        self.planeFrameSize = planeFrameSize
        self.frameSize = frameSize
        startItem()
    }

    /// Appends `bytes`, emitting each frame that fills.
    mutating func append(_ bytes: UnsafeRawBufferPointer, emit: (Frame) throws -> Void) rethrows {
        var rest = bytes
        while !rest.isEmpty {
            if buffer.capacity < frameSize { buffer.reserveCapacity(frameSize) }
            let take = min(rest.count, frameSize - buffer.count)
            buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: rest[..<take]))
            rest = UnsafeRawBufferPointer(rebasing: rest[take...])
            if buffer.count == frameSize { try emit(takeFrame()) }
        }
    }

    /// Appends a buffer the caller gives up, without copying it when nothing is buffered.
    mutating func appendOwned(_ chunk: inout [UInt8], emit: (Frame) throws -> Void) rethrows {
        if buffer.isEmpty && chunk.count <= frameSize {
            swap(&buffer, &chunk)
            if buffer.count == frameSize { try emit(takeFrame()) }
        } else {
            try chunk.withUnsafeBytes { try append($0, emit: emit) }
        }
    }

    /// Ends the current item (emitting its last frame); `elementType`, when given, is the next item's.
    mutating func cutItem(elementType: ElementType?? = nil, emit: (Frame) throws -> Void) rethrows {
        if !buffer.isEmpty { try emit(takeFrame()) }
        if size > 0, !itemStartPending {
            boundaryCount += 1
            itemStartPending = true
        }
        if let elementType {
            if itemTypes.count <= boundaryCount { itemTypes += Array(repeating: nil, count: boundaryCount + 1 - itemTypes.count) }
            itemTypes[boundaryCount] = elementType
        }
        startItem()
    }

    /// The next `count` bytes as one frame whose bytes come later (a small file
    /// read on a compressing thread): the frame with empty data. Nothing may be buffered.
    mutating func reserveFrame(count: Int) -> Frame {
        var frame = takeFrame()
        size += UInt64(count)
        frame.data = []
        return frame
    }

    /// Emits the last frame.
    mutating func close(emit: (Frame) throws -> Void) rethrows {
        if !buffer.isEmpty { try emit(takeFrame()) }
    }

    private mutating func takeFrame() -> Frame {
        let frame = Frame(data: buffer, entryOffset: size, startsItem: itemStartPending, element: element)
        buffer = []
        size += UInt64(frame.data.count)
        itemStartPending = false
        return frame
    }

    /// Item 0 starts at offset 0, item k at the k-th boundary.
    private mutating func startItem() {
        let type = boundaryCount < itemTypes.count ? itemTypes[boundaryCount] : nil
        element = planes ? type : nil
        frameSize = element == nil ? plainFrameSize : planeFrameSize
    }
}
