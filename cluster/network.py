"""The network a Ray node is on, as DDP needs it across hosts.

Gloo picks its interface from the machine's hostname, which on many hosts (and in every
container or namespace sharing one /etc/hosts) resolves to 127.0.0.1 or 127.0.1.1: rank 0
then advertises a loopback address and the other hosts' ranks fail with "connectFullMesh
failed ... Connection refused, remote=[127.0.0.1]". Each worker process therefore pins Gloo
to the interface that holds its Ray node's address (the ``--node-ip-address`` the operator
gave, or Ray's choice), unless ``GLOO_SOCKET_IFNAME`` is set already. Nothing here imports
Ray at module level.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct

# Ray runs this in every Ray Train worker process before any actor code (RunConfig's
# worker_runtime_env), so before Ray Train sets up the process group.
SETUP_HOOK = "dcgan_cluster.network.pin_gloo_interface"


SIOCGIFADDR = 0x8915  # Linux: an interface's (primary) IPv4 address


def interface_addresses() -> dict[str, str]:
    """Interface name -> its IPv4 address, for every interface that has one (Linux)."""
    out = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR,
                                     struct.pack("256s", name[:15].encode()))
            except OSError:  # no IPv4 address
                continue
            out[name] = socket.inet_ntoa(packed[20:24])
    return out


def interface_of(address: str) -> str | None:
    """The name of the local interface that holds ``address`` (None if none does)."""
    return next((name for name, a in interface_addresses().items() if a == address), None)


def node_ip() -> str | None:
    """This Ray worker's node address, as its raylet advertises it."""
    import ray

    try:
        return ray._private.worker.global_worker.node_ip_address
    except Exception:  # noqa: BLE001 - not connected, or an older/newer Ray
        return None


def pin_gloo_interface() -> None:
    if os.environ.get("GLOO_SOCKET_IFNAME"):
        return  # the operator's choice wins
    address = node_ip()
    if not address or ipaddress.ip_address(address).is_loopback:
        return  # one machine: the loopback default is right
    name = interface_of(address)
    if name is not None:
        os.environ["GLOO_SOCKET_IFNAME"] = name
