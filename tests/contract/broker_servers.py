"""Broker processes a test owns: started on free loopback ports, stopped and started again.

The machine's shared brokers (4222, 5672, 6379) serve every other test and must
never be restarted, so a test that restarts a broker for real starts its own:
a private Redis, NATS server or RabbitMQ node, with its data in the test's
temporary directory and kept on disk, so what the broker held before ``stop``
is there again after ``start``. ``stop`` is the broker's own orderly shutdown
(SIGTERM), as an operator's restart or a rolling upgrade does it.

``missing()`` names the binary that is not installed, for the tests to skip
(or fail, under CI=true).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path

from tests.conftest import free_port
from tests.contract.source_brokers import AmqpBroker, Broker, NatsBroker, RedisBroker, port_open


class BrokerServer(ABC):
    """One broker process on 127.0.0.1:``port`` with its data under ``root``."""

    kind: str
    binary: str
    # Seconds a (re)start may take before the test gives up on it.
    start_timeout = 30.0

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "server.log"
        self.starts = 0

    def executable(self) -> str | None:
        found = shutil.which(self.binary) or shutil.which(self.binary, path="/usr/sbin:/usr/local/sbin")
        return found

    def missing(self) -> str | None:
        if self.executable() is None:
            return f"{self.binary} is not installed: the real {self.kind} restart test needs it"
        return None

    @abstractmethod
    def command(self) -> list[str]: ...

    def env(self) -> dict[str, str] | None:
        return None

    async def answers(self) -> bool:
        """The broker takes requests (not merely accepts connections)."""
        return port_open("127.0.0.1", self.port, 0.5)

    async def start(self) -> None:
        """Start the broker (again, on the same port and data) and wait until it answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        started = time.monotonic()
        self.proc = self._spawn()
        self.starts += 1
        while not await self.answers():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.kind} server exited with {self.proc.returncode} while starting; "
                    f"log: {self.log_path}\n{self.log_tail()}"
                )
            if time.monotonic() - started > self.start_timeout:
                raise AssertionError(
                    f"{self.kind} server not answering after {self.start_timeout}s; log: {self.log_path}"
                )
            await asyncio.sleep(0.1)
        self.started_in = time.monotonic() - started

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            # Its own session: on teardown the whole group (a wrapper script and its VM) is ended.
            return subprocess.Popen(
                self.command(),
                cwd=self.root,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def stop(self, timeout: float = 30.0) -> None:
        """Orderly shutdown (SIGTERM), waiting until the process is gone and its port closed."""
        proc = self.proc
        assert proc is not None and proc.poll() is None, "not running"
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.kind} server still running {timeout}s after SIGTERM")
            await asyncio.sleep(0.05)
        while port_open("127.0.0.1", self.port, 0.2):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.kind} port {self.port} still open after the server stopped")
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        """Teardown: end whatever is left of this server's process group (only ours)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
        # Children of a wrapper script may outlive it; the group id is the wrapper's pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @abstractmethod
    def adapter(self) -> Broker:
        """The contract suite's broker adapter, pointed at this server."""


class RedisServer(BrokerServer):
    """redis-server with an append-only file fsynced on every write: a stream survives a restart."""

    kind = "redis"
    binary = "redis-server"

    def command(self) -> list[str]:
        exe = self.executable()
        assert exe is not None
        return [
            exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.root),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]

    async def answers(self) -> bool:
        # Redis accepts connections while it replays its append-only file (and answers -LOADING).
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 0.5)
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 2)
            return line.startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def adapter(self) -> Broker:
        b = RedisBroker()
        b.port = self.port
        return b


class NatsServer(BrokerServer):
    """nats-server with JetStream's file storage in the test's directory."""

    kind = "nats"
    binary = "nats-server"

    def command(self) -> list[str]:
        exe = self.executable()
        assert exe is not None
        return [exe, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.root / "js")]

    def adapter(self) -> Broker:
        b = NatsBroker()
        b.port = self.port
        return b


class RabbitNode(BrokerServer):
    """A RabbitMQ node of its own: its own node name, ports, data, logs, config and cookie.

    It runs ``rabbitmq-server`` directly (not the Debian wrapper, which switches to the
    rabbitmq user and writes to /var/log), with every path under the test's directory
    and no plugins, so nothing it does touches the machine's own node: they share only
    the Erlang port mapper daemon (epmd), where each node registers its own name.
    """

    kind = "amqp"
    binary = "rabbitmq-server"
    start_timeout = 60.0

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.dist_port = free_port()
        self.node = f"tk{secrets.token_hex(4)}@localhost"
        (root / ".erlang.cookie").write_text(secrets.token_hex(16))
        (root / ".erlang.cookie").chmod(0o400)
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        # An empty env file replaces /etc/rabbitmq/rabbitmq-env.conf, which names the shared node.
        (root / "rabbitmq-env.conf").write_text("")

    def executable(self) -> str | None:
        # The Debian wrapper on PATH runs the server as the rabbitmq user; the script behind it
        # runs it as whoever calls it.
        direct = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
        if direct.exists():
            return str(direct)
        return super().executable()

    def ctl(self) -> tuple[str, ...]:
        direct = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
        return (str(direct) if direct.exists() else "rabbitmqctl", "-n", self.node)

    def command(self) -> list[str]:
        exe = self.executable()
        assert exe is not None
        return [exe]

    def env(self) -> dict[str, str]:
        r = self.root
        env = dict(os.environ)
        env.update(
            {
                "HOME": str(r),  # the Erlang cookie shared by the node and rabbitmqctl
                "RABBITMQ_CONF_ENV_FILE": str(r / "rabbitmq-env.conf"),
                "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": str(r / "mnesia"),
                "RABBITMQ_LOG_BASE": str(r / "log"),
                "RABBITMQ_CONFIG_FILE": str(r / "rabbitmq.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(r / "enabled_plugins"),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            }
        )
        return env

    def adapter(self) -> Broker:
        b = AmqpBroker()
        b.port = self.port
        b.ctl = self.ctl()
        b.ctl_env = self.env()
        return b


SERVERS: dict[str, type[BrokerServer]] = {"redis": RedisServer, "nats": NatsServer, "amqp": RabbitNode}
