import CheckpackTestSupport
import Checkpack
import Foundation
import Testing

@Suite(.serialized) struct CLITests {
    let dir = Scratch()

    init() throws {
        try RoundTripTests.makeTree(dir.sub("src"))
        #expect(FileManager.default.isExecutableFile(atPath: CLI.executable), "no checkpack binary at \(CLI.executable)")
    }

    @Test func packListVerifyCatUnpack() throws {
        let pack = try CLI.run(["pack", dir.sub("src"), dir.sub("a.ckpk"), "--frame-size", "4K", "--quiet"])
        #expect(pack.status == 0 && pack.stderr.isEmpty, "\(pack.stderr)")
        let list = try CLI.run(["ls", dir.sub("a.ckpk")])
        #expect(list.status == 0)
        #expect(String(decoding: list.stdout, as: UTF8.self).contains("nested/deeper/file.bin"))
        let json = try CLI.run(["ls", "--json", dir.sub("a.ckpk")])
        let parsed = try JSONSerialization.jsonObject(with: json.stdout) as? [[String: Any]]
        #expect(parsed?.count == 13)
        #expect(parsed?.first(where: { $0["name"] as? String == "frame-plus-1" })?["frames"] as? Int == 2)
        let verify = try CLI.run(["verify", dir.sub("a.ckpk")])
        #expect(verify.status == 0)
        let source = try #require(readFile(dir.sub("src/random")))
        let cat = try CLI.run(["cat", dir.sub("a.ckpk"), "random", "--offset", "4090", "--length", "10000"])
        #expect(cat.status == 0)
        #expect([UInt8](cat.stdout) == Array(source[4090..<14090]))
        let whole = try CLI.run(["cat", dir.sub("a.ckpk"), "random"])
        #expect([UInt8](whole.stdout) == source)
        let unpack = try CLI.run(["unpack", dir.sub("a.ckpk"), dir.sub("out"), "--quiet"])
        #expect(unpack.status == 0)
        #expect(TreeSnapshot(dir.sub("out")) == TreeSnapshot(dir.sub("src")))
    }

    @Test func unpackFromStandardInput() throws {
        #expect(try CLI.run(["pack", dir.sub("src"), dir.sub("a.ckpk"), "--quiet"]).status == 0)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: dir.sub("a.ckpk")))
        let unpack = try CLI.run(["unpack", "-", dir.sub("piped"), "--quiet"], stdin: bytes)
        #expect(unpack.status == 0, "\(unpack.stderr)")
        #expect(TreeSnapshot(dir.sub("piped")) == TreeSnapshot(dir.sub("src")))
        // A cut-off stream leaves nothing behind.
        let cut = try CLI.run(["unpack", "-", dir.sub("cut"), "--quiet"], stdin: bytes.prefix(bytes.count / 2))
        #expect(cut.status == 1)
        #expect(cut.stderrLines.count == 1)
        #expect(!FileManager.default.fileExists(atPath: dir.sub("cut")))
        #expect(!FileSystemHasLeftovers(dir.path))
    }

    @Test func damagedArchivesExitOneWithOneLinePerProblem() throws {
        #expect(try CLI.run(["pack", dir.sub("src"), dir.sub("a.ckpk"), "--frame-size", "4K", "--quiet"]).status == 0)
        var bytes = try #require(readFile(dir.sub("a.ckpk")))
        let reader = try ArchiveReader(path: dir.sub("a.ckpk"))
        let frames = try reader.frames(of: try #require(reader.entry(named: "random")))
        bytes[Int(frames[frames.startIndex].archiveOffset) + 100] ^= 1
        bytes[Int(frames[frames.startIndex + 2].archiveOffset) + 100] ^= 1
        try writeFile(dir.sub("bad.ckpk"), bytes)
        let verify = try CLI.run(["verify", dir.sub("bad.ckpk")])
        #expect(verify.status == 1)
        #expect(verify.stderrLines.count == 2, "\(verify.stderr)")
        #expect(verify.stderrLines.allSatisfy { $0.hasPrefix("checkpack: \(dir.sub("bad.ckpk")): entry \"random\", frame ") })
        let cat = try CLI.run(["cat", dir.sub("bad.ckpk"), "random"])
        #expect(cat.status == 1)
        #expect(cat.stderrLines.count == 1)
        let unpack = try CLI.run(["unpack", dir.sub("bad.ckpk"), dir.sub("bad-out")])
        #expect(unpack.status == 1)
        #expect(!FileManager.default.fileExists(atPath: dir.sub("bad-out")))

        try writeFile(dir.sub("short.ckpk"), Array(bytes.prefix(1000)))
        for command in [["ls"], ["verify"], ["cat"], ["unpack"]] {
            var arguments = command + [dir.sub("short.ckpk")]
            if command == ["cat"] { arguments.append("random") }
            if command == ["unpack"] { arguments.append(dir.sub("short-out")) }
            let result = try CLI.run(arguments)
            #expect(result.status == 1, "\(command)")
            #expect(result.stderrLines.count == 1, "\(command): \(result.stderr)")
            #expect(result.stderr.hasPrefix("checkpack: \(dir.sub("short.ckpk")): "), "\(result.stderr)")
        }
    }

    @Test func badInputsAndUsage() throws {
        try writeFile(dir.sub("random.bin"), sampleBytes(5000, seed: 1, compressible: false))
        try writeFile(dir.sub("empty.bin"), [])
        #expect(try CLI.run(["pack", dir.sub("src"), dir.sub("one.ckpk"), "--quiet"]).status == 0)
        let one = try #require(readFile(dir.sub("one.ckpk")))
        try writeFile(dir.sub("two.ckpk"), one + one)
        let cases: [([String], Int32)] = [
            (["ls", dir.sub("missing.ckpk")], 1),
            (["ls", dir.sub("random.bin")], 1),
            (["ls", dir.sub("empty.bin")], 1),
            (["verify", dir.sub("random.bin")], 1),
            (["ls", dir.sub("two.ckpk")], 1),
            (["verify", dir.sub("two.ckpk")], 1),
            (["unpack", dir.sub("two.ckpk"), dir.sub("two-out")], 1),
            (["ls", dir.sub("src")], 1),
            (["pack", dir.sub("missing-dir"), dir.sub("x.ckpk")], 1),
            (["pack", dir.sub("random.bin"), dir.sub("x.ckpk")], 1),
            (["pack", dir.sub("src"), "-"], 2),
            (["pack", dir.sub("src"), dir.sub("src"), "--force"], 1),
            (["cat", dir.sub("one.ckpk"), "nested"], 1),
            (["cat", dir.sub("one.ckpk"), "no-such-entry"], 1),
            (["pack", dir.sub("src")], 2),
            (["pack", dir.sub("src"), dir.sub("x.ckpk"), "--codec", "lzma"], 2),
            (["pack", dir.sub("src"), dir.sub("x.ckpk"), "--frame-size", "12Q"], 2),
            (["pack", dir.sub("src"), dir.sub("x.ckpk"), "--frame-size", "1K"], 2),
            (["pack", dir.sub("src"), dir.sub("x.ckpk"), "--level", "30"], 2),
            (["pack", dir.sub("src"), dir.sub("random.bin")], 2),
            (["unpack", dir.sub("random.bin"), dir.sub("src")], 2),
            (["frobnicate"], 2),
            ([], 2),
        ]
        for (arguments, status) in cases {
            let result = try CLI.run(arguments)
            #expect(result.status == status, "\(arguments): \(result.stderr)")
            if status != 0 && !arguments.isEmpty {
                #expect(result.stderrLines.count == 1, "\(arguments): \(result.stderr)")
                #expect(result.stderr.hasPrefix("checkpack: "), "\(arguments): \(result.stderr)")
            }
        }
        #expect(!FileManager.default.fileExists(atPath: dir.sub("x.ckpk")))
        #expect(!FileManager.default.fileExists(atPath: dir.sub("two-out")))
        let piped = try CLI.run(["unpack", "-", dir.sub("two-piped")], stdin: Data(one + one))
        #expect(piped.status == 1 && piped.stderr.contains("data follows the trailer"), "\(piped.stderr)")
        #expect(!FileSystemHasLeftovers(dir.path))
        #expect(try CLI.run(["--help"]).status == 0)
    }

    @Test func anArgumentThatIsNotUTF8IsRefusedNotRepaired() throws {
        // `unpack x.ckpk $'d\xfe' --force` must not touch "d\u{FFFD}", the name Swift would repair it to.
        #expect(try CLI.run(["pack", dir.sub("src"), dir.sub("u.ckpk"), "--quiet"]).status == 0)
        makeDirectory(dir.sub("d\u{FFFD}"))
        try writeFile(dir.sub("d\u{FFFD}/keep"), [1])
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", #"exec "$0" unpack "$1" "$(printf 'd\376')" --force"#, CLI.executable, dir.sub("u.ckpk")]
        process.currentDirectoryURL = URL(fileURLWithPath: dir.path)
        let err = Pipe()
        process.standardError = err
        try process.run()
        let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 2, "\(message)")
        #expect(message.contains("not valid UTF-8"), "\(message)")
        #expect(readFile(dir.sub("d\u{FFFD}/keep")) == [1])
    }

    @Test func optionsAndMessagesAsAUserSeesThem() throws {
        // A negative level parses as a value, and the codec's default shows by name.
        let fast = try CLI.run(["pack", dir.sub("src"), dir.sub("fast.ckpk"), "--level", "-7", "--quiet"])
        #expect(fast.status == 0, "\(fast.stderr)")
        let help = String(decoding: try CLI.run(["pack", "--help"]).stdout, as: UTF8.self)
        #expect(help.contains("default: zstd") && !help.contains("(default: 1)"), "\(help)")
        // Control characters in a name cannot drive the terminal or break the line.
        let hostile = try CLI.run(["ls", dir.sub("\u{1B}]0;title\u{7}x\nnext.ckpk")])
        #expect(hostile.status == 1)
        #expect(hostile.stderrLines.count == 1 && !hostile.stderr.contains("\u{1B}") && hostile.stderr.contains("\\x1b]0;title\\x07x\\x0anext"),
                "\(hostile.stderr)")
        // Output that cannot be written is a failure.
        for command in [["ls", dir.sub("fast.ckpk")], ["verify", dir.sub("fast.ckpk")], ["cat", dir.sub("fast.ckpk"), "nested/deeper/file.bin"]] {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: CLI.executable)
            process.arguments = command
            process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: "/dev/full"))
            process.standardError = FileHandle.nullDevice
            try process.run()
            process.waitUntilExit()
            #expect(process.terminationStatus == 1, "\(command)")
        }
    }
}

@Suite(.serialized) struct CrashSafetyTests {
    /// Starts the CLI and kills it with SIGKILL after `delay` seconds.
    func killed(_ arguments: [String], after delay: Double) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CLI.executable)
        process.arguments = arguments
        process.standardError = FileHandle.nullDevice
        try process.run()
        usleep(useconds_t(delay * 1_000_000))
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    @Test func killingPackOrUnpackNeverLeavesAPartialResultUnderTheFinalName() throws {
        let dir = Scratch()
        makeDirectory(dir.sub("src"))
        for i in 0..<6 { try writeFile(dir.sub("src/f\(i)"), sampleBytes(3 << 20, seed: UInt64(i), compressible: i % 2 == 0)) }
        let start = Date()
        #expect(try CLI.run(["pack", dir.sub("src"), dir.sub("ref.ckpk"), "--quiet"]).status == 0)
        let duration = Date().timeIntervalSince(start)
        var rng = SplitMix(seed: 42)
        var interrupted = 0
        for round in 0..<8 {
            let delay = Double.random(in: 0...(duration * 0.9), using: &rng)
            unlink(dir.sub("a.ckpk"))
            try killed(["pack", dir.sub("src"), dir.sub("a.ckpk"), "--force", "--quiet"], after: delay)
            if !FileManager.default.fileExists(atPath: dir.sub("a.ckpk")) { interrupted += 1 }
            if FileManager.default.fileExists(atPath: dir.sub("a.ckpk")) {
                #expect(try CLI.run(["verify", dir.sub("a.ckpk"), "--quiet"]).status == 0, "round \(round): a broken archive under the final name")
            }
            try killed(["unpack", dir.sub("ref.ckpk"), dir.sub("out"), "--force", "--quiet"], after: delay)
            if FileManager.default.fileExists(atPath: dir.sub("out")) {
                #expect(TreeSnapshot(dir.sub("out")) == TreeSnapshot(dir.sub("src")), "round \(round): a partial tree under the final name")
            }
        }
        #expect(interrupted >= 2, "only \(interrupted) of 8 kills landed before the archive was complete")
        // What the killed runs left is recognisable, and the next run reports it.
        let leftovers = Leftovers.find(beside: dir.sub("a.ckpk")) + Leftovers.find(beside: dir.sub("out"))
        let next = try CLI.run(["pack", dir.sub("src"), dir.sub("a.ckpk"), "--force"])
        #expect(next.status == 0)
        for path in Leftovers.find(beside: dir.sub("a.ckpk")) { #expect(next.stderr.contains(path)) }
        print("crash test: \(interrupted) of 8 pack runs interrupted, \(leftovers.count) leftovers")
        for path in leftovers { removeTree(path) }
        #expect(!FileSystemHasLeftovers(dir.path))
    }
}

extension CrashSafetyTests {
    @Test func signalsRemoveWhatTheRunWasBuildingAndExit128PlusTheSignal() throws {
        let dir = Scratch()
        makeDirectory(dir.sub("src"))
        for i in 0..<4 { try writeFile(dir.sub("src/f\(i)"), sampleBytes(1 << 20, seed: UInt64(i))) }
        // pack at the slowest level: still compressing when the signal comes.
        for signal in [SIGTERM, SIGINT, SIGHUP] {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: CLI.executable)
            process.arguments = ["pack", dir.sub("src"), dir.sub("a.ckpk"), "--level", "22", "--quiet"]
            process.standardError = FileHandle.nullDevice
            try process.run()
            usleep(400_000)
            kill(process.processIdentifier, signal)
            process.waitUntilExit()
            #expect(process.terminationStatus == 128 + signal, "pack, signal \(signal)")
            #expect(!FileManager.default.fileExists(atPath: dir.sub("a.ckpk")))
            #expect(!FileSystemHasLeftovers(dir.path), "pack, signal \(signal): \(TreeSnapshot(dir.path).items.keys.sorted())")
        }
        // unpack from a pipe that has delivered half the archive: waiting for the rest when the signal comes.
        #expect(try CLI.run(["pack", dir.sub("src"), dir.sub("b.ckpk"), "--quiet"]).status == 0)
        let archive = try #require(readFile(dir.sub("b.ckpk")))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CLI.executable)
        process.arguments = ["unpack", "-", dir.sub("out"), "--quiet"]
        let input = Pipe()
        process.standardInput = input
        process.standardError = FileHandle.nullDevice
        try process.run()
        input.fileHandleForWriting.write(Data(archive[..<(archive.count / 2)]))
        usleep(400_000)
        kill(process.processIdentifier, SIGINT)
        process.waitUntilExit()
        try? input.fileHandleForWriting.close()
        #expect(process.terminationStatus == 128 + SIGINT, "unpack")
        #expect(!FileManager.default.fileExists(atPath: dir.sub("out")))
        #expect(!FileSystemHasLeftovers(dir.path), "unpack: \(TreeSnapshot(dir.path).items.keys.sorted())")
    }

    @Test func killingAnArchiveSaveNeverLeavesAPartialArchive() throws {
        let dir = Scratch()
        let demo = URL(fileURLWithPath: CLI.executable).deletingLastPathComponent().appendingPathComponent("checkpoint-demo").path
        let start = Date()
        let reference = Process()
        reference.executableURL = URL(fileURLWithPath: demo)
        reference.arguments = [dir.sub("ref.ckpk"), "3", "24"]
        reference.standardOutput = FileHandle.nullDevice
        try reference.run()
        reference.waitUntilExit()
        #expect(reference.terminationStatus == 0)
        let duration = Date().timeIntervalSince(start)
        var rng = SplitMix(seed: 9)
        var interrupted = 0
        for round in 0..<6 {
            unlink(dir.sub("a.ckpk"))
            let process = Process()
            process.executableURL = URL(fileURLWithPath: demo)
            process.arguments = [dir.sub("a.ckpk"), "3", "24"]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            usleep(useconds_t(Double.random(in: 0...(duration * 0.7), using: &rng) * 1_000_000))
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            if FileManager.default.fileExists(atPath: dir.sub("a.ckpk")) {
                let reader = try ArchiveReader(path: dir.sub("a.ckpk"))
                #expect(try reader.verify().isEmpty, "round \(round)")
                #expect(reader.entry(named: ".metadata") != nil, "round \(round): an archive without its metadata")
            } else {
                interrupted += 1
            }
            for path in Leftovers.find(beside: dir.sub("a.ckpk")) { removeTree(path) }
        }
        #expect(interrupted >= 2, "only \(interrupted) of 6 kills landed before the save finished")
        #expect(!FileSystemHasLeftovers(dir.path))
    }
}


@Suite struct ManyReadersTests {
    @Test func severalProcessesReadingOneArchiveAllGetTheRightBytes() throws {
        let dir = Scratch()
        makeDirectory(dir.sub("src"))
        let content = sampleBytes(3 << 20, seed: 77)
        try writeFile(dir.sub("src/data"), content)
        #expect(try CLI.run(["pack", dir.sub("src"), dir.sub("a.ckpk"), "--frame-size", "64K", "--quiet"]).status == 0)
        var rng = SplitMix(seed: 5)
        let ranges = (0..<6).map { _ -> (Int, Int) in
            let start = Int.random(in: 0..<content.count, using: &rng)
            return (start, Int.random(in: 0...(content.count - start), using: &rng))
        }
        let results = Locked<[Int: [UInt8]]>([:])
        let archive = dir.sub("a.ckpk")
        DispatchQueue.concurrentPerform(iterations: ranges.count) { i in
            let (start, length) = ranges[i]
            let out = try? CLI.run(["cat", archive, "data", "--offset", "\(start)", "--length", "\(length)"])
            results.withLock { $0[i] = out.map { [UInt8]($0.stdout) } ?? [] }
        }
        for (i, (start, length)) in ranges.enumerated() {
            #expect(results.withLock { $0[i] } == Array(content[start..<start + length]), "reader \(i)")
        }
    }
}

@Suite struct HostileMetadataCLITests {
    @Test func aMaliciousTorchMetadataIsNamedAndNeverRun() throws {
        let dir = Scratch()
        makeDirectory(dir.sub("ckpt"))
        // GLOBAL os.system, "touch PWNED", REDUCE, STOP: what a hostile .metadata would carry.
        let marker = dir.sub("PWNED")
        let payload: [UInt8] = Array("cos\nsystem\n".utf8) + [0x8C, UInt8(("touch " + marker).utf8.count)]
            + Array(("touch " + marker).utf8) + [0x85, UInt8(ascii: "R"), UInt8(ascii: ".")]
        try writeFile(dir.sub("ckpt/.metadata"), payload)
        try writeFile(dir.sub("ckpt/__0_0.distcp"), [1, 2, 3])
        let inspect = try CLI.run(["inspect", dir.sub("ckpt")])
        #expect(inspect.status == 1)
        #expect(inspect.stderrLines.count == 1 && inspect.stderr.contains("global os.system is not allowed"), "\(inspect.stderr)")
        // Packing still works (format detection falls back to fixed frames, with a warning).
        let pack = try CLI.run(["pack", dir.sub("ckpt"), dir.sub("c.ckpk")])
        #expect(pack.status == 0)
        #expect(pack.stderr.contains("warning"), "\(pack.stderr)")
        let archived = try CLI.run(["inspect", dir.sub("c.ckpk")])
        #expect(archived.status == 1 && archived.stderrLines.count == 1)
        #expect(!FileManager.default.fileExists(atPath: marker))
    }
}

@Suite struct LeftoverNamingTests {
    @Test func leftoversOfStagingPartsAreRecognised() throws {
        let dir = Scratch()
        let leftovers = [".a.ckpk.ckpk-tmp-1x", ".a.ckpk.ckpk-part-0", "..a.ckpk.ckpk-part-1.ckpk-tmp-Q2", ".a.ckpk.ckpk-unpack-Z"]
        let others = ["a.ckpk", ".b.ckpk.ckpk-tmp-1", ".a.ckpk.other", "..a.ckpk.zzz.ckpk-tmp-1", "...a.ckpk.ckpk-part-1.ckpk-tmp-1.ckpk-tmp-2x"]
        for name in leftovers + others { try writeFile(dir.sub(name), [1]) }
        let found = Set(Leftovers.find(beside: dir.sub("a.ckpk")))
        #expect(found == Set(leftovers.map { dir.sub($0) }))
    }
}

/// Issue #11 item 1: whoever owns the destination's parent swaps the staging
/// folder for a symbolic link to another folder while `unpack` is writing into
/// it. Nothing may land in that folder, and the swapped name is not renamed into place.
@Suite struct StagingSwapTests {
    @Test func aStagingFolderSwappedForALinkRedirectsNothing() throws {
        let dir = Scratch()
        makeDirectory(dir.sub("victim"))
        makeDirectory(dir.sub("parent"))
        let archive = try buildArchive { writer in
            try writer.addFile("a.txt", contents: Array("first".utf8))
            // Enough data after the first entry that the extracting side gets to it while input is pending.
            try writer.addFile("b/big.bin", contents: sampleBytes(12 << 20, seed: 3, compressible: false))
            try writer.addFile("b/evil.txt", contents: Array("evil".utf8))
            try writer.addFile("c.txt", contents: Array("last".utf8))
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CLI.executable)
        process.arguments = ["unpack", "-", dir.sub("parent/out"), "--quiet"]
        let input = Pipe(), errors = Pipe()
        process.standardInput = input
        process.standardError = errors
        try process.run()
        // Every record before the last entry's; then wait until a file is in the staging folder.
        let split = Int(try #require(ArchiveReader(source: MemorySource(archive)).entry(named: "b/evil.txt")).recordOffset)
        input.fileHandleForWriting.write(Data(archive.prefix(split)))
        var staging: String? = nil
        let deadline = Date().addingTimeInterval(20)
        while staging == nil, Date() < deadline {
            staging = (try? FileManager.default.contentsOfDirectory(atPath: dir.sub("parent")))?
                .first { $0.contains("ckpk-unpack") }
                .map { dir.sub("parent/" + $0) }
            if let found = staging, !FileManager.default.fileExists(atPath: found + "/a.txt") { staging = nil }
            usleep(10_000)
        }
        let path = try #require(staging, "no staging folder with a.txt appeared")
        #expect(rename(path, dir.sub("parent/moved")) == 0)
        #expect(symlink(dir.sub("victim"), path) == 0)
        input.fileHandleForWriting.write(Data(archive.dropFirst(split)))
        try input.fileHandleForWriting.close()
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 1, "\(message)")
        #expect(message.contains("replaced"), "\(message)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.sub("victim")).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: dir.sub("parent/out")))
        // What was written went into the folder it was written in, wherever that was moved.
        #expect(readFile(dir.sub("parent/moved/c.txt")) == Array("last".utf8))
    }
}
