"""A real VM for the freeze tests: qemu-system-x86_64 under TCG (no KVM here) booting the
kernel and initramfs of tools/make-guest, its first disk an image on block node `disk0`
(file node `disk0-file`), a QMP monitor for disksnap (qmp.sock), a second one for the test
(look.sock) and the guest agent's virtio-serial channel (qga.sock). The guest mounts that
disk (ext4) on /mnt and keeps what is written there in its page cache until a sync or a
freeze. Stdlib only. Self-check: python3 tests/integration/guestvm.py [WORKDIR]."""
import base64
import json
import os
import random
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAKE_GUEST = os.path.join(ROOT, "tools", "make-guest")
DEFAULT_KERNEL_DIR = os.environ.get("DISKSNAP_GUEST_DIR") or os.path.join(tempfile.gettempdir(), f"disksnap-guest-{os.getuid()}")


def build_guest(directory=DEFAULT_KERNEL_DIR):
    """(kernel, initrd) in `directory`, built by tools/make-guest unless already there and
    newer than the script."""
    kernel, initrd = os.path.join(directory, "vmlinuz"), os.path.join(directory, "initramfs.cpio.gz")
    if not all(os.path.exists(p) and os.path.getmtime(p) >= os.path.getmtime(MAKE_GUEST) for p in (kernel, initrd)):
        proc = subprocess.run([MAKE_GUEST, directory], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"tools/make-guest failed: {proc.stderr}")
    return kernel, initrd


class Agent:
    """The QEMU guest agent, one connection per call as libvirt does: a 0xFF byte (resets the
    agent's parser), guest-sync-delimited with a random id, everything up to the 0xFF
    sentinel and the matching sync reply discarded, then the command and its reply."""

    def __init__(self, path):
        self.path = str(path)

    def execute(self, command, args=None, timeout=60):
        """The command's "return" value; RuntimeError for an error reply."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(self.path)
            token = random.randint(1, 2**31 - 1)
            s.sendall(b"\xff" + self._encode("guest-sync-delimited", {"id": token}))
            buf = b""
            while b"\xff" not in buf:
                buf += self._recv(s)
            buf = buf[buf.index(b"\xff") + 1:]
            while True:  # stale replies of earlier connections may come first
                reply, buf = self._reply(s, buf)
                if reply.get("return") == token:
                    break
            s.sendall(self._encode(command, args))
            reply, _ = self._reply(s, buf)
            if "error" in reply:
                raise RuntimeError(f"{command}: {reply['error']}")
            return reply["return"]

    @staticmethod
    def _encode(command, args):
        message = {"execute": command}
        if args:
            message["arguments"] = args
        return json.dumps(message).encode() + b"\n"

    def _reply(self, s, buf):
        """The next JSON object with "return" or "error", and what follows it."""
        while True:
            while b"\n" not in buf:
                buf += self._recv(s)
            line, buf = buf.split(b"\n", 1)
            line = line.strip().lstrip(b"\xff")
            if line:
                reply = json.loads(line)
                if "return" in reply or "error" in reply:
                    return reply, buf

    @staticmethod
    def _recv(s):
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("the guest agent channel closed")
        return chunk

    def fsfreeze_status(self):
        """"thawed" or "frozen"."""
        return self.execute("guest-fsfreeze-status")

    def exec(self, argv, input=None, timeout=30):
        """Runs argv in the guest (guest-exec, output captured): (exitcode, stdout, stderr)."""
        args = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
        if input is not None:
            args["input-data"] = base64.b64encode(input).decode()
        pid = self.execute("guest-exec", args)["pid"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.execute("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                return (status.get("exitcode", -status.get("signal", 0)),
                        base64.b64decode(status.get("out-data", "")), base64.b64decode(status.get("err-data", "")))
            time.sleep(0.05)
        raise TimeoutError(f"{argv} did not end in the guest within {timeout} s")

    def shell(self, script, timeout=30):
        """Runs a /bin/sh script in the guest, which must succeed: its stdout."""
        code, out, err = self.exec(["/bin/sh", "-c", script], timeout=timeout)
        if code != 0:
            raise AssertionError(f"guest: {script!r} exited {code}: {out!r} {err!r}")
        return out

    # The names of the first version of this helper.
    freeze_status = fsfreeze_status
    run = exec


class GuestVM:
    def __init__(self, workdir, image, image_format="qcow2", kernel_dir=DEFAULT_KERNEL_DIR):
        if image_format not in ("qcow2", "raw") and os.path.isdir(str(image_format)):
            kernel_dir, image_format = image_format, "qcow2"  # the old GuestVM(workdir, image, guest_dir)
        self.workdir = str(workdir)
        self.image = str(image)
        self.image_format = image_format
        self.kernel, self.initrd = build_guest(str(kernel_dir))
        self.qmp = os.path.join(self.workdir, "qmp.sock")
        self.look = os.path.join(self.workdir, "look.sock")
        self.qga = os.path.join(self.workdir, "qga.sock")
        self.console = os.path.join(self.workdir, "console.log")
        self.agent = Agent(self.qga)
        self.proc = None
        self.boot_seconds = None

    def argv(self):
        return [
            "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "1", "-m", "256",
            "-nodefaults", "-nographic", "-monitor", "none", "-no-reboot",
            "-kernel", self.kernel, "-initrd", self.initrd, "-append", "console=ttyS0 panic=-1 quiet",
            "-blockdev", f"driver=file,filename={self.image},node-name=disk0-file,cache.direct=off",
            "-blockdev", f"driver={self.image_format},file=disk0-file,node-name=disk0",
            "-device", "virtio-blk-pci,drive=disk0",
            "-qmp", f"unix:{self.qmp},server=on,wait=off",
            "-chardev", f"socket,id=mon2,path={self.look},server=on,wait=off", "-mon", "chardev=mon2,mode=control",
            "-chardev", f"socket,path={self.qga},server=on,wait=off,id=qga0",
            "-device", "virtio-serial", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-serial", f"file:{self.console}",
        ]

    def start(self, timeout=90):
        """Boots and waits until the guest agent answers; returns self."""
        for path in (self.qmp, self.look, self.qga, self.console):
            if os.path.exists(path):
                os.unlink(path)
        began = time.monotonic()
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        while time.monotonic() - began < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qemu-system-x86_64 exited {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode()}\nconsole: {self.console_tail()}")
            if os.path.exists(self.qga) and "GUEST-READY" in self.console_tail():
                try:
                    self.agent.execute("guest-ping", timeout=5)
                    self.boot_seconds = time.monotonic() - began
                    return self
                except (OSError, ValueError, RuntimeError):
                    pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"the guest agent did not answer within {timeout} s; console:\n{self.console_tail()}")

    def console_tail(self, size=3000):
        try:
            with open(self.console, "rb") as f:
                return f.read()[-size:].decode(errors="replace")
        except OSError:
            return ""

    def look_qmp(self, command, args=None, timeout=30):
        """One QMP command on the test's own monitor: its "return" value."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(self.look)
            f = s.makefile("rwb")
            f.readline()  # the greeting
            reply = None
            for name, arguments in (("qmp_capabilities", None), (command, args)):
                f.write(json.dumps({"execute": name, **({"arguments": arguments} if arguments else {})}).encode() + b"\n")
                f.flush()
                while True:
                    line = f.readline()
                    if not line:
                        if name == "quit":
                            return None
                        raise ConnectionError("QMP closed")
                    reply = json.loads(line)
                    if "return" in reply or "error" in reply:
                        break
                if "error" in reply:
                    raise RuntimeError(f"{name}: {reply['error']}")
            return reply["return"]

    def stop(self, timeout=30):
        """A clean exit by QMP quit (QEMU stores persistent dirty bitmaps only then)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.look_qmp("quit", timeout=10)
            self.proc.wait(timeout=timeout)
        except (OSError, ValueError, RuntimeError, subprocess.TimeoutExpired):
            self.kill()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def make_ext4_qcow2(path, size_mib=64):
    """A qcow2 holding a fresh ext4 (mkfs.ext4 on a raw file, then qemu-img convert)."""
    raw = str(path) + ".raw"
    with open(raw, "wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mkfs.ext4", "-qF", raw], check=True)
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", raw, str(path)], check=True)
    os.unlink(raw)
    return str(path)


if __name__ == "__main__":
    import sys
    workdir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="guestvm-")
    os.makedirs(workdir, exist_ok=True)
    image = make_ext4_qcow2(os.path.join(workdir, "vm.qcow2"))
    vm = GuestVM(workdir, image).start()
    try:
        print(f"boot to agent ready: {vm.boot_seconds:.1f} s")
        print("exec:", vm.agent.exec(["/bin/sh", "-c", "echo hi > /mnt/x; cat /mnt/x"]))
        t = time.monotonic()
        frozen = vm.agent.execute("guest-fsfreeze-freeze")
        print(f"freeze: {frozen} filesystem(s) in {time.monotonic() - t:.2f} s; status {vm.agent.fsfreeze_status()}")
        assert frozen >= 1 and vm.agent.fsfreeze_status() == "frozen"
        t = time.monotonic()
        thawed = vm.agent.execute("guest-fsfreeze-thaw")
        print(f"thaw: {thawed} filesystem(s) in {time.monotonic() - t:.2f} s; status {vm.agent.fsfreeze_status()}")
        assert vm.agent.fsfreeze_status() == "thawed"
    finally:
        vm.stop()
    print("exit code", vm.proc.returncode, "; qemu-img check:",
          subprocess.run(["qemu-img", "check", image], capture_output=True, text=True).stdout.strip().splitlines()[0])
