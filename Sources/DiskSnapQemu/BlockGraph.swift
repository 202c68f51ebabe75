import Foundation
import DiskSnapSys

/// A dirty bitmap of a block node, as `query-named-block-nodes` reports it.
public struct QemuBitmap: Sendable, Equatable {
    public var name: String
    public var granularity: UInt64
    public var recording: Bool
    public var persistent: Bool
    /// Set when QEMU did not close the image cleanly while the bitmap was stored in it: its
    /// bits cannot be trusted; it can only be removed.
    public var inconsistent: Bool
    public var busy: Bool

    public init(name: String, granularity: UInt64, recording: Bool = true, persistent: Bool = true, inconsistent: Bool = false, busy: Bool = false) {
        self.name = name
        self.granularity = granularity
        self.recording = recording
        self.persistent = persistent
        self.inconsistent = inconsistent
        self.busy = busy
    }
}

/// A block node of QEMU's graph (`query-named-block-nodes`, flat).
public struct QemuNode: Sendable, Equatable {
    public var name: String
    public var driver: String
    /// The image file the node reads, as QEMU was given it (may be relative to QEMU's cwd).
    public var filename: String
    public var readOnly: Bool
    public var virtualSize: UInt64?
    public var bitmaps: [QemuBitmap]

    /// Filters pass requests to a child with the same file: never the disk themselves.
    public var isFilter: Bool { ["copy-before-write", "throttle", "preallocate", "compress", "snapshot-access", "blkdebug", "blklogwrites"].contains(driver) }

    /// Protocol drivers: they read bytes of a file; a format driver sits above them.
    public var isProtocol: Bool { ["file", "host_device", "host_cdrom"].contains(driver) }

    static func parse(_ value: Any) -> [QemuNode] {
        guard let list = value as? [QMPObject] else { return [] }
        return list.compactMap { node in
            guard let name = node["node-name"] as? String, let driver = node["drv"] as? String else { return nil }
            let image = node["image"] as? QMPObject
            let bitmaps = (node["dirty-bitmaps"] as? [QMPObject] ?? []).compactMap { b -> QemuBitmap? in
                guard let name = b["name"] as? String else { return nil }
                return QemuBitmap(name: name, granularity: jsonUInt64(b["granularity"]) ?? 0,
                                  recording: b["recording"] as? Bool ?? false, persistent: b["persistent"] as? Bool ?? false,
                                  inconsistent: b["inconsistent"] as? Bool ?? false, busy: b["busy"] as? Bool ?? false)
            }
            return QemuNode(name: name, driver: driver, filename: node["file"] as? String ?? "",
                            readOnly: node["ro"] as? Bool ?? false,
                            virtualSize: jsonUInt64(image?["virtual-size"]), bitmaps: bitmaps)
        }
    }
}

/// A non-negative JSON integer as JSONSerialization gives it (an NSNumber).
func jsonUInt64(_ value: Any?) -> UInt64? {
    if let number = value as? NSNumber { return number.int64Value >= 0 ? number.uint64Value : nil }
    return nil
}

/// Which node of QEMU's graph is the disk image: a pure choice over the nodes.
public enum NodeChoice {
    /// Our own temporary nodes (docs/DESIGN.md, "Running VMs"): never the disk.
    public static let ownPrefix = "disksnap-"

    /// The node that has the image open. `sameFile(filename)` says whether a node's filename
    /// is the image (by device and inode). Without `named`, the one format node over the
    /// image (or the protocol node when no format node sits on it); with it, that node,
    /// which must have the image open.
    public static func choose(nodes: [QemuNode], named: String?, imagePath: String, sameFile: (String) -> Bool) throws(QemuError) -> QemuNode {
        let candidates = nodes.filter { !$0.name.hasPrefix(ownPrefix) && !$0.isFilter && !$0.filename.isEmpty && sameFile($0.filename) }
        if let named {
            guard let node = nodes.first(where: { $0.name == named }) else {
                throw QemuError.nodeNotFound("QEMU has no block node named '\(named)' (query-named-block-nodes lists: \(nodes.map(\.name).filter { !$0.hasPrefix(ownPrefix) }.joined(separator: ", ")))")
            }
            guard candidates.contains(node) else {
                throw QemuError.nodeNotFound("block node '\(named)' has \(node.filename.isEmpty ? "no file" : node.filename) open, not \(imagePath)")
            }
            return node
        }
        let formats = candidates.filter { !$0.isProtocol }
        let chosen = formats.isEmpty ? candidates : formats
        guard let first = chosen.first else {
            throw QemuError.nodeNotFound("no block node of this QEMU has \(imagePath) open (its nodes: \(nodes.filter { !$0.name.hasPrefix(ownPrefix) }.map { "\($0.name)=\($0.filename)" }.joined(separator: ", ")))")
        }
        guard chosen.count == 1 else {
            throw QemuError.nodeAmbiguous("several block nodes have \(imagePath) open (\(chosen.map(\.name).joined(separator: ", "))): name one with --node")
        }
        return first
    }
}
