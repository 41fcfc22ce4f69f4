"""The address a room reaches this server at: `python -m optlab.netaddr` prints it (make workshop)."""
from __future__ import annotations

import ipaddress
import socket


def lan_address() -> str:
    """This machine's address on the network its default route leaves by (no packet is sent: a UDP
    socket's connect only picks the route); 127.0.0.1 when there is no network."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return "127.0.0.1"
    return address if not ipaddress.ip_address(address).is_unspecified else "127.0.0.1"


if __name__ == "__main__":
    print(lan_address())
