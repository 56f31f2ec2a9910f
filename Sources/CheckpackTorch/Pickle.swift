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
    public internal(set) var items: [PickleValue]
    init(_ items: [PickleValue] = []) { self.items = items }
}

/// A mutable dict, as key/value pairs in insertion order.
public final class PickleDict: @unchecked Sendable {
    public internal(set) var items: [(key: PickleValue, value: PickleValue)]
    init(_ items: [(key: PickleValue, value: PickleValue)] = []) { self.items = items }

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
    init(type: PickleGlobal, arguments: [PickleValue]) {
        self.type = type
        self.arguments = arguments
    }
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

    private enum Slot {
        case value(PickleValue)
        case mark
    }

    public func read(_ data: [UInt8]) throws -> PickleValue {
        guard data.count <= maxInput else { throw PickleError(message: "input of \(data.count) bytes is too large", offset: 0) }
        var stack: [Slot] = []
        var memo: [Int: PickleValue] = [:]
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
        func push(_ value: PickleValue) throws {
            guard stack.count < maxStack else { throw fail("stack deeper than \(maxStack)") }
            stack.append(.value(value))
        }
        func pop() throws -> PickleValue {
            guard case .value(let v)? = stack.popLast() else { throw fail("stack underflow or unexpected mark") }
            return v
        }
        func popToMark() throws -> [PickleValue] {
            guard let mark = stack.lastIndex(where: { if case .mark = $0 { return true } else { return false } }) else {
                throw fail("no mark on the stack")
            }
            let values = stack[(mark + 1)...].map { slot -> PickleValue in
                if case .value(let v) = slot { return v }
                return .none
            }
            stack.removeSubrange(mark...)
            return values
        }
        func top() throws -> PickleValue {
            guard case .value(let v)? = stack.last else { throw fail("stack underflow") }
            return v
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
        func callable(_ value: PickleValue) throws -> PickleGlobal {
            guard case .global(let g) = value else { throw fail("call of something that is not an allowed global") }
            return g
        }
        func memoIndex(_ count: Int) throws -> Int { Int(try unsigned(count)) }
        func fetch(_ index: Int) throws -> PickleValue {
            guard let v = memo[index] else { throw fail("memo \(index) is not set") }
            return v
        }
        func setItems(_ pairs: [PickleValue]) throws {
            guard pairs.count % 2 == 0, case .dict(let dict) = try top() else { throw fail("SETITEMS needs a dict and pairs") }
            for i in stride(from: 0, to: pairs.count, by: 2) { dict.items.append((pairs[i], pairs[i + 1])) }
        }
        func appendItems(_ items: [PickleValue]) throws {
            guard case .list(let list) = try top() else { throw fail("APPENDS needs a list") }
            list.items += items
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
            case UInt8(ascii: "2"): try push(try top())                  // DUP
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
            case UInt8(ascii: "t"): try push(.tuple(try popToMark()))
            case 0x85: try push(.tuple([try pop()]))
            case 0x86:
                let b = try pop(), a = try pop()
                try push(.tuple([a, b]))
            case 0x87:
                let c = try pop(), b = try pop(), a = try pop()
                try push(.tuple([a, b, c]))
            case UInt8(ascii: "]"): try push(.list(PickleList()))
            case UInt8(ascii: "l"): try push(.list(PickleList(try popToMark())))
            case UInt8(ascii: "a"): try appendItems([try pop()])
            case UInt8(ascii: "e"): try appendItems(try popToMark())
            case 0x8F: try push(.list(PickleList()))                     // EMPTY_SET, as a list
            case 0x90: try appendItems(try popToMark())                  // ADDITEMS
            case 0x91: try push(.list(PickleList(try popToMark())))      // FROZENSET
            case UInt8(ascii: "}"): try push(.dict(PickleDict()))
            case UInt8(ascii: "d"):
                let pairs = try popToMark()
                try push(.dict(PickleDict()))
                try setItems(pairs)
            case UInt8(ascii: "s"):
                let value = try pop(), key = try pop()
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
            case UInt8(ascii: "R"):                                      // REDUCE
                guard case .tuple(let arguments) = try pop() else { throw fail("REDUCE needs an argument tuple") }
                try push(.object(PickleObject(type: try callable(try pop()), arguments: arguments)))
            case 0x81:                                                   // NEWOBJ
                guard case .tuple(let arguments) = try pop() else { throw fail("NEWOBJ needs an argument tuple") }
                try push(.object(PickleObject(type: try callable(try pop()), arguments: arguments)))
            case 0x92:                                                   // NEWOBJ_EX
                _ = try pop()
                guard case .tuple(let arguments) = try pop() else { throw fail("NEWOBJ_EX needs an argument tuple") }
                try push(.object(PickleObject(type: try callable(try pop()), arguments: arguments)))
            case UInt8(ascii: "b"):                                      // BUILD
                let state = try pop()
                guard case .object(let object) = try top() else { throw fail("BUILD on something that is not an object") }
                object.state = state
            case 0x94: memo[memo.count] = try top()                      // MEMOIZE
            case UInt8(ascii: "q"): memo[try memoIndex(1)] = try top()   // BINPUT
            case UInt8(ascii: "r"): memo[try memoIndex(4)] = try top()   // LONG_BINPUT
            case UInt8(ascii: "h"): try push(try fetch(try memoIndex(1)))
            case UInt8(ascii: "j"): try push(try fetch(try memoIndex(4)))
            default:
                throw fail("opcode 0x\(String(op, radix: 16)) is not supported (protocols 2-5 without persistent ids, extensions or out-of-band buffers)")
            }
        }
        throw PickleError(message: "no STOP before the end", offset: data.count)
    }
}
