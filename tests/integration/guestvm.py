"""A real VM for the freeze tests: qemu-system-x86_64 under TCG (no KVM here) booting the
kernel and initramfs of tools/make-guest, with its first disk on a qcow2 image (block node
`disk0`), a QMP monitor for disksnap, a second one for the test, and the guest agent's
virtio-serial channel. The guest mounts that disk on /mnt and keeps what is written there
in its page cache until a sync or a freeze."""
import base64
import json
import os
import random
import socket
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_guest(directory):
    """The kernel and initramfs, built once into `directory`."""
    kernel, initrd = os.path.join(directory, "vmlinuz"), os.path.join(directory, "initramfs.cpio.gz")
    if not (os.path.exists(kernel) and os.path.exists(initrd)):
        subprocess.run([os.path.join(ROOT, "tools", "make-guest"), directory], check=True, capture_output=True)
    return kernel, initrd


class Agent:
    """The guest agent, one connection per call, as libvirt uses it: a 0xFF byte, then
    guest-sync-delimited, whose answer follows a 0xFF sentinel."""

    def __init__(self, path):
        self.path = path

    def execute(self, command, arguments=None, timeout=30):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(self.path)
            token = random.randint(1, 2**31 - 1)
            s.sendall(b"\xff" + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": token}}).encode() + b"\n")
            data = b""
            while b"\xff" not in data:
                data += self._recv(s)
            data = data[data.index(b"\xff") + 1:]
            while True:
                while b"\n" not in data:
                    data += self._recv(s)
                line, data = data.split(b"\n", 1)
                if line.strip() and json.loads(line).get("return") == token:
                    break
            message = {"execute": command}
            if arguments:
                message["arguments"] = arguments
            s.sendall(json.dumps(message).encode() + b"\n")
            while True:
                while b"\n" not in data:
                    data += self._recv(s)
                line, data = data.split(b"\n", 1)
                if not line.strip():
                    continue
                reply = json.loads(line)
                if "error" in reply:
                    raise RuntimeError(f"{command}: {reply['error']}")
                if "return" in reply:
                    return reply["return"]

    @staticmethod
    def _recv(s):
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("the guest agent channel closed")
        return chunk

    def freeze_status(self):
        return self.execute("guest-fsfreeze-status")

    def run(self, argv, timeout=60):
        """Runs argv in the guest: (exit code, stdout, stderr)."""
        pid = self.execute("guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True})["pid"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.execute("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                return (status.get("exitcode"), base64.b64decode(status.get("out-data", "")),
                        base64.b64decode(status.get("err-data", "")))
            time.sleep(0.05)
        raise TimeoutError(f"{argv} did not end in the guest within {timeout} s")

    def shell(self, script, timeout=60):
        code, out, err = self.run(["/bin/sh", "-c", script], timeout=timeout)
        assert code == 0, (script, code, out, err)
        return out


class GuestVM:
    def __init__(self, workdir, image, guest_dir):
        self.workdir = str(workdir)
        self.image = str(image)
        self.kernel, self.initrd = build_guest(guest_dir)
        self.qmp = os.path.join(self.workdir, "qmp.sock")
        self.look = os.path.join(self.workdir, "look.sock")
        self.qga = os.path.join(self.workdir, "qga.sock")
        self.console = os.path.join(self.workdir, "console.log")
        self.agent = Agent(self.qga)
        self.proc = None

    def start(self, timeout=120):
        self.proc = subprocess.Popen([
            "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "1", "-m", "256",
            "-nographic", "-no-reboot", "-monitor", "none", "-display", "none",
            "-kernel", self.kernel, "-initrd", self.initrd, "-append", "console=ttyS0 panic=-1 quiet",
            "-blockdev", f"driver=file,filename={self.image},node-name=disk0-file",
            "-blockdev", "driver=qcow2,file=disk0-file,node-name=disk0",
            "-device", "virtio-blk-pci,drive=disk0",
            "-qmp", f"unix:{self.qmp},server=on,wait=off",
            "-chardev", f"socket,id=mon2,path={self.look},server=on,wait=off", "-mon", "chardev=mon2,mode=control",
            "-chardev", f"socket,path={self.qga},server=on,wait=off,id=qga0",
            "-device", "virtio-serial", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-serial", f"file:{self.console}",
        ], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qemu-system-x86_64 exited {self.proc.returncode}: {self.proc.stderr.read().decode()}")
            if os.path.exists(self.qga):
                try:
                    if self.agent.execute("guest-ping", timeout=5) == {}:
                        return self
                except (OSError, ValueError, RuntimeError):
                    pass
            time.sleep(0.5)
        raise RuntimeError(f"the guest agent did not answer within {timeout} s; console: {self.console_tail()}")

    def console_tail(self):
        try:
            with open(self.console, "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        """A clean exit (QEMU stores persistent bitmaps in the image only then)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(self.look)
                f = s.makefile("rwb")
                f.readline()
                for command in ("qmp_capabilities", "quit"):
                    f.write(json.dumps({"execute": command}).encode() + b"\n")
                    f.flush()
                    f.readline()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
