"""export (NBD) and mount (FUSE): real clients read a snapshot without a restore."""
import errno
import json
import os
import random
import signal
import socket
import struct
import subprocess
import time

import pytest

from conftest import BIN, Loop, partition_bytes, sha256

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
OPT_GO, OPT_INFO, OPT_LIST, OPT_ABORT, OPT_STRUCTURED = 7, 6, 3, 2, 8
REP_ACK, REP_INFO, REP_SERVER = 1, 3, 2
ERR_UNSUP, ERR_INVALID, ERR_UNKNOWN = 0x80000001, 0x80000003, 0x80000006


class Server:
    """A disksnap export or mount running in the background, stopped at the end."""
    def __init__(self, repo, *args):
        self.proc = subprocess.Popen([BIN, "--repo", repo, *map(str, args)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.banner = self.proc.stdout.readline()
        if not self.banner:
            raise AssertionError(f"server did not start: {self.proc.stderr.read()}")

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.err = self.proc.stderr.read()
        return code

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def unix_url(path):
    return f"nbd+unix:///?socket={path}"


# --- a minimal NBD client, to drive the handshake byte by byte -----------------------------

def recv_exactly(s, n):
    data = b""
    while len(data) < n:
        more = s.recv(n - len(data))
        if not more:
            raise EOFError(f"server closed after {len(data)} of {n} bytes")
        data += more
    return data


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    hello = recv_exactly(s, 18)
    assert hello[:8] == NBDMAGIC and struct.unpack(">Q", hello[8:16])[0] == IHAVEOPT
    assert struct.unpack(">H", hello[16:18])[0] & 1, "fixed newstyle"
    return s


def send_option(s, option, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, option, len(data)) + data)


def read_reply(s):
    magic, option, kind, length = struct.unpack(">QIII", recv_exactly(s, 20))
    assert magic == REPLY_MAGIC
    return option, kind, recv_exactly(s, length)


def go(s, name=b"", info=()):
    send_option(s, OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", len(info))
                + b"".join(struct.pack(">H", i) for i in info))
    replies = []
    while True:
        option, kind, data = read_reply(s)
        replies.append((kind, data))
        if kind == REP_ACK or kind >= 0x80000000:
            return replies


def request(s, kind, offset, length, cookie=7, payload=b""):
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, kind, cookie, offset, length) + payload)
    magic, error, handle = struct.unpack(">IIQ", recv_exactly(s, 16))
    assert magic == 0x67446698 and handle == cookie
    return error


# --- export ----------------------------------------------------------------------------------

def test_export_serves_identical_bytes_to_qemu_img_nbdcopy_and_nbdinfo(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "served")
    sock = tmp_path / "nbd.sock"
    with Server(ds.repo, "export", snap, "--socket", sock) as server:
        assert unix_url(sock) in server.banner
        info = json.loads(subprocess.run(["nbdinfo", "--json", unix_url(sock)], check=True,
                                         capture_output=True, text=True).stdout)
        export = info["exports"][0]
        assert export["export-size"] == test_disk["disk_size"]
        assert export["is_read_only"] is True

        # Several clients at once: qemu-img and nbdcopy (itself 4 connections) in parallel.
        q, n = tmp_path / "q.raw", tmp_path / "n.raw"
        procs = [subprocess.Popen(["qemu-img", "convert", "-f", "raw", "-O", "raw", unix_url(sock), str(q)]),
                 subprocess.Popen(["nbdcopy", unix_url(sock), str(n)])]
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
        assert sha256(q) == sha256(n) == sha256(test_disk["v1"])

        # The export name may be the snapshot's name; an unknown one is refused.
        assert subprocess.run(["nbdinfo", "--size", f"nbd+unix:///served?socket={sock}"], check=True,
                              capture_output=True, text=True).stdout.strip() == str(test_disk["disk_size"])
        bad = subprocess.run(["nbdinfo", "--size", f"nbd+unix:///other?socket={sock}"], capture_output=True, text=True)
        assert bad.returncode != 0
        assert server.stop() == 0
    assert not sock.exists(), "the socket file is removed on exit"


def test_export_on_loopback_tcp(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "tcp")
    with Server(ds.repo, "export", snap, "--listen", "127.0.0.1:0") as server:
        url = server.banner.split(" at ")[1].strip()
        assert url.startswith("nbd://127.0.0.1:")
        out = tmp_path / "t.raw"
        subprocess.run(["nbdcopy", url, str(out)], check=True)
        assert sha256(out) == sha256(test_disk["v1"])
        assert server.stop(signal.SIGINT) == 0


def test_export_survives_malformed_and_truncated_clients(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "fuzzed")
    sock = str(tmp_path / "nbd.sock")
    with open(test_disk["v1"], "rb") as f:
        f.seek(1 << 20)
        expected = f.read(8192)
    with Server(ds.repo, "export", snap, "--socket", sock) as server:
        # Hang up at every point of the handshake.
        for cut in range(0, 30):
            s = connect(sock)
            valid = struct.pack(">I", 1) + struct.pack(">QII", IHAVEOPT, OPT_GO, 6) + struct.pack(">IH", 0, 0)
            s.sendall(valid[:cut])
            s.close()
        # Bad client flags, bad option magic, an oversized option: the connection is closed.
        for prelude in (struct.pack(">I", 0x80), struct.pack(">I", 1) + b"IHAVEOPX" + bytes(8),
                        struct.pack(">I", 1) + struct.pack(">QII", IHAVEOPT, OPT_GO, 1 << 30)):
            s = connect(sock)
            s.sendall(prelude)
            with pytest.raises((EOFError, ConnectionResetError)):
                recv_exactly(s, 1)
            s.close()
        # Inconsistent GO lengths and unknown options get error replies; the session goes on.
        s = connect(sock)
        s.sendall(struct.pack(">I", 1))
        send_option(s, OPT_GO, struct.pack(">I", 500) + b"x")
        assert read_reply(s)[1] == ERR_INVALID
        send_option(s, OPT_GO, struct.pack(">I", 0) + struct.pack(">H", 3) + b"\0\0")
        assert read_reply(s)[1] == ERR_INVALID
        send_option(s, 99, b"abc")
        assert read_reply(s)[1] == ERR_UNSUP
        assert go(s, b"nope")[-1][0] == ERR_UNKNOWN
        send_option(s, OPT_LIST)
        assert read_reply(s)[1] == REP_SERVER and read_reply(s)[1] == REP_ACK
        replies = go(s, b"", info=(3,))
        assert replies[-1][0] == REP_ACK
        export = [d for k, d in replies if k == REP_INFO and d[:2] == b"\0\0"][0]
        assert struct.unpack(">Q", export[2:10])[0] == test_disk["disk_size"]
        # Transmission: reads are exact; writes (payload consumed), trims and reads past the
        # end are refused; the connection stays usable.
        assert request(s, 0, 1 << 20, 8192) == 0 and recv_exactly(s, 8192) == expected
        assert request(s, 1, 0, 4096, payload=bytes(4096)) == errno.EPERM
        assert request(s, 4, 0, 4096) == errno.EPERM
        assert request(s, 0, test_disk["disk_size"] - 100, 4096) == errno.EINVAL
        assert request(s, 0, 0, 1 << 30) == errno.EINVAL
        assert request(s, 0, 1 << 20, 8192, cookie=99) == 0 and recv_exactly(s, 8192) == expected
        s.sendall(b"\x12\x34" * 14)  # a request with a bad magic ends this connection only
        with pytest.raises((EOFError, ConnectionResetError)):
            recv_exactly(s, 1)
        s.close()
        # Random bytes after a valid greeting, many times.
        rng = random.Random(6)
        for _ in range(150):
            s = connect(sock)
            s.sendall(struct.pack(">I", rng.choice([0, 1, 3])) + rng.randbytes(rng.randrange(0, 200)))
            s.close()
        assert server.proc.poll() is None, "malformed clients never end the server"
        out = tmp_path / "after.raw"
        subprocess.run(["nbdcopy", unix_url(sock), str(out)], check=True)
        assert sha256(out) == sha256(test_disk["v1"])
        assert server.stop() == 0
        assert "closed: unknown client flags" in server.err
        assert "IHAVEOPT" in server.err


def test_export_refuses_a_socket_another_server_answers_on(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "once")
    sock = tmp_path / "nbd.sock"
    with Server(ds.repo, "export", snap, "--socket", sock):
        r = ds.run("export", snap, "--socket", sock, check=False)
        assert r.code != 0 and "another server answers there" in r.err
    # The first server was killed (-9): its socket file is left, and is taken over.
    assert sock.exists()
    with Server(ds.repo, "export", snap, "--socket", sock) as again:
        assert subprocess.run(["nbdinfo", "--size", unix_url(sock)], check=True, capture_output=True,
                              text=True).stdout.strip() == str(test_disk["disk_size"])
        again.stop()


# --- mount -------------------------------------------------------------------------------------

def debugfs_cat(image, path):
    proc = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, check=True)
    return proc.stdout


def test_mount_shows_disk_and_partition_images(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "mounted")
    off, size = test_disk["partition_offset"], test_disk["partition_size"]
    reference = tmp_path / "ref-part1.img"
    reference.write_bytes(partition_bytes(test_disk["v1"], off, size))
    expected = debugfs_cat(reference, "/random.bin")
    assert len(expected) == 8 << 20

    mnt = tmp_path / "mnt"  # created by mount, removed at the end
    with Server(ds.repo, "mount", snap, mnt) as server:
        assert "disk.img" in server.banner and "part1.img" in server.banner
        assert sorted(os.listdir(mnt)) == ["disk.img", "part1.img"]
        assert os.path.getsize(mnt / "part1.img") == size
        assert debugfs_cat(mnt / "part1.img", "/random.bin") == expected
        fsck = subprocess.run(["e2fsck", "-fn", str(mnt / "part1.img")], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        assert sha256(mnt / "disk.img") == sha256(test_disk["v1"])
        with pytest.raises(OSError) as raised:
            open(mnt / "disk.img", "r+b")
        assert raised.value.errno in (errno.EROFS, errno.EACCES)
        # A read-only loop mount of the partition image, through the FUSE file.
        inner = tmp_path / "inner"
        inner.mkdir()
        with Loop(str(mnt / "part1.img"), read_only=True) as dev:
            subprocess.run(["mount", "-o", "ro,noload", dev, str(inner)], check=True)
            try:
                assert (inner / "random.bin").read_bytes() == expected
            finally:
                subprocess.run(["umount", str(inner)], check=True)
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        assert server.proc.wait(timeout=30) == 0
    assert not mnt.exists(), "a mount point the mount created is removed"
    assert str(mnt) not in open("/proc/mounts").read()


def test_mount_ends_cleanly_on_ctrl_c(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "interrupted")
    mnt = tmp_path / "existing"
    mnt.mkdir()
    with Server(ds.repo, "mount", snap, mnt) as server:
        assert (mnt / "disk.img").exists()
        assert server.stop(signal.SIGINT) == 0
    assert str(mnt) not in open("/proc/mounts").read()
    assert mnt.is_dir() and os.listdir(mnt) == [], "an existing mount point is left, empty"


def test_export_reports_zero_chunks_with_block_status(ds, test_disk, tmp_path):
    from conftest import CHUNK, chunk_list
    snap = ds.create(test_disk["v1"], "mapped")
    sock = tmp_path / "nbd.sock"
    chunks = chunk_list(test_disk["v1"], CHUNK)
    expected = []  # merged [start, length, zero]
    for i, digest in enumerate(chunks):
        zero = digest is None
        length = min(CHUNK, test_disk["disk_size"] - i * CHUNK)
        if expected and expected[-1][2] == zero:
            expected[-1][1] += length
        else:
            expected.append([i * CHUNK, length, zero])
    with Server(ds.repo, "export", snap, "--socket", sock) as server:
        mapped = json.loads(subprocess.run(["nbdinfo", "--map", "--json", unix_url(sock)], check=True,
                                           capture_output=True, text=True).stdout)
        assert [[m["offset"], m["length"], m["type"] == 3] for m in mapped] == expected
        assert any(zero for _, _, zero in expected) and any(not zero for _, _, zero in expected)
        # qemu-img skips the zero extents: its copy is identical and sparse.
        out = tmp_path / "sparse.raw"
        qemu_img = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", unix_url(sock), str(out)], capture_output=True)
        assert qemu_img.returncode == 0
        assert sha256(out) == sha256(test_disk["v1"])
        data_bytes = sum(length for _, length, zero in expected if not zero)
        assert os.stat(out).st_blocks * 512 <= data_bytes + (1 << 20)
        # The options, byte by byte.
        s = connect(str(sock))
        s.sendall(struct.pack(">I", 1))
        query = struct.pack(">I", 0) + struct.pack(">I", 1) + struct.pack(">I", 15) + b"base:allocation"
        send_option(s, 10, query)
        assert read_reply(s)[1] == ERR_INVALID, "SET_META_CONTEXT needs structured replies first"
        send_option(s, OPT_STRUCTURED, b"x")
        assert read_reply(s)[1] == ERR_INVALID
        send_option(s, OPT_STRUCTURED)
        assert read_reply(s)[1] == REP_ACK
        send_option(s, 10, query[:-3])
        assert read_reply(s)[1] == ERR_INVALID, "a query longer than the option"
        send_option(s, 9, struct.pack(">II", 0, 0))
        option, kind, data = read_reply(s)
        assert kind == 4 and data[4:] == b"base:allocation" and read_reply(s)[1] == REP_ACK
        send_option(s, 10, query)
        option, kind, data = read_reply(s)
        assert kind == 4 and struct.unpack(">I", data[:4])[0] != 0 and read_reply(s)[1] == REP_ACK
        assert go(s)[-1][0] == REP_ACK
        s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 7, 5, 0, 2 << 20))
        magic, flags, kind, cookie, length = struct.unpack(">IHHQI", recv_exactly(s, 20))
        assert (magic, kind, cookie) == (0x668E33EF, 5, 5) and flags & 1
        payload = recv_exactly(s, length)
        descriptors = [struct.unpack(">II", payload[i:i + 8]) for i in range(4, len(payload), 8)]
        clipped = [(min(start + length, 2 << 20) - start, 3 if zero else 0) for start, length, zero in expected if start < 2 << 20]
        assert descriptors == clipped
        s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 6, 1 << 20, 4096))
        magic, flags, kind, cookie, length = struct.unpack(">IHHQI", recv_exactly(s, 20))
        assert (magic, kind, cookie, length) == (0x668E33EF, 1, 6, 8 + 4096)
        body = recv_exactly(s, length)
        with open(test_disk["v1"], "rb") as f:
            f.seek(1 << 20)
            assert body[:8] == struct.pack(">Q", 1 << 20) and body[8:] == f.read(4096)
        s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 7, test_disk["disk_size"], 4096))
        magic, flags, kind, cookie, length = struct.unpack(">IHHQI", recv_exactly(s, 20))
        assert kind == 0x8001 and struct.unpack(">I", recv_exactly(s, length)[:4])[0] == errno.EINVAL, "a read past the end: an error chunk"
        s.close()
        assert server.stop() == 0
