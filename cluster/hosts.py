"""A cluster of real network hosts on one Linux machine, for tests and for trying multi-node
training: each host is a network namespace with its own address on a private bridge.

    sudo .venv/bin/python -m dcgan_cluster.hosts up --workers 2    # head + 2 worker hosts
    sudo .venv/bin/python -m dcgan_cluster.hosts exec client -- \\
        .venv/bin/python -m dcgan_cluster.submit --address http://10.99.0.1:8265 -- \\
        dcgan train-distributed --workers 2 --out /tmp/dcgan-hosts/runs/x \\
        --storage /tmp/dcgan-hosts/ray
    sudo .venv/bin/python -m dcgan_cluster.hosts cut worker1      # pull worker1's cable
    sudo .venv/bin/python -m dcgan_cluster.hosts restore worker1
    sudo .venv/bin/python -m dcgan_cluster.hosts down             # everything removed

The topology (docs/deployment.md maps it to real machines): a switch namespace holds a
bridge; every host namespace (``head``, ``workerN``, ``prometheus``, ``client``) has one
veth cable into it and an address of SUBNET (default 10.99.0.0/24: head .1, workers .2...,
prometheus .250, client .251). Nothing is added to the machine's own network namespace,
so test traffic never leaves these namespaces. Ray runs on the head and on every worker host
with ``--node-ip-address`` (the host's address), its own temp dir and token authentication
(the token is in STATE/token, mode 0600, and reaches processes through their environment).
The file system stays shared: STATE/ray stands in for the shared storage (NFS, S3) that
multi-node Ray Train needs. ``cut`` and ``restore`` set a host's switch port down and up:
its cable, not its processes. Needs root (``ip netns``).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dcgan.errors import error_line

DEFAULT_STATE = Path("/tmp/dcgan-hosts")  # short: Ray's socket paths live under it
DEFAULT_SUBNET = "10.99.0.0/24"
DEFAULT_PREFIX = "dcgh"
STATE_FILE = "hosts.json"
RAY_PORT, DASHBOARD_PORT = 6379, 8265  # Ray's defaults: each host has its own ports
PROMETHEUS_OFFSET, CLIENT_OFFSET = 250, 251
START_TIMEOUT_S = 180.0


class HostsError(Exception):
    """The test hosts cannot be made, used or removed (one line, for the console)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise HostsError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc


@dataclass
class Host:
    name: str  # head, worker1, ..., prometheus, client
    netns: str
    address: str
    port: str  # its cable's end in the switch namespace
    ray_pid: int | None = None  # the `ray start --block` process (its own process group)

    @property
    def is_ray_node(self) -> bool:
        return self.name == "head" or self.name.startswith("worker")


@dataclass
class Hosts:
    """The hosts of one ``up``, as kept in STATE/hosts.json (so ``down`` works from
    another process, also after a crash)."""

    state: Path
    prefix: str
    subnet: str
    hosts: dict[str, Host] = field(default_factory=dict)

    # -- naming ---------------------------------------------------------------------------
    @property
    def switch(self) -> str:
        return f"{self.prefix}-switch"

    @property
    def token_file(self) -> Path:
        return self.state / "token"

    @property
    def storage(self) -> Path:
        """The shared storage path every host sees (Ray Train's ``storage_path``)."""
        return self.state / "ray"

    @property
    def head(self) -> Host:
        return self.hosts["head"]

    @property
    def gcs_address(self) -> str:
        return f"{self.head.address}:{RAY_PORT}"

    @property
    def dashboard(self) -> str:
        return f"http://{self.head.address}:{DASHBOARD_PORT}"

    def workers(self) -> list[Host]:
        return [h for n, h in self.hosts.items() if n.startswith("worker")]

    def host(self, name: str) -> Host:
        if name not in self.hosts:
            raise HostsError(f"no host {name!r} (hosts: {', '.join(self.hosts)})")
        return self.hosts[name]

    def env(self) -> dict[str, str]:
        """The environment of a process on a host: the cluster's token, no caller's
        RAY_ADDRESS."""
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token_file.read_text().strip(),
                   PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
        return env

    # -- persistence ----------------------------------------------------------------------
    def save(self) -> None:
        data = {"prefix": self.prefix, "subnet": self.subnet,
                "hosts": {n: asdict(h) for n, h in self.hosts.items()}}
        tmp = self.state / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.state / STATE_FILE)

    @classmethod
    def load(cls, state: Path) -> Hosts:
        try:
            data = json.loads((state / STATE_FILE).read_text())
            hosts = cls(state, data["prefix"], data["subnet"])
            hosts.hosts = {n: Host(**h) for n, h in data["hosts"].items()}
        except FileNotFoundError:
            raise HostsError(f"no test hosts are up under {state} (no {STATE_FILE})") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise HostsError(f"{state / STATE_FILE} is unreadable: {exc}") from None
        return hosts

    # -- the network ----------------------------------------------------------------------
    def create(self, workers: int) -> None:
        net = ipaddress.ip_network(self.subnet)
        if not net.is_private or net.num_addresses < 256:
            raise HostsError(f"--subnet {self.subnet}: give a private /24 or larger")
        existing = namespaces(self.prefix)
        if existing:
            raise HostsError(f"test hosts with prefix {self.prefix} exist already "
                             f"({', '.join(existing)}): run `down` first")
        names = ["head", *(f"worker{i}" for i in range(1, workers + 1)), "prometheus",
                 "client"]
        offsets = {"prometheus": PROMETHEUS_OFFSET, "client": CLIENT_OFFSET}
        self.state.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        self.token_file.write_text(secrets.token_hex(32) + "\n")
        self.token_file.chmod(0o600)
        _ip("netns", "add", self.switch)
        self.save()  # from here on, `down` finds what to remove
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, name in enumerate(names):
            address = str(net[offsets.get(name, i + 1)])
            host = Host(name, f"{self.prefix}-{name}", address, f"p{i}")
            _ip("netns", "add", host.netns)
            self.hosts[name] = host
            self.save()
            # Both ends are created inside namespaces: the machine's own has no new link.
            _ip("-n", self.switch, "link", "add", host.port, "type", "veth", "peer", "name",
                "eth0", "netns", host.netns)
            _ip("-n", self.switch, "link", "set", host.port, "master", "br0", "up")
            _ip("-n", host.netns, "addr", "add", f"{address}/{net.prefixlen}", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")

    def cut(self, name: str) -> None:
        """Pull the host's cable: its switch port goes down (both sides lose the link)."""
        _ip("-n", self.switch, "link", "set", self.host(name).port, "down")

    def restore(self, name: str) -> None:
        _ip("-n", self.switch, "link", "set", self.host(name).port, "up")

    def link_up(self, name: str) -> bool:
        out = _ip("-n", self.switch, "-o", "link", "show", self.host(name).port).stdout
        return "state UP" in out or ",UP" in out.split(">")[0]

    def bytes_on(self, name: str) -> dict[str, int]:
        """Bytes through the host's interface (its cable), both directions."""
        out = _ip("-n", self.host(name).netns, "-s", "-j", "link", "show", "eth0").stdout
        stats = json.loads(out)[0]["stats64"]
        return {"rx": int(stats["rx"]["bytes"]), "tx": int(stats["tx"]["bytes"])}

    # -- processes ------------------------------------------------------------------------
    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.host(name).netns, *argv]

    def popen(self, name: str, argv: Sequence[str], log: Path, **kw) -> subprocess.Popen:
        """A process on host ``name`` in its own process group, output in ``log``."""
        with open(log, "w") as out:
            return subprocess.Popen(self.command(name, argv), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=kw.pop("env", self.env()), **kw)

    def run(self, name: str, argv: Sequence[str], timeout: float = 120,
            **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(name, argv), capture_output=True, text=True,
                              timeout=timeout, env=kw.pop("env", self.env()), **kw)

    def start_ray(self, name: str, cpus: int, node_ip: str | None = None) -> None:
        """``ray start --block`` on host ``name`` (the head, or a node joining it), advertising
        ``node_ip`` (default: the host's own address)."""
        host = self.host(name)
        temp = self.state / name
        temp.mkdir(exist_ok=True)
        head = name == "head"
        # Through the project's node start, which refuses an address the head cannot reach.
        argv = [sys.executable, "-m", "dcgan_cluster.node",
                f"--node-ip-address={node_ip or host.address}", "--", "--block",
                f"--num-cpus={cpus}",
                f"--temp-dir={temp}", "--disable-usage-stats",
                *(["--head", f"--port={RAY_PORT}", "--include-dashboard=true",
                   "--dashboard-host=0.0.0.0", f"--dashboard-port={DASHBOARD_PORT}"] if head
                  else [f"--address={self.gcs_address}"])]
        proc = self.popen(name, argv, self.state / f"{name}.log")
        host.ray_pid = proc.pid
        self.save()
        deadline = time.monotonic() + START_TIMEOUT_S
        log = self.state / f"{name}.log"
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                _kill_group(proc.pid)
                tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
                raise HostsError(f"Ray did not start on {name}: {tail[0][:300]}")
            time.sleep(0.5)

    def stop_ray(self, name: str) -> None:
        host = self.host(name)
        if host.ray_pid is not None:
            _kill_group(host.ray_pid)
            host.ray_pid = None
            self.save()
        _kill_pids(netns_pids(host.netns))

    def alive_nodes(self) -> int:
        """How many nodes the head counts alive (-1: the head did not answer)."""
        probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', "
                 "log_to_driver=False); print('alive', sum(n['Alive'] for n in ray.nodes()))")
        proc = self.run("head", [sys.executable, "-c", probe, self.gcs_address])
        counts = [line.split()[1] for line in proc.stdout.splitlines()
                  if line.startswith("alive ")]
        return int(counts[-1]) if proc.returncode == 0 and counts else -1

    def wait_for_nodes(self, count: int, timeout: float = START_TIMEOUT_S) -> None:
        """Until the head counts ``count`` alive nodes."""
        deadline = time.monotonic() + timeout
        while (alive := self.alive_nodes()) != count:
            if time.monotonic() > deadline:
                raise HostsError(f"the head counts {alive} alive nodes, not {count}, after "
                                 f"{timeout:.0f} s")
            time.sleep(2)

    # -- teardown -------------------------------------------------------------------------
    def remove(self) -> list[str]:
        """Stop every process on every host and delete every namespace (and so every
        cable); return what was left afterwards (nothing, unless removal failed)."""
        left = teardown(self.prefix, [h.ray_pid for h in self.hosts.values() if h.ray_pid])
        if not left:
            (self.state / STATE_FILE).unlink(missing_ok=True)
        return left


def namespaces(prefix: str) -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split() and line.split()[0].startswith(prefix + "-")]


def netns_pids(netns: str) -> list[int]:
    out = _ip("netns", "pids", netns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _kill_group(pid: int, grace: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            os.killpg(pid, 0)  # raises once the group is gone
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)


def _kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def teardown(prefix: str, groups: Sequence[int] = ()) -> list[str]:
    """Remove every namespace named ``prefix-*`` with every process in it. Returns what
    is still there afterwards (namespaces, processes), for the caller to report."""
    for pid in groups:
        _kill_group(pid)
    for netns in namespaces(prefix):
        for _ in range(20):  # a process may fork while we kill
            pids = netns_pids(netns)
            if not pids:
                break
            _kill_pids(pids)
            time.sleep(0.25)
        _ip("netns", "del", netns, check=False)
    left = namespaces(prefix)
    left += [f"pid {pid}" for pid in groups if _alive(pid)]
    return left


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own child not yet reaped) counts as gone.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
            return False
    return True


def up(state: Path = DEFAULT_STATE, workers: int = 2, *, prefix: str = DEFAULT_PREFIX,
       subnet: str = DEFAULT_SUBNET, cpus_per_worker: int = 1, ray: bool = True) -> Hosts:
    """Make the hosts and start Ray on the head and every worker host; on any failure,
    remove what was made and raise."""
    if os.geteuid() != 0:
        raise HostsError("the test hosts need root (ip netns): run as root or with sudo")
    if shutil.which("ip") is None:
        raise HostsError("the test hosts need iproute2's `ip` (apt-get install iproute2)")
    hosts = Hosts(state, prefix, subnet)
    try:
        hosts.create(workers)
        if ray:
            # The head runs the drivers and Ray Train's controller; workers train.
            hosts.start_ray("head", cpus=0)
            for worker in hosts.workers():
                hosts.start_ray(worker.name, cpus=cpus_per_worker)
            hosts.wait_for_nodes(1 + workers)
    except BaseException:
        hosts.remove()
        raise
    return hosts


@contextlib.contextmanager
def running(state: Path, workers: int = 2, **kw) -> Iterator[Hosts]:
    """``up`` for the length of a ``with`` block, then everything removed, whatever
    happens inside it."""
    hosts = up(state, workers, **kw)
    try:
        yield hosts
    finally:
        left = hosts.remove()
        if left:
            raise HostsError(f"teardown left {', '.join(left)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dcgan_cluster.hosts", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state", type=Path, default=DEFAULT_STATE,
                   help=f"folder of the hosts' state, logs, token and storage ({DEFAULT_STATE})")
    sub = p.add_subparsers(dest="action", required=True)
    u = sub.add_parser("up", help="make the hosts and start Ray on them")
    u.add_argument("--workers", type=int, default=2)
    u.add_argument("--cpus-per-worker", type=int, default=1)
    u.add_argument("--subnet", default=DEFAULT_SUBNET)
    u.add_argument("--prefix", default=DEFAULT_PREFIX, help="namespace name prefix")
    u.add_argument("--no-ray", action="store_true", help="only the network")
    sub.add_parser("down", help="stop everything and remove the hosts")
    sub.add_parser("status", help="the hosts, their addresses and cables")
    for action in ("cut", "restore"):
        c = sub.add_parser(action, help=f"{action} a host's cable")
        c.add_argument("host")
    e = sub.add_parser("exec", help="run a command on a host (with the cluster's token)")
    e.add_argument("host")
    e.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    try:
        return _act(args)
    except HostsError as exc:
        print(error_line(exc), file=sys.stderr)
        return 1


def _act(args: argparse.Namespace) -> int:
    if args.action == "up":
        if not 1 <= args.workers <= 200:
            raise HostsError(f"--workers must be in 1-200 (got {args.workers})")
        hosts = up(args.state, args.workers, prefix=args.prefix, subnet=args.subnet,
                   cpus_per_worker=args.cpus_per_worker, ray=not args.no_ray)
        print(f"{len(hosts.hosts)} hosts up on {hosts.subnet}; Ray head at "
              f"{hosts.gcs_address}, dashboard {hosts.dashboard}; shared storage "
              f"{hosts.storage}; `down` removes them")
        return 0
    if args.action == "down":
        try:
            hosts = Hosts.load(args.state)
            left = hosts.remove()
        except HostsError:
            left = teardown(DEFAULT_PREFIX)
        if left:
            raise HostsError(f"teardown left {', '.join(left)}")
        print("test hosts removed")
        return 0
    hosts = Hosts.load(args.state)
    if args.action == "status":
        for h in hosts.hosts.values():
            print(f"{h.name:<11} {h.address:<15} netns {h.netns:<18} cable "
                  f"{'up' if hosts.link_up(h.name) else 'CUT'}"
                  + (f"  ray pid {h.ray_pid}" if h.ray_pid else ""))
        return 0
    if args.action in ("cut", "restore"):
        getattr(hosts, args.action)(args.host)
        print(f"{args.host}: cable {'cut' if args.action == 'cut' else 'restored'}")
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise HostsError("give the command to run after --")
    return subprocess.call(hosts.command(args.host, command), env=hosts.env())


if __name__ == "__main__":
    sys.exit(main())
