"""A real multi-process Ray cluster on this machine, for tests: ``ray start --head`` and ``ray start --address``.

Each node is its own ``ray start --block`` process tree (own session, own temp dir, own ports), as on a
cluster of machines; token authentication is on (a fresh token file, mode 600, never ``~/.ray/auth_token``), the
dashboard and Jobs API listen on 127.0.0.1 only. Nodes are stopped by process group (SIGTERM, then SIGKILL),
never by ``ray stop``, which would kill every Ray on the shared machine.

    with RealCluster(tmp_path) as cluster:
        cluster.start_head(num_cpus=0)
        a = cluster.add_worker("a", num_cpus=1)
        subprocess.run([... "ranksearch", "sweep", space, "--address", cluster.address], env=cluster.env())
        cluster.kill_raylet(a)      # the node is lost as when its machine dies
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
# ports of one node: gcs/node manager/object manager/agents/metrics, then its workers' port range
NODE_PORTS = ("port", "node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port", "dashboard-port")  # fmt: skip
BLOCK = 64  # ports reserved per node: the named ones above, then the worker port range


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    temp_dir: Path
    ports: dict[str, int]
    log: Path
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def raylet(self) -> psutil.Process:
        """This node's raylet (a child of its ``ray start`` process)."""
        for child in psutil.Process(self.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.name() == "raylet":
                    return child
        raise RuntimeError(f"node {self.name}: no raylet running ({self.log.read_text()[-2000:]})")

    def node_id(self) -> str:
        """The Ray node id (from the raylet's command line)."""
        for arg in self.raylet().cmdline():
            if arg.startswith("--node_id="):
                return arg.split("=", 1)[1]
        raise RuntimeError(f"node {self.name}: raylet without --node_id")


class RealCluster:
    """A head and workers as separate ``ray start`` processes (see module docstring)."""

    def __init__(self, root: Path | None = None, extra_env: dict[str, str] | None = None):
        # socket paths live under the temp dir and must stay under 107 bytes: a short private folder
        self.root = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.token_path = self.root / "token"
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        self.extra_env = dict(extra_env or {})
        self.nodes: dict[str, Node] = {}
        self.head: Node | None = None

    # ------------------------------------------------------------------------------------------- env
    def env(self, **more: str) -> dict[str, str]:
        """The environment of a client of this cluster (drivers, ``ray`` CLI, ``ranksearch submit``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(
            RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path), RAY_USAGE_STATS_ENABLED="0",
            # trials print nothing the tests read; keep Ray's log deduplication out of the way
            RAY_DEDUP_LOGS="0",
        )  # fmt: skip
        env.update(self.extra_env)
        env.update(more)
        return env

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()

    @property
    def address(self) -> str:
        """GCS address for ``ray.init(address=...)`` / ``ranksearch sweep --address``."""
        assert self.head is not None, "start_head() first"
        return f"127.0.0.1:{self.head.ports['port']}"

    @property
    def dashboard_url(self) -> str:
        """The Jobs API / dashboard (``ranksearch submit --address``)."""
        assert self.head is not None, "start_head() first"
        return f"http://127.0.0.1:{self.head.ports['dashboard-port']}"

    # ------------------------------------------------------------------------------------------- nodes
    def start_head(self, num_cpus: float = 0, num_gpus: float = 0, resources: dict | None = None) -> Node:
        ports = _free_block()
        args = ["--head", f"--port={ports['port']}", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={ports['dashboard-port']}", "--include-dashboard=true"]  # fmt: skip
        self.head = self._start("head", args, ports, num_cpus, num_gpus, resources)
        _wait_for_port(ports["dashboard-port"], self.head, timeout_s=90)
        return self.head

    def add_worker(
        self, name: str, num_cpus: float = 1, num_gpus: float = 0, resources: dict | None = None
    ) -> Node:
        ports = _free_block()
        return self._start(name, [f"--address={self.address}"], ports, num_cpus, num_gpus, resources)

    def _start(
        self, name: str, args: list[str], ports: dict[str, int], num_cpus: float, num_gpus: float,
        resources: dict | None,
    ) -> Node:  # fmt: skip
        temp = self.root / name
        temp.mkdir()
        res = {name: 1.0, **(resources or {})}  # each node has a resource named after it (distinct resources)
        named = [f"--{p}={ports[p]}" for p in NODE_PORTS if p not in ("port", "dashboard-port")]
        cmd = [
            RAY, "start", "--block", *args, *named, f"--min-worker-port={ports['workers'][0]}",
            f"--max-worker-port={ports['workers'][1]}", f"--temp-dir={temp}", f"--num-cpus={num_cpus}",
            f"--num-gpus={num_gpus}", f"--resources={json.dumps(res)}", "--object-store-memory=80000000",
            "--disable-usage-stats",
        ]  # fmt: skip
        log = self.root / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True
            )
        node = Node(name, proc, temp, ports, log, res)
        self.nodes[name] = node
        self._wait_alive(node)
        return node

    def _wait_alive(self, node: Node, timeout_s: float = 120) -> None:
        """Until the node is registered with the GCS (its raylet answers), or raise with its log."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if node.process.poll() is not None:
                raise RuntimeError(f"ray start for {node.name} exited:\n{node.log.read_text()[-3000:]}")
            if "This command will now block forever" in node.log.read_text(errors="replace"):
                with contextlib.suppress(RuntimeError):
                    node.raylet()
                    return
            time.sleep(0.5)
        raise RuntimeError(
            f"node {node.name} did not start in {timeout_s} s:\n{node.log.read_text()[-3000:]}"
        )

    def alive_node_ids(self) -> set[str]:
        """Node ids the GCS reports alive (asked from a short-lived client process, not this one)."""
        code = f"import json, ray; ray.init(address={self.address!r}, log_to_driver=False); "
        code += "print('NODES=' + json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))"
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        line = next(x for x in out.stdout.splitlines() if x.startswith("NODES="))
        return set(json.loads(line[len("NODES=") :]))

    def kill_raylet(self, node: Node) -> int:
        """SIGKILL the node's raylet, as when its machine dies; its ``ray start`` then takes the rest down."""
        raylet = node.raylet()
        raylet.send_signal(signal.SIGKILL)
        return raylet.pid

    def stop_node(self, node: Node, timeout_s: float = 20) -> None:
        """Stop one node's whole process tree: SIGTERM its group, SIGKILL what is left after ``timeout_s``."""
        procs = []
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(node.pid)
            procs = [root, *root.children(recursive=True)]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(node.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=timeout_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(node.pid, signal.SIGKILL)
        for p in alive:  # a process that left the group (Ray workers do not, but be sure)
            with contextlib.suppress(psutil.Error):
                p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.process.wait(timeout=10)

    def stop(self) -> None:
        for node in reversed(list(self.nodes.values())):  # workers first, the head last
            self.stop_node(node)

    def __enter__(self) -> RealCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_block() -> dict:
    """``BLOCK`` consecutive free TCP ports (named node ports, then a worker port range)."""
    for _ in range(200):
        base = secrets.randbelow(50000 - 20000) + 20000
        if all(_port_free(p) for p in range(base, base + BLOCK)):
            ports: dict = {name: base + i for i, name in enumerate(NODE_PORTS)}
            ports["workers"] = (base + len(NODE_PORTS), base + BLOCK - 1)
            return ports
    raise RuntimeError("no block of free ports found")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _wait_for_port(port: int, node: Node, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if node.process.poll() is not None:
            break
        time.sleep(0.5)
    raise RuntimeError(f"port {port} of {node.name} never opened:\n{node.log.read_text()[-3000:]}")
