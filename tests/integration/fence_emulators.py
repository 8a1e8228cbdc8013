"""Real BMC emulators for the fence driver tests, started privately and always cleaned up.

- ``sushy_emulator``: sushy-tools' Redfish emulator with its fake systems driver, over HTTPS
  (a throw-away CA signs its certificate), basic auth from a bcrypt file, its state in a fresh
  directory (the fake driver keeps state across restarts), on a free loopback port.
  Traps (ARCHITECTURE.md §7): the fake driver needs ``SUSHY_EMULATOR_FAKE_DRIVER = True`` in
  the ``--config`` file; a power change lands 0-11 s after the request, so tests poll.
- ``virtualbmc_lab``: a libvirtd started by hand with only its built-in test driver (an empty
  ``LIBVIRT_DRIVER_DIR``, or the QEMU driver aborts start-up) on a private socket; this
  process holds a connection open for the lab's whole life (the test driver forgets every
  domain when its last client disconnects) and uses it to check power states independently;
  a vbmcd with a private config directory and control port serves one IPMI BMC per domain.
  vbmc has no ``power cycle``; nothing here needs it.

Every process is started in its own session and stopped by its process group, even when the
test fails.
"""
from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import bcrypt
import libvirt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

BIN = Path(sys.executable).parent  # the venv's bin: sushy-emulator, vbmc, vbmcd
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 20.0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port nothing holds now (TCP, or UDP with SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def write_password(path: Path, password: str, mode: int = 0o600) -> Path:
    """A BMC password file as an operator writes it: the password and a newline."""
    path.write_text(password + "\n")
    path.chmod(mode)
    return path


def wait_until(check, what: str, timeout: float = START_TIMEOUT, proc=None, log: Path = None):
    """Poll ``check()`` until truthy; fail naming ``what`` (and the log) if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = log.read_text()[-2000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} not ready within {timeout} s\n{tail}")


def stop_group(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and everything it started (its session), SIGKILL after 5 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGCONT)  # a paused emulator must see the SIGTERM
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --- TLS ------------------------------------------------------------------------------

def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for 127.0.0.1, valid one day."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hagent test BMC CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv4Address(LOOPBACK))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "bmc.pem", directory / "bmc.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


# --- Redfish: sushy-emulator ----------------------------------------------------------

@dataclass
class Sushy:
    """A running sushy-emulator: where it listens, its users, its systems (name -> uuid)."""

    proc: subprocess.Popen
    port: int
    ca_file: Path
    username: str
    password: str
    systems: dict[str, str]
    log: Path

    def pause(self) -> None:
        """Freeze the emulator: connections are accepted by the kernel, never answered."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        stop_group(self.proc)

    def get(self, path: str) -> tuple[int, dict]:
        """GET ``path`` with the right credentials, checking nothing: the tests' own eyes."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        conn = http.client.HTTPSConnection(LOOPBACK, self.port, timeout=10, context=context)
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        try:
            conn.request("GET", path, headers={"Authorization": f"Basic {token}"})
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, json.loads(body) if body.strip() else {}
        finally:
            conn.close()

    def power_state(self, name: str) -> str:
        """The emulator's own PowerState for system ``name`` ("On", "Off")."""
        status, doc = self.get(f"/redfish/v1/Systems/{self.systems[name]}")
        assert status == 200, (status, doc)
        return doc["PowerState"]


@contextlib.contextmanager
def sushy_emulator(directory: Path, systems: dict[str, str], *, username: str = "admin",
                   password: str = "bmc-secret") -> Iterator[Sushy]:
    """sushy-emulator (fake driver, HTTPS, basic auth) serving ``systems`` (name -> "On"/"Off")."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_file, cert, key = make_tls(directory)
    auth = directory / "htpasswd"
    auth.write_text(f"{username}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}\n")
    uuids = {name: f"5f1e0000-0000-4000-8000-{index:012d}" for index, name in enumerate(systems)}
    fake = [{"uuid": uuids[name], "name": name, "power_state": state, "nics": []}
            for name, state in systems.items()]
    state_dir = directory / "state"
    shutil.rmtree(state_dir, ignore_errors=True)
    config = directory / "sushy.conf"
    config.write_text(
        "SUSHY_EMULATOR_FAKE_DRIVER = True\n"
        f"SUSHY_EMULATOR_FAKE_SYSTEMS = {fake!r}\n"
        f"SUSHY_EMULATOR_STATE_DIR = {str(state_dir)!r}\n"
        f"SUSHY_EMULATOR_AUTH_FILE = {str(auth)!r}\n")
    port = free_port()
    log = directory / "sushy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "sushy-emulator"), "--config", str(config), "-i", LOOPBACK,
             "-p", str(port), "--ssl-certificate", str(cert), "--ssl-key", str(key)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    sushy = Sushy(proc, port, ca_file, username, password, uuids, log)
    try:
        wait_until(lambda: _answers(sushy), "sushy-emulator", proc=proc, log=log)
        yield sushy
    finally:
        stop_group(proc)


def _answers(sushy: Sushy) -> bool:
    try:
        return sushy.get("/redfish/v1/Systems")[0] == 200
    except OSError:
        return False


# --- IPMI: libvirtd (test driver) + virtualbmc -----------------------------------------

DOMAIN_XML = """<domain type='test'>
  <name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
</domain>"""


@dataclass
class Bmc:
    """One virtual BMC: where it listens and the credentials it accepts."""

    domain: str
    port: int
    username: str
    password: str


@dataclass
class VirtualBmcLab:
    """libvirtd (test driver) + vbmcd; ``conn`` is the connection that keeps the state alive."""

    uri: str
    conn: libvirt.virConnect
    vbmc_env: dict[str, str]
    directory: Path
    bmcs: dict[str, Bmc] = field(default_factory=dict)

    def add_host(self, name: str, *, running: bool = True, username: str = "admin",
                 password: str = "ipmi-secret") -> Bmc:
        """Define domain ``name`` (running or shut off) and start a BMC for it."""
        domain = self.conn.defineXML(DOMAIN_XML.format(name=name))
        if running:
            domain.create()
        bmc = Bmc(name, free_port(socket.SOCK_DGRAM), username, password)
        self.vbmc("add", name, "--port", str(bmc.port), "--address", LOOPBACK,
                  "--username", username, "--password", password, "--libvirt-uri", self.uri)
        self.vbmc("start", name)
        wait_until(lambda: _udp_bound(bmc.port), f"virtual BMC for {name}")
        self.bmcs[name] = bmc
        return bmc

    def stop_bmc(self, name: str) -> None:
        """Stop the BMC of ``name``: its port stops answering (the host keeps running)."""
        self.vbmc("stop", name)
        wait_until(lambda: not _udp_bound(self.bmcs[name].port), f"stopping BMC of {name}")

    def reset(self, power: dict[str, str]) -> None:
        """Set each named domain "on" or "off" and make sure every BMC answers."""
        for name, state in power.items():
            if self.power_state(name) != state:
                domain = self.conn.lookupByName(name)
                if state == "on":
                    domain.create()
                else:
                    domain.destroy()
        for name, bmc in self.bmcs.items():
            if not _udp_bound(bmc.port):
                self.vbmc("start", name)
                wait_until(lambda: _udp_bound(bmc.port), f"virtual BMC for {name}")

    def power_state(self, name: str) -> str:
        """The domain's state as libvirt sees it: "on" or "off"."""
        state = self.conn.lookupByName(name).state()[0]
        return "off" if state == libvirt.VIR_DOMAIN_SHUTOFF else "on"

    def vbmc(self, *args: str) -> str:
        done = subprocess.run([str(BIN / "vbmc"), *args], env=self.vbmc_env, capture_output=True,
                              text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"vbmc {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout


def _udp_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def _tcp_listening(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=0.2).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def virtualbmc_lab(directory: Path) -> Iterator[VirtualBmcLab]:
    """libvirtd with the test driver on a private socket, plus a private vbmcd."""
    directory.mkdir(parents=True, exist_ok=True)
    # Unix socket paths must stay under 108 bytes, which pytest's tmp_path may not.
    sock_dir = Path(tempfile.mkdtemp(prefix="hagent-fence-lv-"))
    drivers = directory / "no-drivers"
    drivers.mkdir()
    conf = directory / "libvirtd.conf"
    conf.write_text(f'unix_sock_dir = "{sock_dir}"\n'
                    'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
                    'unix_sock_rw_perms = "0700"\nunix_sock_ro_perms = "0700"\n'
                    'unix_sock_admin_perms = "0700"\n')
    socket_path = sock_dir / "libvirt-sock"
    uri = f"test+unix:///default?socket={socket_path}"
    stack = contextlib.ExitStack()
    try:
        stack.callback(shutil.rmtree, sock_dir, ignore_errors=True)
        libvirtd_log = directory / "libvirtd.log"
        with libvirtd_log.open("wb") as out:
            libvirtd = subprocess.Popen(
                ["/usr/sbin/libvirtd", "--config", str(conf),
                 "--pid-file", str(directory / "libvirtd.pid")],
                env={**os.environ, "LIBVIRT_DRIVER_DIR": str(drivers)},
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        stack.callback(stop_group, libvirtd)
        wait_until(socket_path.exists, "libvirtd", proc=libvirtd, log=libvirtd_log)
        conn = libvirt.open(uri)
        stack.callback(conn.close)

        vbmc_dir = directory / "vbmc"
        (vbmc_dir / "conf").mkdir(parents=True)
        control_port = free_port()
        vbmc_conf = vbmc_dir / "virtualbmc.conf"
        vbmc_conf.write_text(f"[default]\nconfig_dir = {vbmc_dir / 'conf'}\n"
                             f"pid_file = {vbmc_dir / 'vbmcd.pid'}\n"
                             f"server_port = {control_port}\n"
                             f"[log]\nlogfile = {vbmc_dir / 'vbmcd.log'}\n")
        env = {**os.environ, "VIRTUALBMC_CONFIG": str(vbmc_conf)}
        vbmcd_log = vbmc_dir / "vbmcd.out"
        with vbmcd_log.open("wb") as out:
            vbmcd = subprocess.Popen([str(BIN / "vbmcd"), "--foreground"], env=env,
                                     stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        stack.callback(stop_group, vbmcd)
        wait_until(lambda: _tcp_listening(control_port), "vbmcd", proc=vbmcd, log=vbmcd_log)
        yield VirtualBmcLab(uri, conn, env, directory)
    finally:
        stack.close()
