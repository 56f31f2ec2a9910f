// A pickle reader that never executes anything: it interprets the opcodes of
// pickle protocols 2 to 5 into plain values. Globals resolve only against an
// allowlist; calls (REDUCE, NEWOBJ) and BUILD are recorded as objects with
// their arguments and state, for the caller to interpret.

/// A module attribute named by a pickle (a class, a function, a dtype).
public struct PickleGlobal: Sendable, Hashable, CustomStringConvertible {
    public var module: String
    public var name: String
    public var description: String { "\(module).\(name)" }
}

/// A mutable list (pickles append to lists after creating and memoizing them).
public final class PickleList: @unchecked Sendable {
    public internal(set) var items: [PickleValue] = []
    var shape = Shape()
}

/// A mutable dict, as key/value pairs in insertion order.
public final class PickleDict: @unchecked Sendable {
    public internal(set) var items: [(key: PickleValue, value: PickleValue)] = []
    var shape = Shape()

    /// The value under a string key.
    public subscript(key: String) -> PickleValue? {
        items.first { if case .string(let k) = $0.key { return k == key } else { return false } }?.value
    }
}

/// A call recorded, not made: `type(*arguments)`, then `BUILD` with `state`.
public final class PickleObject: @unchecked Sendable {
    public let type: PickleGlobal
    public let arguments: [PickleValue]
    public internal(set) var state: PickleValue?
    var shape: Shape
    init(type: PickleGlobal, arguments: [PickleValue], depth: Int) {
        self.type = type
        self.arguments = arguments
        self.shape = Shape(depth: depth)
    }
}

/// How deep a container's contents nest, and whether it is complete. A
/// container is complete once it is put into another value; it may not
/// change after that. Pickles of ordinary data never need to (Python's
/// pickler fills a container before using it), and the rule makes reference
/// cycles impossible and keeps every recorded depth exact.
struct Shape {
    var depth = 1
    var frozen = false
}

public enum PickleValue: Sendable {
    case none
    case bool(Bool)
    case int(Int64)
    case float(Double)
    case string(String)
    case bytes([UInt8])
    case tuple([PickleValue])
    case list(PickleList)
    case dict(PickleDict)
    case global(PickleGlobal)
    case object(PickleObject)
}

public struct PickleError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var offset: Int
    public var description: String { "pickle byte \(offset): \(message)" }
}

public struct PickleReader {
    /// The globals a pickle may name; anything else is an error naming it.
    public let allowed: Set<PickleGlobal>
    /// Bounds that keep hostile input from exhausting memory.
    public var maxInput = 1 << 30
    public var maxStack = 1 << 20

    public init(allowed: Set<PickleGlobal>) { self.allowed = allowed }

    /// How deeply values may nest (Swift frees nested values recursively).
    public var maxDepth = 512

    private enum Slot {
        case value(PickleValue, depth: Int)
        case mark
    }

    public func read(_ data: [UInt8]) throws -> PickleValue {
        guard data.count <= maxInput else { throw PickleError(message: "input of \(data.count) bytes is too large", offset: 0) }
        var stack: [Slot] = []
        var memo: [Int: Slot] = [:]
        var position = 0
        var opcodeStart = 0

        func fail(_ message: String) -> PickleError { PickleError(message: message, offset: opcodeStart) }
        func take(_ count: Int) throws -> ArraySlice<UInt8> {
            guard count >= 0, count <= data.count - position else { throw fail("truncated (needs \(count) bytes)") }
            defer { position += count }
            return data[position..<position + count]
        }
        func unsigned(_ count: Int) throws -> UInt64 {
            var value: UInt64 = 0
            for (i, byte) in try take(count).enumerated() { value |= UInt64(byte) << (8 * i) }
            return value
        }
        func length(_ count: Int) throws -> Int {
            let n = try unsigned(count)
            guard n <= UInt64(data.count - position) else { throw fail("length \(n) runs past the end") }
            return Int(n)
        }
        /// The depth of a value: a container's own (it may still grow), else the recorded one.
        func depth(_ value: PickleValue, _ recorded: Int) -> Int {
            switch value {
            case .list(let l): return l.shape.depth
            case .dict(let d): return d.shape.depth
            case .object(let o): return o.shape.depth
            default: return recorded
            }
        }
        /// Marks a value as complete: it is being put into another one.
        func freeze(_ value: PickleValue) {
            switch value {
            case .list(let l): l.shape.frozen = true
            case .dict(let d): d.shape.frozen = true
            case .object(let o): o.shape.frozen = true
            default: break
            }
        }
        func checked(_ depth: Int) throws -> Int {
            guard depth <= maxDepth else { throw fail("values nest deeper than \(maxDepth)") }
            return depth
        }
        /// Makes room in a container for values of `inner` depth.
        func grow(_ shape: inout Shape, _ inner: Int, _ what: String) throws {
            guard !shape.frozen else { throw fail("\(what) is changed after it was used (a recursive or unusual pickle)") }
            shape.depth = try checked(max(shape.depth, inner + 1))
        }
        func push(_ value: PickleValue, depth: Int = 0) throws {
            guard stack.count < maxStack else { throw fail("stack deeper than \(maxStack)") }
            stack.append(.value(value, depth: depth))
        }
        func popSlot() throws -> (PickleValue, Int) {
            guard case .value(let v, let d)? = stack.popLast() else { throw fail("stack underflow or unexpected mark") }
            return (v, depth(v, d))
        }
        func pop() throws -> PickleValue { try popSlot().0 }
        func popToMark() throws -> [(PickleValue, Int)] {
            guard let mark = stack.lastIndex(where: { if case .mark = $0 { return true } else { return false } }) else {
                throw fail("no mark on the stack")
            }
            let values = stack[(mark + 1)...].map { slot -> (PickleValue, Int) in
                if case .value(let v, let d) = slot { return (v, depth(v, d)) }
                return (.none, 0)
            }
            stack.removeSubrange(mark...)
            return values
        }
        func top() throws -> PickleValue {
            guard case .value(let v, _)? = stack.last else { throw fail("stack underflow") }
            return v
        }
        /// A tuple of values, which become complete.
        func tuple(_ items: [(PickleValue, Int)]) throws {
            items.forEach { freeze($0.0) }
            try push(.tuple(items.map(\.0)), depth: try checked(1 + (items.map(\.1).max() ?? 0)))
        }
        func string(_ bytes: ArraySlice<UInt8>) throws -> String {
            guard let s = String(validating: bytes, as: UTF8.self) else { throw fail("string is not valid UTF-8") }
            return s
        }
        func resolve(_ module: String, _ name: String) throws -> PickleValue {
            let global = PickleGlobal(module: module, name: name)
            guard allowed.contains(global) else { throw fail("global \(global) is not allowed") }
            return .global(global)
        }
        func call(_ arguments: (PickleValue, Int)) throws {
            guard case .tuple(let args) = arguments.0 else { throw fail("a call needs an argument tuple") }
            guard case .global(let g) = try pop() else { throw fail("call of something that is not an allowed global") }
            freeze(arguments.0)
            let object = PickleObject(type: g, arguments: args, depth: try checked(arguments.1 + 1))
            try push(.object(object))
        }
        func memoIndex(_ count: Int) throws -> Int { Int(try unsigned(count)) }
        func fetch(_ index: Int) throws {
            guard let slot = memo[index] else { throw fail("memo \(index) is not set") }
            guard stack.count < maxStack else { throw fail("stack deeper than \(maxStack)") }
            stack.append(slot)
        }
        func remember(_ index: Int) throws {
            guard let slot = stack.last, case .value = slot else { throw fail("nothing to memoize") }
            memo[index] = slot
        }
        func setItems(_ pairs: [(PickleValue, Int)]) throws {
            guard pairs.count % 2 == 0, case .dict(let dict) = try top() else { throw fail("SETITEMS needs a dict and pairs") }
            for (value, d) in pairs {
                freeze(value)
                try grow(&dict.shape, d, "a dict")
            }
            for i in stride(from: 0, to: pairs.count, by: 2) { dict.items.append((pairs[i].0, pairs[i + 1].0)) }
        }
        func appendItems(_ items: [(PickleValue, Int)]) throws {
            guard case .list(let list) = try top() else { throw fail("APPENDS needs a list") }
            for (value, d) in items {
                freeze(value)
                try grow(&list.shape, d, "a list")
            }
            list.items += items.map(\.0)
        }

        while position < data.count {
            opcodeStart = position
            let op = data[position]
            position += 1
            switch op {
            case 0x80: _ = try take(1)                                   // PROTO
            case 0x95: _ = try unsigned(8)                               // FRAME (a hint only)
            case UInt8(ascii: "."):                                      // STOP
                let result = try pop()
                return result
            case UInt8(ascii: "("): stack.append(.mark)                  // MARK
            case UInt8(ascii: "0"): _ = try pop()                        // POP
            case UInt8(ascii: "1"): _ = try popToMark()                  // POP_MARK
            case UInt8(ascii: "2"):                                      // DUP
                guard let slot = stack.last, case .value = slot else { throw fail("DUP of nothing") }
                stack.append(slot)
            case UInt8(ascii: "N"): try push(.none)
            case 0x88: try push(.bool(true))
            case 0x89: try push(.bool(false))
            case UInt8(ascii: "J"): try push(.int(Int64(Int32(truncatingIfNeeded: try unsigned(4)))))
            case UInt8(ascii: "K"): try push(.int(Int64(try unsigned(1))))
            case UInt8(ascii: "M"): try push(.int(Int64(try unsigned(2))))
            case 0x8A, 0x8B:                                             // LONG1, LONG4
                let n = op == 0x8A ? Int(try unsigned(1)) : try length(4)
                guard n <= 8 else { throw fail("integer of \(n) bytes does not fit 64 bits") }
                var value: UInt64 = 0
                let bytes = try take(n)
                for (i, b) in bytes.enumerated() { value |= UInt64(b) << (8 * i) }
                if n > 0 && n < 8 && (bytes.last ?? 0) & 0x80 != 0 { value |= ~0 << (8 * n) }   // sign-extend
                try push(.int(Int64(bitPattern: value)))
            case UInt8(ascii: "G"):                                      // BINFLOAT, big-endian
                var bits: UInt64 = 0
                for b in try take(8) { bits = bits << 8 | UInt64(b) }
                try push(.float(Double(bitPattern: bits)))
            case 0x8C: try push(.string(try string(try take(try length(1)))))
            case UInt8(ascii: "X"): try push(.string(try string(try take(try length(4)))))
            case 0x8D: try push(.string(try string(try take(try length(8)))))
            case UInt8(ascii: "C"): try push(.bytes(Array(try take(try length(1)))))
            case UInt8(ascii: "B"): try push(.bytes(Array(try take(try length(4)))))
            case 0x8E, 0x96: try push(.bytes(Array(try take(try length(8)))))
            case UInt8(ascii: ")"): try push(.tuple([]))
            case UInt8(ascii: "t"): try tuple(try popToMark())
            case 0x85: try tuple([try popSlot()])
            case 0x86:
                let b = try popSlot(), a = try popSlot()
                try tuple([a, b])
            case 0x87:
                let c = try popSlot(), b = try popSlot(), a = try popSlot()
                try tuple([a, b, c])
            case UInt8(ascii: "]"), 0x8F: try push(.list(PickleList()))  // EMPTY_LIST; EMPTY_SET as a list
            case UInt8(ascii: "l"), 0x91:                                // LIST; FROZENSET as a list
                let items = try popToMark()
                try push(.list(PickleList()))
                try appendItems(items)
            case UInt8(ascii: "a"): try appendItems([try popSlot()])
            case UInt8(ascii: "e"), 0x90: try appendItems(try popToMark())   // APPENDS; ADDITEMS
            case UInt8(ascii: "}"): try push(.dict(PickleDict()))
            case UInt8(ascii: "d"):
                let pairs = try popToMark()
                try push(.dict(PickleDict()))
                try setItems(pairs)
            case UInt8(ascii: "s"):
                let value = try popSlot(), key = try popSlot()
                try setItems([key, value])
            case UInt8(ascii: "u"): try setItems(try popToMark())
            case UInt8(ascii: "c"):                                      // GLOBAL "module\nname\n"
                func line() throws -> String {
                    guard let end = data[position...].firstIndex(of: 0x0A) else { throw fail("GLOBAL without newline") }
                    defer { position = end + 1 }
                    return try string(data[position..<end])
                }
                let module = try line()
                try push(try resolve(module, try line()))
            case 0x93:                                                   // STACK_GLOBAL
                guard case .string(let name) = try pop(), case .string(let module) = try pop() else {
                    throw fail("STACK_GLOBAL needs two strings")
                }
                try push(try resolve(module, name))
            case UInt8(ascii: "R"), 0x81: try call(try popSlot())        // REDUCE, NEWOBJ
            case 0x92:                                                   // NEWOBJ_EX (keyword arguments dropped)
                _ = try pop()
                try call(try popSlot())
            case UInt8(ascii: "b"):                                      // BUILD
                let (state, d) = try popSlot()
                guard case .object(let object) = try top() else { throw fail("BUILD on something that is not an object") }
                freeze(state)
                try grow(&object.shape, d, "an object")
                object.state = state
            case 0x94: try remember(memo.count)                          // MEMOIZE
            case UInt8(ascii: "q"): try remember(try memoIndex(1))       // BINPUT
            case UInt8(ascii: "r"): try remember(try memoIndex(4))       // LONG_BINPUT
            case UInt8(ascii: "h"): try fetch(try memoIndex(1))          // BINGET
            case UInt8(ascii: "j"): try fetch(try memoIndex(4))          // LONG_BINGET
            default:
                throw fail("opcode 0x\(String(op, radix: 16)) is not supported (protocols 2-5 without persistent ids, extensions or out-of-band buffers)")
            }
        }
        throw PickleError(message: "no STOP before the end", offset: data.count)
    }
}
