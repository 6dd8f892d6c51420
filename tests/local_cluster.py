"""A local, loopback-only Ray cluster started with the ``ray`` CLI, and checks of the sockets its processes listen on.

:class:`LocalRayCluster` starts ``ray start --head --block`` in its own temp dir on free ports, with the dashboard on
127.0.0.1, the public-interface listeners switched off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, measured on Ray
2.60) and token authentication on with a token of its own. It can add worker raylets (``ray start --address``) with
their own resources, kill one like a lost machine, and stops exactly the processes it started (never ``ray stop``,
which would stop every Ray cluster of the host). Integration tests use it to submit jobs and to simulate several
nodes on one host.

Why not Ray's own ``ray.cluster_utils.Cluster``: it starts nodes in-process through ``ray._private.node.Node``, not
through ``ray start`` as a user would; its nodes default to the host's IP address rather than loopback, it leaves token
authentication to the caller's environment, and writes the host-wide "current cluster" address file, so that any
bare ``ray.init()`` of another process on this shared machine would attach to it. The tests here check exactly the
``ray start`` command lines, loopback listeners and token that a user's set-up gets.

The command lines and environments are plain functions (:func:`head_command`, :func:`worker_command`,
:func:`node_environment`) so that they are unit-tested without starting anything.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import psutil

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
WORKER_LOOPBACK = "::ffff:127.0.0.1"
_PREDEFINED_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


class LocalClusterError(RuntimeError):
    """A local Ray node did not start, did not join, or did not become ready in time."""


@dataclass(frozen=True)
class NodeSpec:
    """What one local Ray node offers the scheduler: CPUs, GPUs and custom resources (e.g. ``{"sandbox": 2}``)."""

    num_cpus: int = 1
    num_gpus: int = 0
    resources: Mapping[str, float] = field(default_factory=dict)
    object_store_mb: int = 200

    def __post_init__(self) -> None:
        if self.num_cpus < 0:
            raise ValueError(f"NodeSpec.num_cpus must be >= 0, got {self.num_cpus}")
        if self.num_gpus < 0:
            raise ValueError(f"NodeSpec.num_gpus must be >= 0, got {self.num_gpus}")
        if self.object_store_mb < 75:
            raise ValueError(f"NodeSpec.object_store_mb must be >= 75 (Ray's minimum), got {self.object_store_mb}")
        for name, amount in self.resources.items():
            if not name or name in _PREDEFINED_RESOURCES:
                raise ValueError(f"NodeSpec.resources: {name!r} is not a custom resource name; use num_cpus/num_gpus")
            if not amount > 0:
                raise ValueError(f"NodeSpec.resources[{name!r}] must be > 0, got {amount}")
        object.__setattr__(self, "resources", MappingProxyType({k: float(v) for k, v in self.resources.items()}))

    def resource_flags(self) -> list[str]:
        flags = ["--num-cpus", str(self.num_cpus), "--num-gpus", str(self.num_gpus)]
        flags += ["--object-store-memory", str(self.object_store_mb << 20)]
        if self.resources:
            flags += ["--resources", json.dumps(dict(self.resources), sort_keys=True)]
        return flags


@dataclass(frozen=True)
class HeadPorts:
    """The head's fixed ports; every other port Ray picks at random. Pick free ones with :meth:`free`."""

    gcs: int
    dashboard: int
    client_server: int
    dashboard_agent: int

    def __post_init__(self) -> None:
        ports = (self.gcs, self.dashboard, self.client_server, self.dashboard_agent)
        if any(not 1024 <= port < 65536 for port in ports):
            raise ValueError(f"HeadPorts must be unprivileged ports in [1024, 65536), got {ports}")
        if len(set(ports)) != len(ports):
            raise ValueError(f"HeadPorts must be distinct, got {ports}")

    @classmethod
    def free(cls) -> HeadPorts:
        return cls(*free_ports(4))


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on loopback right now (held open together so that they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def head_command(spec: NodeSpec, ports: HeadPorts, temp_dir: str | Path) -> list[str]:
    """``ray start --head`` in the foreground (``--block``), bound to loopback with the dashboard on 127.0.0.1."""
    return [
        "ray",
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        LOOPBACK,
        "--port",
        str(ports.gcs),
        "--dashboard-host",
        LOOPBACK,
        "--dashboard-port",
        str(ports.dashboard),
        "--ray-client-server-port",
        str(ports.client_server),
        "--dashboard-agent-listen-port",
        str(ports.dashboard_agent),
        "--temp-dir",
        str(temp_dir),
        "--disable-usage-stats",
        *spec.resource_flags(),
    ]


def worker_command(spec: NodeSpec, gcs_port: int, dashboard_agent_port: int, temp_dir: str | Path) -> list[str]:
    """``ray start --address`` in the foreground: one more raylet joining the head on this host's loopback.

    The head is addressed as ``[::ffff:127.0.0.1]``, loopback written so that Ray does not recognise it: a worker
    ``ray start`` rewrites ``127.0.0.1``/``localhost`` to the machine's public IP, where a loopback head is not
    listening.
    """
    return [
        "ray",
        "start",
        "--block",
        "--address",
        f"[{WORKER_LOOPBACK}]:{gcs_port}",
        "--node-ip-address",
        WORKER_LOOPBACK,
        "--dashboard-agent-listen-port",
        str(dashboard_agent_port),
        "--temp-dir",
        str(temp_dir),
        "--disable-usage-stats",
        *spec.resource_flags(),
    ]


def node_environment(
    base: Mapping[str, str], token_path: str | Path, *, head: bool, python: str = sys.executable
) -> dict[str, str]:
    """The environment of a ``ray start`` (or of a driver, with ``head=True``).

    The interpreter's directory leads ``PATH`` so that the raylet's workers and submitted jobs run in the same
    virtualenv. Token authentication is forced on with the cluster's own token file. The head (and drivers) run with
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which makes Ray 2.60 bind every listener to loopback; a worker raylet
    cannot: ``ray start --address`` refuses to join a cluster under that setting, so worker raylets of a local
    simulation listen on all interfaces (behind the token).
    """
    env = dict(base)
    env["PATH"] = os.pathsep.join([str(Path(python).parent), env.get("PATH", os.defpath)])
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_ADDRESS", None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0" if head else "1"
    return env


@dataclass(frozen=True)
class Listener:
    """One listening TCP socket of a process."""

    pid: int
    process: str
    ip: str
    port: int

    @property
    def loopback_only(self) -> bool:
        address = ipaddress.ip_address(self.ip.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback


def listeners_of(pids: Iterable[int]) -> list[Listener]:
    """The listening TCP sockets (IPv4 and IPv6) of the given processes; processes that are gone are skipped."""
    found = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            name = process.name()
            connections = process.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        found += [
            Listener(pid, name, conn.laddr.ip, conn.laddr.port)
            for conn in connections
            if conn.status == psutil.CONN_LISTEN
        ]
    return found


class LocalNode:
    """One ``ray start --block`` process and everything it spawned."""

    def __init__(self, command: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.command = command
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, env=dict(env), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self._known: dict[int, psutil.Process] = {}
        self.node_id: str | None = None

    def processes(self) -> list[psutil.Process]:
        """Every live process of this node (refreshes the set remembered for :meth:`stop`)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.process.pid)
            for process in [root, *root.children(recursive=True)]:
                self._known.setdefault(process.pid, process)
        return [p for p in self._known.values() if _alive(p)]

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes()]

    def raylet_node_id(self) -> str | None:
        """The node id from the raylet's command line, once the raylet runs."""
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                if process.name() == "raylet":
                    for arg in process.cmdline():
                        if arg.startswith("--node_id="):
                            return arg.split("=", 1)[1]
        return None

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def kill(self) -> None:
        """SIGKILL every process of the node at once, like a machine that vanished."""
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                process.kill()
        self._reap()

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the ``ray start --block`` process (it stops its node), then SIGKILL whatever is left."""
        self.processes()
        if self.running():
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace_s)
        deadline = time.monotonic() + 5.0
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                process.kill()
        self._reap()

    def _reap(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        psutil.wait_procs(list(self._known.values()), timeout=5)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class LocalRayCluster:
    """A Ray head on loopback, plus worker raylets on the same host; a context manager that stops what it started.

    ``gcs_address`` is for ``ray.init(address=...)`` and ``ray start --address``; ``dashboard_url`` for
    ``ray job submit --address`` and the state API; :meth:`driver_env` is the environment a driver or ``ray job``
    command needs (token, PATH, loopback).
    """

    def __init__(
        self,
        head: NodeSpec | None = None,
        *,
        temp_dir: str | Path | None = None,
        ready_timeout_s: float = 120.0,
        system_env: Mapping[str, str] | None = None,
    ) -> None:
        self.head_spec = head or NodeSpec()
        self.ready_timeout_s = ready_timeout_s
        self._owns_temp_dir = temp_dir is None
        # Short: Ray's Unix socket paths live under it and must stay below 108 bytes.
        self.temp_dir = Path(temp_dir or tempfile.mkdtemp(prefix="btpray-", dir="/tmp"))
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.token_path = self.temp_dir / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self.ports = HeadPorts.free()
        self._base_env = {**os.environ, **(system_env or {})}
        self.head: LocalNode | None = None
        self.workers: list[LocalNode] = []

    @property
    def gcs_address(self) -> str:
        return f"{LOOPBACK}:{self.ports.gcs}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.dashboard}"

    def token(self) -> str:
        return self.token_path.read_text().strip()

    def driver_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a driver (``RAY_ADDRESS`` = the GCS) or a ``ray job`` CLI call (pass the dashboard URL
        as ``--address``)."""
        env = node_environment({**self._base_env, **(base or {})}, self.token_path, head=True)
        env["RAY_ADDRESS"] = self.gcs_address
        return env

    # ------------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> LocalRayCluster:
        if self.head is not None:
            raise LocalClusterError("LocalRayCluster.start: the head is already started")
        env = node_environment(self._base_env, self.token_path, head=True)
        command = head_command(self.head_spec, self.ports, self.temp_dir)
        self.head = LocalNode(command, env, self.temp_dir / "head.log")
        try:
            self._wait_for(lambda: self._dashboard_get("/api/version") is not None, "the head's dashboard", self.head)
            self.head.node_id = self._wait_for(self.head.raylet_node_id, "the head's raylet", self.head)
            self._wait_for(lambda: self._node_state(self.head.node_id) == "ALIVE", "the head node", self.head)
        except BaseException:
            self.stop()
            raise
        logger.info("local Ray head at %s, dashboard %s", self.gcs_address, self.dashboard_url)
        return self

    def add_worker(self, spec: NodeSpec) -> LocalNode:
        """Start one more raylet with ``spec``'s resources and wait until the head lists it ALIVE."""
        if self.head is None:
            raise LocalClusterError("LocalRayCluster.add_worker: start the head first")
        env = node_environment(self._base_env, self.token_path, head=False)
        (agent_port,) = free_ports(1)
        command = worker_command(spec, self.ports.gcs, agent_port, self.temp_dir)
        node = LocalNode(command, env, self.temp_dir / f"worker-{len(self.workers)}.log")
        self.workers.append(node)
        node.node_id = self._wait_for(node.raylet_node_id, "the worker's raylet", node)
        self._wait_for(lambda: self._node_state(node.node_id) == "ALIVE", "the worker node to join", node)
        return node

    def kill_worker(self, node: LocalNode) -> None:
        """Kill a worker raylet and all its workers at once (a lost machine)."""
        node.kill()

    def stop(self) -> None:
        """Stop the workers, then the head, and remove the temp dir if this object made it."""
        for node in reversed(self.workers):
            node.stop()
        if self.head is not None:
            self.head.stop()
        if self._owns_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def all_pids(self) -> list[int]:
        nodes = [self.head, *self.workers] if self.head else self.workers
        return [pid for node in nodes for pid in node.pids()]

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --------------------------------------------------------------------------------------------------- queries
    def node_states(self) -> dict[str, str]:
        """``{node_id: state}`` of every node the head knows (ALIVE or DEAD)."""
        answer = self._dashboard_get("/api/v0/nodes?limit=1000&detail=false")
        if answer is None:
            return {}
        rows = answer.get("data", {}).get("result", {}).get("result", [])
        return {row["node_id"]: row["state"] for row in rows}

    def _node_state(self, node_id: str | None) -> str | None:
        return self.node_states().get(node_id) if node_id else None

    def _dashboard_get(self, path: str) -> dict[str, Any] | None:
        request = urllib.request.Request(self.dashboard_url + path, headers={"Authorization": f"Bearer {self.token()}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read())
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def _wait_for(self, probe: Any, what: str, node: LocalNode) -> Any:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value
            if not node.running():
                raise LocalClusterError(f"waiting for {what}: `{' '.join(node.command)}` exited:\n{node.log_tail()}")
            time.sleep(0.5)
        raise LocalClusterError(f"waiting for {what}: not ready after {self.ready_timeout_s} s:\n{node.log_tail()}")
