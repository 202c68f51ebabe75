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


# DISKSNAP_TEST_ENCRYPTION=1 runs tests against encrypted repositories (tools/test runs a
# representative part of the suite both ways): every repository a test makes through
# `DiskSnap` is initialized with --encryption aes-256-gcm, and every command gets the passphrase.
ENCRYPTED = os.environ.get("DISKSNAP_TEST_ENCRYPTION") == "1"
# New passphrase keys at scrypt N=2^10, not 2^15: a debug build's scrypt takes 0.4 s at 2^15,
# and every command that opens an encrypted repository runs it once. test_encryption checks
# the default cost itself.
os.environ.setdefault("DISKSNAP_KDF_LOGN", "10")
TEST_PASSWORD = "integration-test passphrase"
if ENCRYPTED:
    os.environ.setdefault("DISKSNAP_PASSWORD", TEST_PASSWORD)  # also for the processes tests start themselves

# Tests that read or compare repository files byte for byte (fixed indexes, pack sizes, the
# record JSON), or that count on a create making the repository unencrypted: they run on
# unencrypted repositories only. Everything else runs both ways.
PLAIN_ONLY = {
    "test_qcow2_snapshot_is_the_guest_disk_and_dedups_with_raw",
    "test_missing_repository",
    "test_incompressible_chunks_are_stored_raw_without_overhead",
    "test_damaged_fixed_index_and_record",
    "test_damaged_config_is_a_clear_error",
    "test_kill_9_during_create_leaves_a_valid_repository",
    "test_progress_is_visible_from_another_process",
}


def pytest_collection_modifyitems(config, items):
    if ENCRYPTED:
        items[:] = [item for item in items if item.originalname not in PLAIN_ONLY]


def encrypted_argv(argv, repo):
    """`argv` for an encrypted run: `init` gains --encryption unless it names one; any other
    command on a repository that does not exist yet first makes it, encrypted."""
    if not ENCRYPTED or repo is None or repo.startswith("s3://") and "init" not in argv:
        return [argv]
    if "init" in argv[:3]:
        return [argv if "--encryption" in argv else argv + ["--encryption", "aes-256-gcm"]]
    if not repo.startswith("s3://") and not os.path.exists(os.path.join(repo, "config.json")) and argv[0] not in ("probe", "bench"):
        return [["init", "--encryption", "aes-256-gcm"], argv]
    return [argv]


def with_password(env):
    if not ENCRYPTED:
        return env
    return dict(env if env is not None else os.environ, DISKSNAP_PASSWORD=(env or os.environ).get("DISKSNAP_PASSWORD", TEST_PASSWORD))


class DiskSnap:
    def __init__(self, repo):
        self.repo = repo

    def run(self, *args, env=None, check=True, repo=True):
        words = [str(a) for a in args]
        steps = encrypted_argv(words, self.repo if repo else None)
        for step in steps[:-1]:
            subprocess.run([BIN, "--repo", self.repo] + step, check=True, capture_output=True, env=with_password(env), timeout=300)
        argv = [BIN] + (["--repo", self.repo] if repo else []) + steps[-1]
        proc = subprocess.run(argv, capture_output=True, text=True, env=with_password(env), timeout=300)
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
