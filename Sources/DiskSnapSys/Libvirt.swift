import CShim
#if canImport(Glibc)
import Glibc
#endif

/// A libvirt call that failed: libvirt's error number (`virErrorNumber`) and message.
public struct LibvirtError: Error, Sendable {
    public let call: String
    public let number: Int32
    public let message: String

    public static let noDomain = DS_VIR_ERR_NO_DOMAIN
    public static let operationInvalid = DS_VIR_ERR_OPERATION_INVALID
    public static let agentUnresponsive = DS_VIR_ERR_AGENT_UNRESPONSIVE
    public static let noCheckpoint = DS_VIR_ERR_NO_DOMAIN_CHECKPOINT
    public static let noBackup = DS_VIR_ERR_NO_DOMAIN_BACKUP
    public static let checkpointInconsistent = DS_VIR_ERR_CHECKPOINT_INCONSISTENT

    static func last(_ call: String) -> LibvirtError {
        var buffer = [CChar](repeating: 0, count: 1024)
        let number = ds_virt_last_error(&buffer, buffer.count)
        return LibvirtError(call: call, number: number, message: cText(buffer))
    }
}

/// The text of a NUL-terminated C buffer.
func cText(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// A connection to libvirt (`virConnectOpen`), loaded at run time: hosts without libvirt
/// run everything else. One thread at a time.
public final class LibvirtConnection {
    public let uri: String
    private let handle: UnsafeMutableRawPointer

    /// Loads libvirt and connects. `LibvirtError.number` 0 means libvirt itself is missing.
    public init(uri: String) throws(LibvirtError) {
        var reason = [CChar](repeating: 0, count: 512)
        guard ds_virt_load(&reason, reason.count) == 0 else {
            throw LibvirtError(call: "load", number: 0, message: cText(reason))
        }
        guard let handle = ds_virt_connect(uri) else { throw LibvirtError.last("virConnectOpen \(uri)") }
        self.uri = uri
        self.handle = handle
    }

    deinit { ds_virt_disconnect(handle) }

    public func domain(named name: String) throws(LibvirtError) -> LibvirtDomain {
        guard let domain = ds_virt_domain(handle, name) else { throw LibvirtError.last("virDomainLookupByName \(name)") }
        return LibvirtDomain(handle: domain, name: name, connection: self)
    }
}

/// One domain of a connection: the calls of its backup API, its checkpoints and its agent.
public final class LibvirtDomain {
    public let name: String
    private let handle: UnsafeMutableRawPointer
    private let connection: LibvirtConnection

    init(handle: UnsafeMutableRawPointer, name: String, connection: LibvirtConnection) {
        self.handle = handle
        self.name = name
        self.connection = connection
    }

    deinit { ds_virt_domain_free(handle) }

    public func isActive() throws(LibvirtError) -> Bool {
        let rc = ds_virt_domain_active(handle)
        guard rc >= 0 else { throw LibvirtError.last("virDomainIsActive") }
        return rc == 1
    }

    public func uuid() throws(LibvirtError) -> String {
        var buffer = [CChar](repeating: 0, count: 64)
        guard ds_virt_domain_uuid(handle, &buffer) == 0 else { throw LibvirtError.last("virDomainGetUUIDString") }
        return cText(buffer)
    }

    /// The live domain XML.
    public func xml() throws(LibvirtError) -> String {
        try Self.take(ds_virt_domain_xml(handle), "virDomainGetXMLDesc")
    }

    /// `virDomainBackupBegin` in pull mode; the checkpoint is created with the backup's instant.
    public func beginBackup(xml: String, checkpointXML: String?) throws(LibvirtError) {
        guard ds_virt_backup_begin(handle, xml, checkpointXML) == 0 else { throw LibvirtError.last("virDomainBackupBegin") }
    }

    /// The running backup job's XML, nil when none runs.
    public func backupXML() throws(LibvirtError) -> String? {
        if let text = ds_virt_backup_xml(handle) {
            defer { free(text) }
            return String(cString: text)
        }
        let error = LibvirtError.last("virDomainBackupGetXMLDesc")
        if error.number == LibvirtError.noBackup { return nil }
        throw error
    }

    public func abortJob() throws(LibvirtError) {
        guard ds_virt_abort_job(handle) == 0 else { throw LibvirtError.last("virDomainAbortJob") }
    }

    public func checkpointNames() throws(LibvirtError) -> [String] {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
        let count = ds_virt_checkpoint_names(handle, &names)
        guard count >= 0, let names else { throw LibvirtError.last("virDomainListAllCheckpoints") }
        defer { free(names) }
        return (0..<Int(count)).compactMap { index in
            guard let name = names[index] else { return nil }
            defer { free(name) }
            return String(cString: name)
        }
    }

    /// A checkpoint's XML, nil when the domain has none so named.
    public func checkpointXML(named name: String) throws(LibvirtError) -> String? {
        if let text = ds_virt_checkpoint_xml(handle, name) {
            defer { free(text) }
            return String(cString: text)
        }
        let error = LibvirtError.last("virDomainCheckpointGetXMLDesc \(name)")
        if error.number == LibvirtError.noCheckpoint { return nil }
        throw error
    }

    /// Deletes a checkpoint and its bitmaps; `metadataOnly` forgets one whose bitmaps are gone.
    public func deleteCheckpoint(named name: String, metadataOnly: Bool = false) throws(LibvirtError) {
        guard ds_virt_checkpoint_delete(handle, name, metadataOnly ? 1 : 0) == 0 else {
            throw LibvirtError.last("virDomainCheckpointDelete \(name)")
        }
    }

    /// Freezes every guest filesystem through the agent libvirt talks to: how many.
    public func freezeFilesystems() throws(LibvirtError) -> Int {
        let count = ds_virt_fs_freeze(handle)
        guard count >= 0 else { throw LibvirtError.last("virDomainFSFreeze") }
        return Int(count)
    }

    public func thawFilesystems() throws(LibvirtError) -> Int {
        let count = ds_virt_fs_thaw(handle)
        guard count >= 0 else { throw LibvirtError.last("virDomainFSThaw") }
        return Int(count)
    }

    private static func take(_ text: UnsafeMutablePointer<CChar>?, _ call: String) throws(LibvirtError) -> String {
        guard let text else { throw LibvirtError.last(call) }
        defer { free(text) }
        return String(cString: text)
    }
}
