"""Start a Ray node after checking the address it will advertise: ``ray start`` with an
address this host does not hold (a typo, another host's, a NAT's outside address) waits a
minute for a raylet the head can never reach and then fails with a traceback; this refuses
it in one line, in a second.

    python -m dcgan_cluster.node --node-ip-address 10.0.0.12 -- --address 10.0.0.1:6379 --block

Everything after ``--`` goes to ``ray start`` unchanged. Checks: the address is one of this
host's own (an interface holds it), and, for a node joining a head, the head's GCS port
answers from that address (the route the raylet will use).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys

from dcgan.errors import error_line
from dcgan_cluster.network import interface_addresses, interface_of

CONNECT_TIMEOUT_S = 5.0


class NodeAddressError(Exception):
    pass


def check_node_address(node_ip: str, head: str | None) -> None:
    try:
        ipaddress.ip_address(node_ip)
    except ValueError:
        raise NodeAddressError(f"--node-ip-address {node_ip!r} is not an IP address") from None
    if interface_of(node_ip) is None:
        raise NodeAddressError(
            f"--node-ip-address {node_ip} is not an address of this host (it has "
            f"{', '.join(sorted(interface_addresses().values()))}): the head could never "
            "reach this node; "
            "advertise one of this host's own addresses")
    if head is None:
        return
    host, _, port = head.rpartition(":")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(CONNECT_TIMEOUT_S)
            s.bind((node_ip, 0))
            s.connect((host, int(port)))
    except (OSError, ValueError) as exc:
        raise NodeAddressError(
            f"the head {head} does not answer from {node_ip} "
            f"({getattr(exc, 'strerror', None) or exc}): check the route and the firewall "
            "between this host and the head (docs/deployment.md lists the ports)") from None


def _ray_arg(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dcgan_cluster.node", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node-ip-address", required=True,
                   help="the address this node advertises to the cluster")
    p.add_argument("ray_args", nargs=argparse.REMAINDER, help="-- ray start arguments")
    args = p.parse_args(argv)
    ray_args = args.ray_args[1:] if args.ray_args[:1] == ["--"] else args.ray_args
    try:
        check_node_address(args.node_ip_address, _ray_arg(ray_args, "address"))
    except NodeAddressError as exc:
        print(error_line(exc), file=sys.stderr)
        return 1
    command = [sys.executable, "-m", "ray.scripts.scripts", "start",
               f"--node-ip-address={args.node_ip_address}", *ray_args]
    os.execv(command[0], command)  # the node's process from here on: signals reach Ray
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
