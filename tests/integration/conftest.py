"""Integration tests: the built `disksnap` binary on real images, loop devices and ext4."""
import hashlib
import json
import os
import subprocess
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("DISKSNAP_BIN", os.path.join(ROOT, ".build", "debug", "disksnap"))
# The chunk size of a repository made with the defaults (docs/DESIGN.md, "Choosing the chunk size").
CHUNK = 32 << 10


class Result:
    def __init__(self, proc):
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def json(self):
        return json.loads(self.out)


class DiskSnap:
    def __init__(self, repo):
        self.repo = repo

    def run(self, *args, env=None, check=True, repo=True):
        argv = [BIN] + (["--repo", self.repo] if repo else []) + [str(a) for a in args]
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        result = Result(proc)
        if check and result.code != 0:
            raise AssertionError(f"{argv} exited {result.code}\nstdout: {result.out}\nstderr: {result.err}")
        return result

    def create(self, source, name, *extra):
        return self.run("create", source, "--name", name, "--json", *extra).json()["SnapshotId"]

    def show(self, snap):
        return self.run("show", snap, "--json").json()


@pytest.fixture
def ds(tmp_path):
    return DiskSnap(str(tmp_path / "repo"))


@pytest.fixture(scope="session")
def test_disk(tmp_path_factory):
    out = tmp_path_factory.mktemp("disk")
    proc = subprocess.run([os.path.join(ROOT, "tools", "make-test-disk"), str(out), "--size-mib", "64"],
                          check=True, capture_output=True, text=True)
    return json.loads(proc.stdout)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def chunk_digests(path, chunk_size):
    """Distinct non-zero chunk digests of a file: what the store must hold for it."""
    zero = bytes(chunk_size)
    digests = set()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            if block != zero[:len(block)]:
                digests.add(hashlib.sha256(block).hexdigest())
    return digests


def chunk_list(path, chunk_size):
    """Digest of each chunk in disk order, None for an all-zero chunk."""
    zero = bytes(chunk_size)
    out = []
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            out.append(None if block == zero[:len(block)] else hashlib.sha256(block).hexdigest())
    return out


def partition_bytes(image, offset, size):
    """The bytes of the partition at offset/size of image."""
    with open(image, "rb") as f:
        f.seek(offset)
        return f.read(size)


class Loop:
    """A real loop device, detached at the end."""
    def __init__(self, path, offset=None, size=None, read_only=False):
        argv = ["losetup", "--find", "--show"]
        if offset is not None:
            argv += ["-o", str(offset)]
        if size is not None:
            argv += ["--sizelimit", str(size)]
        if read_only:
            argv += ["-r"]
        self.device = subprocess.run(argv + [path], check=True, capture_output=True, text=True).stdout.strip()

    def __enter__(self):
        return self.device

    def __exit__(self, *exc):
        subprocess.run(["losetup", "-d", self.device], check=False)


def e2fsck_partition(image, offset, size):
    """e2fsck -fn on the partition at offset/size of image, through a loop device."""
    with Loop(image, offset, size, read_only=True) as dev:
        proc = subprocess.run(["e2fsck", "-fn", dev], capture_output=True, text=True)
    assert proc.returncode == 0, f"e2fsck failed on {image}:\n{proc.stdout}{proc.stderr}"
