// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "Checkpack",
    products: [
        .library(name: "Checkpack", targets: ["Checkpack"]),
        .library(name: "CheckpackStorage", targets: ["CheckpackStorage"]),
        .library(name: "CheckpackRemote", targets: ["CheckpackRemote"]),
        // The C ABI the Python adapter loads (libCheckpackC.so).
        .library(name: "CheckpackC", type: .dynamic, targets: ["CheckpackC"]),
        .executable(name: "checkpack", targets: ["checkpack"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // `swift package generate-documentation`: CI builds the API docs, and a broken reference fails it.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // CRC32C with a hardware path (SSE4.2 / ARMv8 CRC) chosen at run time.
        .target(name: "CCRC32C"),
        // The byte-plane transform's inner loops, and zstd's literals-only mode.
        .target(name: "CBytePlanes", dependencies: ["CZstd"]),
        // Linux system calls that need _GNU_SOURCE (renameat2, fallocate).
        .target(name: "CSystemShims"),
        .systemLibrary(
            name: "CZstd", pkgConfig: "libzstd",
            providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(
            name: "CZlib", pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(
            name: "CCurl", pkgConfig: "libcurl",
            providers: [.apt(["libcurl4-openssl-dev"])]),
        // curl_easy_setopt and curl_easy_getinfo are variadic: typed wrappers Swift can call.
        .target(name: "CCurlShims", dependencies: ["CCurl"]),
        .target(name: "Checkpack", dependencies: ["CCRC32C", "CBytePlanes", "CSystemShims", "CZstd", "CZlib"]),
        // The distributed-checkpoint protocols and their directory and archive backends.
        .target(name: "CheckpackStorage", dependencies: ["Checkpack", "CheckpackRemote"]),
        // Archives on HTTP(S) servers and S3, through libcurl: ranged reads and multipart uploads.
        .target(name: "CheckpackRemote", dependencies: ["Checkpack", "CCurl", "CCurlShims"]),
        .target(name: "CheckpackC", dependencies: ["Checkpack", "CheckpackRemote"]),
        // PyTorch interop: a safe pickle reader and torch checkpoint metadata.
        .target(name: "CheckpackTorch", dependencies: ["Checkpack", "CheckpackStorage"]),
        .executableTarget(
            name: "checkpack",
            dependencies: [
                "Checkpack",
                "CheckpackStorage",
                "CheckpackTorch",
                "CheckpackRemote",
                "CSystemShims",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        // Benchmarks against tar + zstd, torch's ZStandard extension and the directory backend.
        .executableTarget(name: "checkpack-bench", dependencies: ["Checkpack", "CheckpackStorage", "CheckpackTorch"]),
        // Saves a synthetic multi-rank checkpoint into an archive (crash tests, example).
        .executableTarget(name: "checkpoint-demo", dependencies: ["Checkpack", "CheckpackStorage"]),
        // What every test target shares: scratch folders, files, sample bytes, the CLI runner.
        .target(name: "CheckpackTestSupport", dependencies: ["Checkpack"], path: "Tests/CheckpackTestSupport"),
        // Test targets name the executables they run, so those are built first.
        .testTarget(name: "CheckpackTests", dependencies: ["Checkpack", "CheckpackStorage", "CCRC32C", "CBytePlanes", "CheckpackTestSupport",
                                                           "checkpack", "checkpoint-demo"]),
        .testTarget(name: "CheckpackStorageTests", dependencies: ["CheckpackStorage", "Checkpack", "CheckpackTestSupport"]),
        .testTarget(name: "CheckpackRemoteTests", dependencies: ["CheckpackRemote", "Checkpack", "CheckpackStorage",
                                                                 "CheckpackTestSupport", "checkpack"]),
        .testTarget(name: "CheckpackTorchTests", dependencies: ["CheckpackTorch", "CheckpackStorage", "CheckpackTestSupport"]),
    ]
)
