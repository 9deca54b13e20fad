"""Several "machines" on one machine, for the many-hosts end-to-end test: network namespaces.

``host_network(names)`` builds, for one test run:

* a bridge ``awbr<token>`` in the root network namespace with ``10.<x>.<y>.1/24``: the address the shared
  services (PostgreSQL, S3, MongoDB) listen on; they are "the network";
* for each host a network namespace ``aw-<token>-<name>`` holding one end of a veth pair (the other end
  on the bridge) with its own address ``10.<x>.<y>.<2+i>/24`` and its own ``lo``. A process started
  there (``Host.wrap(argv)``) sees only that namespace's network: its own address, its own loopback, the
  bridge; not the root namespace's loopback, where other tests' servers listen;
* each host's processes also get their own host name (``unshare --uts``, then ``hostname``), so
  ``socket.gethostname()``, which the leases (:mod:`analysis_wrapper.ownership`) use to tell hosts
  apart, differs from host to host as it does between machines.

``<token>`` is random per test run, ``<x>.<y>`` is picked so that no address or route of the machine
falls inside ``10.<x>.<y>.0/24``, and everything made is removed on exit, also when the body fails or
when building fails half-way (the namespaces, whose removal also removes their veth ends, then the
bridge). A run killed with SIGKILL leaves ``aw-<token>-*`` namespaces and an ``awbr<token>`` bridge
behind: ``ip netns del`` / ``ip link del`` them by hand.

Once made, ``Network.check()`` proves the isolation (each host reaches the bridge and the other hosts,
not the root namespace's loopback, and has its own host name); a failed check raises.

Namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN). Where they cannot be made, ``host_network``
falls back to plain processes on 127.0.0.1 (``Network.isolated`` False, ``Network.reason`` says why)
unless ``AW_REQUIRE_NETNS=1`` (then it raises :class:`NetworkUnavailable`); the caller says so in its
output. ``AW_NETNS=0`` asks for that fallback (to try it, or to debug without namespaces). The
filesystem stays shared either way: keep each host's folders apart yourself.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"
REQUIRE_ENV = "AW_REQUIRE_NETNS"
DISABLE_ENV = "AW_NETNS"
IP_TIMEOUT_S = 20


class NetworkUnavailable(RuntimeError):
    """Network namespaces could not be made here (and ``AW_REQUIRE_NETNS=1`` asked for them)."""


@dataclass(frozen=True)
class Host:
    """One simulated machine: a role name, its host name, its address, its network namespace."""

    name: str
    hostname: str
    address: str
    netns: str | None = None

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as a process of this host: in its namespace, under its host name.

        Every step ``exec``s the next (``ip netns exec``, ``unshare`` without ``--fork``, ``sh -c 'exec
        …'``), so the process started is ``argv`` itself: its pid and process group are the ones
        ``subprocess.Popen`` reports, and a signal to that group reaches it and its children.
        """
        if self.netns is None:
            return list(argv)
        return [
            _tool("ip"),
            "netns",
            "exec",
            self.netns,
            _tool("unshare"),
            "--uts",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            self.hostname,
            *argv,
        ]

    def run(self, argv: Sequence[str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on this host and wait (output captured as text)."""
        return subprocess.run(self.wrap(argv), capture_output=True, text=True, timeout=timeout_s, check=False)


@dataclass
class Network:
    """The hosts of one test and the address the shared services listen on."""

    isolated: bool
    service_address: str
    hosts: dict[str, Host]
    bridge: str | None = None
    subnet: str | None = None
    reason: str = ""
    made: list[tuple[str, ...]] = field(default_factory=list, repr=False)

    def describe(self) -> str:
        if not self.isolated:
            return f"NO network namespaces ({self.reason}): every host on {LOOPBACK}, same host name"
        hosts = ", ".join(
            f"{h.name}={h.address} (netns {h.netns}, hostname {h.hostname})" for h in self.hosts.values()
        )
        return f"bridge {self.bridge} {self.service_address} ({self.subnet}); hosts: {hosts}"

    def check(self) -> None:
        """Each host reaches the services' address and every other host's address, and does NOT reach
        the root namespace's loopback (so it cannot use a server that is not on "the network"); each
        has its own host name. RuntimeError naming what failed."""
        if not self.isolated:
            return
        with _listener(self.service_address) as service_port, _listener(LOOPBACK) as loopback_port:
            for host in self.hosts.values():
                # (address, port, wanted): "open" = a listener answered; "refused" = the address is
                # reachable but nothing listens there (port 9: nobody does); anything else: unreachable.
                targets = [
                    (self.service_address, service_port, {"open"}),
                    (LOOPBACK, loopback_port, {"refused"}),  # its own lo, not the root namespace's
                    *((o.address, 9, {"refused"}) for o in self.hosts.values() if o is not host),
                ]
                done = host.run(
                    [sys.executable, "-c", _PROBE, json.dumps(targets, default=list)], timeout_s=30
                )
                if done.returncode != 0:
                    raise RuntimeError(f"network probe on {host.name} failed: {done.stdout}{done.stderr}")
                hostname, results = json.loads(done.stdout.strip().splitlines()[-1])
                if hostname != host.hostname:
                    raise RuntimeError(f"{host.name}: host name is {hostname!r}, not {host.hostname!r}")
                for (addr, port, wanted), got in zip(targets, results, strict=True):
                    if got not in wanted:
                        raise RuntimeError(
                            f"{host.name}: {addr}:{port} gave {got!r}, wanted {sorted(wanted)}"
                        )


_PROBE = """
import json, socket, sys
results = []
for addr, port, _ in json.loads(sys.argv[1]):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((addr, port))
        results.append("open")
    except ConnectionRefusedError:
        results.append("refused")
    except OSError as exc:
        results.append(f"error: {exc}")
    finally:
        s.close()
print(json.dumps([socket.gethostname(), results]))
"""


@contextlib.contextmanager
def _listener(address: str) -> Iterator[int]:
    sock = socket.socket()
    sock.bind((address, 0))
    sock.listen(16)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (f"{d}/{name}" for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin") if os.path.exists(f"{d}/{name}")),
        None,
    )
    if found is None:
        raise NetworkUnavailable(f"`{name}` is not installed")
    return found


def _ip(*args: str) -> None:
    done = subprocess.run(
        [_tool("ip"), *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise NetworkUnavailable(f"`ip {' '.join(args)}` failed: {(done.stdout + done.stderr).strip()}")


def _used_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Every IPv4 network of an address or route on this machine (root namespace)."""
    found = []
    for what in (["-4", "-j", "addr"], ["-4", "-j", "route"]):
        done = subprocess.run(
            [_tool("ip"), *what], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
        )
        try:
            items = json.loads(done.stdout or "[]")
        except ValueError:
            continue
        for item in items:
            for info in item.get("addr_info", []):
                found.append(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False))
            dst = item.get("dst")
            if dst and dst != "default":
                found.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
    return found


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    rng = random.Random()
    for _ in range(500):
        candidate = ipaddress.IPv4Network(f"10.{rng.randint(100, 250)}.{rng.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise NetworkUnavailable("no free 10.x.y.0/24 subnet found")


def namespaces_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they may be (root, tools present)."""
    if os.geteuid() != 0:
        return f"not root (uid {os.geteuid()})"
    for tool in ("ip", "unshare"):
        try:
            _tool(tool)
        except NetworkUnavailable as exc:
            return str(exc)
    return None


def _teardown(made: list[tuple[str, ...]]) -> list[str]:
    """Undo what was made, last first; every step is tried; the errors (if any) are returned."""
    errors = []
    for kind, name in reversed(made):  # type: ignore[misc]
        args = ["netns", "del", name] if kind == "netns" else ["link", "del", name]
        done = subprocess.run(
            [_tool("ip"), *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
        )
        if done.returncode != 0 and "No such" not in done.stderr and "Cannot find" not in done.stderr:
            errors.append(f"ip {' '.join(args)}: {done.stderr.strip()}")
    made.clear()
    return errors


def _build(names: Sequence[str], token: str, made: list[tuple[str, ...]]) -> Network:
    subnet = _free_subnet()
    addresses = list(subnet.hosts())
    bridge = f"awbr{token}"
    service = str(addresses[0])
    _ip("link", "add", bridge, "type", "bridge")
    made.append(("link", bridge))
    _ip("addr", "add", f"{service}/{subnet.prefixlen}", "dev", bridge)
    _ip("link", "set", bridge, "up")
    hosts = {}
    for i, name in enumerate(names):
        netns = f"aw-{token}-{name}"
        outside, inside = f"aw{token}v{i}", f"aw{token}h{i}"  # at most 15 characters
        address = str(addresses[1 + i])
        _ip("netns", "add", netns)
        made.append(("netns", netns))
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        made.append(("link", outside))  # removing either end removes the pair
        _ip("link", "set", outside, "master", bridge)
        _ip("link", "set", outside, "up")
        _ip("link", "set", inside, "netns", netns)
        _ip("-n", netns, "addr", "add", f"{address}/{subnet.prefixlen}", "dev", inside)
        _ip("-n", netns, "link", "set", inside, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        hosts[name] = Host(name=name, hostname=f"aw-{name}-{token}", address=address, netns=netns)
    return Network(
        isolated=True, service_address=service, hosts=hosts, bridge=bridge, subnet=str(subnet), made=made
    )


@contextlib.contextmanager
def host_network(names: Sequence[str]) -> Iterator[Network]:
    """The hosts ``names`` (short: letters, digits, ``-``), each in its own network namespace where
    that can be done; removed again on exit. See the module docstring."""
    reason = "turned off by AW_NETNS=0" if os.environ.get(DISABLE_ENV) == "0" else namespaces_unavailable()
    made: list[tuple[str, ...]] = []
    network: Network | None = None
    if reason is None:
        token = uuid.uuid4().hex[:6]
        try:
            network = _build(names, token, made)
        except (NetworkUnavailable, subprocess.TimeoutExpired) as exc:
            _teardown(made)
            network = None
            reason = str(exc)
        else:
            try:  # namespaces made but not working as they should: a real failure, no fallback
                network.check()
            except BaseException:
                _teardown(made)
                raise
    if network is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            raise NetworkUnavailable(f"network namespaces unavailable ({REQUIRE_ENV}=1): {reason}")
        network = Network(
            isolated=False,
            service_address=LOOPBACK,
            hosts={n: Host(name=n, hostname=socket.gethostname(), address=LOOPBACK) for n in names},
            reason=reason or "unknown",
        )
    try:
        yield network
    finally:
        errors = _teardown(made)
        if errors:
            print("hosts.py: cleanup left something behind:\n" + "\n".join(errors), file=sys.stderr)
