// swift-tools-version:6.0
// disksnap: point-in-time snapshots of disks into a deduplicated, compressed store.
import PackageDescription

let package = Package(
    name: "disksnap",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "disksnap", targets: ["disksnap"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        // The HTTP server of `disksnap serve` (SwiftNIO underneath).
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
    ],
    targets: [
        // C: the only place that sees libzstd, libblkid, zlib, libfuse3, libnbd, ioctls and Linux-only constants.
        .target(name: "CShim", path: "Sources/CShim"),
        .systemLibrary(name: "CZstd", path: "Sources/CZstd", pkgConfig: "libzstd",
                       providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CBlkid", path: "Sources/CBlkid", pkgConfig: "blkid",
                       providers: [.apt(["libblkid-dev"])]),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", pkgConfig: "zlib",
                       providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CFuse", path: "Sources/CFuse", pkgConfig: "fuse3",
                       providers: [.apt(["libfuse3-dev"])]),
        .target(name: "CFuseGlue", dependencies: ["CFuse"], path: "Sources/CFuseGlue"),
        // libnbd for reading QEMU's views, loaded at run time (only its headers at build time: libnbd-dev).
        .target(name: "CNBDGlue", path: "Sources/CNBDGlue"),
        // libcurl for S3, loaded at run time (only its headers at build time: libcurl4-openssl-dev).
        .target(name: "CCurlGlue", path: "Sources/CCurlGlue"),
        // AES-256-GCM in place from OpenSSL's libcrypto, loaded at run time (headers: libssl-dev).
        .target(name: "CCryptoGlue", path: "Sources/CCryptoGlue"),
        // Swift face of the operating system and the C libraries.
        .target(name: "DiskSnapSys", dependencies: ["CShim", "CZstd", "CBlkid", "CZlib", "CFuseGlue", "CNBDGlue", "CCurlGlue", "CCryptoGlue"]),
        // qcow2 images as the guest sees them: header, L1/L2 tables, backing chains, writer.
        .target(name: "DiskSnapQcow2", dependencies: ["DiskSnapSys"]),
        // A running VM: QMP, its block graph, point-in-time views and dirty bitmaps; libvirt's
        // backup API and checkpoints; the guest agent.
        .target(name: "DiskSnapQemu", dependencies: ["DiskSnapSys", "DiskSnapQcow2"]),
        // On-disk formats: byte layouts, digests, versioned records.
        .target(name: "DiskSnapFormat", dependencies: [
            "DiskSnapSys", .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // Encryption at rest: master keys, key files (scrypt or a key file), AES-256-GCM
        // sealing with a key per object (whole, or a page at a time), keyed chunk ids.
        .target(name: "DiskSnapSeal", dependencies: [
            "DiskSnapSys", "DiskSnapFormat",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "_CryptoExtras", package: "swift-crypto"),
        ]),
        // The content-addressed chunk store: packs, the chunk index, locks, atomic publication.
        .target(name: "DiskSnapStore", dependencies: ["DiskSnapSys", "DiskSnapFormat", "DiskSnapSeal"]),
        // Snapshot records: ids, names, lookup, status.
        .target(name: "DiskSnapCatalog", dependencies: ["DiskSnapSys", "DiskSnapFormat", "DiskSnapStore", "DiskSnapQcow2", "DiskSnapQemu"]),
        // Snapshot, restore, check: the pipelines over every core.
        .target(name: "DiskSnapEngine", dependencies: [
            "DiskSnapSys", "DiskSnapFormat", "DiskSnapStore", "DiskSnapCatalog", "DiskSnapQcow2", "DiskSnapQemu", "DiskSnapSeal",
        ]),
        // Off-host stores: AWS Signature V4, S3 as a blob store.
        .target(name: "DiskSnapS3", dependencies: [
            "DiskSnapSys", "DiskSnapStore", .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // Serving a snapshot to other programs: NBD export, FUSE mount.
        .target(name: "DiskSnapServe", dependencies: ["DiskSnapSys", "DiskSnapFormat", "DiskSnapEngine"]),
        // The documents' HTTP APIs for the official cloud SDKs: request signatures, the
        // operations of ECS (and, to come, ECD, SWAS, CSS) over the engine, and the server.
        // The wire of those APIs, pure: requests, the three signature schemes, replay and rate
        // bounds, parameters, answers (fuzzed: tools/fuzz).
        .target(name: "DiskSnapAPIWire", dependencies: [
            "DiskSnapSys", "DiskSnapFormat", .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .target(name: "DiskSnapAPI", dependencies: [
            "DiskSnapSys", "DiskSnapFormat", "DiskSnapStore", "DiskSnapCatalog", "DiskSnapEngine", "DiskSnapAPIWire",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdCore", package: "hummingbird"),
            .product(name: "HummingbirdTLS", package: "hummingbird"),
            .product(name: "HTTPTypes", package: "swift-http-types"),
        ]),
        // The command line: one file per subcommand.
        .executableTarget(name: "disksnap", dependencies: [
            "DiskSnapSys", "DiskSnapFormat", "DiskSnapStore", "DiskSnapCatalog", "DiskSnapEngine", "DiskSnapServe", "DiskSnapQcow2", "DiskSnapS3", "DiskSnapAPI", "DiskSnapAPIWire", "DiskSnapSeal",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // Every decoder of a repository file under libFuzzer (tools/fuzz), or replaying the
        // corpus in Tests/Fuzz (a plain build).
        .executableTarget(name: "disksnap-fuzz", dependencies: ["DiskSnapFormat", "DiskSnapSys", "DiskSnapQcow2", "DiskSnapStore", "DiskSnapAPIWire", "DiskSnapSeal"], path: "Sources/disksnap-fuzz"),
        .testTarget(name: "DiskSnapTests", dependencies: [
            "DiskSnapSys", "DiskSnapFormat", "DiskSnapStore", "DiskSnapCatalog", "DiskSnapEngine", "DiskSnapServe", "DiskSnapQemu", "DiskSnapS3", "DiskSnapAPI", "DiskSnapAPIWire", "DiskSnapSeal",
        ], exclude: ["Fixtures"]),
    ],
    swiftLanguageModes: [.v6]
)
