"""The embedded DNS resolver: one process per engine and host, serving every sandbox.

For each container on a user-defined network it holds a UDP socket and a TCP listener
bound to 127.0.0.11:53 *inside the container's network namespace* (a socket keeps the
namespace it was made in), so the container's resolv.conf names 127.0.0.11 exactly as
Docker's does, with no NAT rule to leave behind. It answers the names, network aliases,
short ids and hostnames of containers sharing a user network with the asker (`<name>` or
`<name>.<network>`, case-insensitive, TTL 600) and forwards anything else to the
upstreams the container was given (`--dns`, else the host's resolvers, dialled from the
host's namespace).

Who is where comes from the reducer's snapshot (the fold of the journal), re-read when
the events stream moves: a restarted engine changes nothing here, and a restarted
resolver serves every running container again from the snapshot. Workers ask it to
serve or drop a sandbox over a unix socket (`dnsctl`), and it drops sandboxes whose
container no longer runs on its own. With nothing to serve for a while it exits.

Run: python -m workers.net.dnsd --root R --redis-url U --prefix P
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import redis as redislib
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from engine.acl import WORKER, connect_kwargs
from engine.core.state import Container
from engine.keys import keys_for
from engine.seeds import seed_urls
from engine.snapshot import WorldParts
from workers.net import netns
from workers.net.dnsconf import RESOLVER_IP

__all__ = ["Resolver", "Table", "control_path", "main"]

log = logging.getLogger("moorage.dns")
_CONTAINER = msgspec.msgpack.Decoder(Container)
_PARTS = msgspec.msgpack.Decoder(WorldParts)
TTL = 600
_UPSTREAM_TIMEOUT = 4.0
IDLE_EXIT = float(os.environ.get("MOOR_DNS_IDLE_EXIT", "10"))


def control_path(root: str) -> str:
    return os.path.join(root, "dns", "control.sock")


class Table:
    """Names per user network, from one snapshot: network -> name -> addresses."""

    def __init__(self, containers: list[Container], user_networks: set[str]) -> None:
        self.names: dict[str, dict[str, list[str]]] = {}
        self.member: dict[str, set[str]] = {}  # container id -> its user networks
        self.live: set[str] = set()
        for ctr in containers:
            if not (ctr.running or ctr.saga):
                continue
            self.live.add(ctr.id)
            eps = dict(ctr.endpoints)
            if ctr.endpoint is not None:
                eps[ctr.endpoint.network] = ctr.endpoint
            for net, ep in eps.items():
                if net not in user_networks:
                    continue
                self.member.setdefault(ctr.id, set()).add(net)
                settings = ctr.networking.endpoints.get(net)
                aliases = settings.aliases if settings is not None else ()
                for name in {ctr.name, ctr.id[:12], ctr.config.hostname, *aliases}:
                    if name:
                        self.names.setdefault(net, {}).setdefault(name.lower(), []).append(
                            ep.ip_address)

    def lookup(self, asker: str, qname: str) -> list[str] | None:
        """Return the addresses of a name the asker may see, None if it is not ours."""
        qname = qname.rstrip(".").lower()
        nets = self.member.get(asker, set())
        found: list[str] = []
        for net in sorted(nets):
            table = self.names.get(net, {})
            if qname in table:
                found += table[qname]
            elif qname.endswith("." + net.lower()) and qname[:-len(net) - 1] in table:
                found += table[qname[:-len(net) - 1]]
        return list(dict.fromkeys(found)) or None


class _Served:
    def __init__(self, udp: socket.socket, tcp: socket.socket, upstreams: list[str]) -> None:
        self.udp, self.tcp, self.upstreams = udp, tcp, upstreams


class Resolver:
    """The resolver's state: sockets per container, the name table, the control socket."""

    def __init__(self, root: str, redis: Any, prefix: str,
                 stores: list[tuple[Any, Any]] | None = None) -> None:
        self.root = root
        self.redis = redis
        self.keys = keys_for(prefix=prefix)
        # Every shard's (redis, keys): one resolver per data root serves the containers of
        # every shard's worker on this machine, so it reads (and watches) them all.
        self.stores = stores or [(redis, self.keys)]
        self.served: dict[str, _Served] = {}
        self.sel = selectors.DefaultSelector()
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="moor-dns-fwd")
        self.lock = threading.Lock()
        self.table = Table([], set())
        self.reads = self.installed = 0  # refresh sequence numbers (started, installed)
        self.idle_since = time.monotonic()
        self.stopping = False

    # --- the name table ----------------------------------------------------------------

    def refresh(self) -> None:
        # Two threads refresh (the journal watcher, a serve request): a read that began
        # earlier must never replace the table of one that began later.
        with self.lock:
            self.reads += 1
            seq = self.reads
        containers: list[Container] = []
        user: set[str] = set()
        for redis, keys in self.stores:
            pipe = redis.pipeline(transaction=True)
            pipe.hgetall(keys.containers)
            pipe.hget(keys.world, "parts")
            raw, parts = pipe.execute()
            user |= set(_PARTS.decode(parts).network_info) if parts else set()
            containers += [_CONTAINER.decode(v) for v in raw.values()]
        table = Table(containers, user)
        with self.lock:
            if seq > self.installed:
                self.table, self.installed = table, seq

    def watch(self) -> None:
        """Re-read the snapshots whenever an events stream moves (a blocking read of one
        shard's stream per thread; this thread watches the first)."""
        for redis, keys in self.stores[1:]:
            threading.Thread(target=self._watch, args=(redis, keys), daemon=True).start()
        self._watch(*self.stores[0])

    def _watch(self, redis: Any, keys: Any) -> None:
        last = "$"
        while not self.stopping:
            try:
                got = redis.xread({keys.events: last}, count=1000, block=1000)
                if got:
                    last = got[0][1][-1][0]
                    self.refresh()
                    self._drop_stale()
            except redislib.RedisError as exc:
                log.warning("watching the journal failed: %s", exc)
                time.sleep(1)

    def _drop_stale(self) -> None:
        with self.lock:
            live = self.table.live
        for cid in [c for c in self.served if c not in live]:
            self.drop(cid)

    # --- sandboxes ---------------------------------------------------------------------

    def serve(self, cid: str, path: str, upstreams: list[str]) -> None:
        if cid in self.served:
            self.served[cid].upstreams = upstreams
            return
        fd = netns.open_netns(path, cid)
        try:
            udp, tcp = netns._on_thread(lambda: _bind_in(fd))
        finally:
            os.close(fd)
        self.served[cid] = _Served(udp, tcp, upstreams)
        self.sel.register(udp, selectors.EVENT_READ, ("udp", cid))
        self.sel.register(tcp, selectors.EVENT_READ, ("tcp", cid))

    def drop(self, cid: str) -> None:
        served = self.served.pop(cid, None)
        if served is None:
            return
        for s in (served.udp, served.tcp):
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        self.idle_since = time.monotonic()

    # --- answering ---------------------------------------------------------------------

    def answer(self, cid: str, data: bytes) -> bytes | None:
        try:
            query = DNSRecord.parse(data)
        except Exception:  # not DNS: nothing to say
            return None
        reply = query.reply()
        qname = str(query.q.qname)
        with self.lock:
            ips = self.table.lookup(cid, qname)
        if ips is not None:
            if query.q.qtype in (QTYPE.A, QTYPE.ANY):
                for ip in ips:
                    reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(ip), ttl=TTL))
            return reply.pack()
        served = self.served.get(cid)
        for server in (served.upstreams if served else [])[:3]:
            try:
                return query.send(server, 53, timeout=_UPSTREAM_TIMEOUT)
            except (OSError, Exception):  # noqa: B014 - dnslib raises plain socket errors
                continue
        reply.header.rcode = RCODE.SERVFAIL
        return reply.pack()

    def _udp(self, cid: str, sock: socket.socket) -> None:
        try:
            data, peer = sock.recvfrom(4096)
        except OSError:
            return

        def work() -> None:
            out = self.answer(cid, data)
            if out is not None:
                try:
                    sock.sendto(out, peer)
                except OSError:
                    pass
        self.pool.submit(work)

    def _tcp(self, cid: str, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return

        def work() -> None:
            with conn:
                conn.settimeout(5)
                try:
                    head = _recv(conn, 2)
                    data = _recv(conn, int.from_bytes(head, "big"))
                    out = self.answer(cid, data)
                    if out is not None:
                        conn.sendall(len(out).to_bytes(2, "big") + out)
                except OSError:
                    pass
        self.pool.submit(work)

    # --- control -------------------------------------------------------------------------

    def control(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                line = conn.makefile().readline()
                req = json.loads(line)
                if req["op"] == "serve":
                    self.refresh()
                    self.serve(req["cid"], req["netns"], list(req.get("upstreams", [])))
                elif req["op"] == "drop":
                    self.drop(req["cid"])
                conn.sendall(b"ok\n")
            except Exception as exc:  # the worker reports it; the resolver keeps serving
                log.warning("control request failed: %s", exc)
                try:
                    conn.sendall(f"error {exc}\n".encode())
                except OSError:
                    pass

    def run(self) -> None:
        path = control_path(self.root)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ctl.bind(path)
        os.chmod(path, 0o600)
        ctl.listen(64)
        self.sel.register(ctl, selectors.EVENT_READ, ("ctl", ""))
        self.refresh()
        self._resume()
        threading.Thread(target=self.watch, name="moor-dns-watch", daemon=True).start()
        try:
            while True:
                for key, _ in self.sel.select(timeout=1.0):
                    kind, cid = key.data
                    if kind == "ctl":
                        conn, _ = ctl.accept()
                        self.control(conn)
                    elif kind == "udp":
                        self._udp(cid, key.fileobj)  # type: ignore[arg-type]
                    else:
                        self._tcp(cid, key.fileobj)  # type: ignore[arg-type]
                if self.served:
                    self.idle_since = time.monotonic()
                elif time.monotonic() - self.idle_since > IDLE_EXIT:
                    break
        finally:
            self.stopping = True
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            ctl.close()
            for cid in list(self.served):
                self.drop(cid)

    def _resume(self) -> None:
        """Serve every running container on a user network again (after a restart)."""
        from workers.net.netconf import netns_path

        with self.lock:
            members = dict(self.table.member)
        for cid in members:
            try:
                upstreams = read_upstreams(self.root, cid)
                self.serve(cid, netns_path(cid), upstreams)
            except Exception as exc:
                log.warning("cannot serve %s again: %s", cid[:12], exc)


def _bind_in(nsfd: int) -> tuple[socket.socket, socket.socket]:
    from workers import nsutil

    nsutil.setns(nsfd, nsutil.CLONE_NEWNET)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        udp.bind((RESOLVER_IP, 53))
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((RESOLVER_IP, 53))
        tcp.listen(64)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    udp.setblocking(False)
    tcp.setblocking(False)
    return udp, tcp


def _recv(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise OSError("short read")
        buf += chunk
    return buf


def upstreams_file(root: str, cid: str) -> str:
    return os.path.join(root, "containers", cid, "dns-upstreams")


def read_upstreams(root: str, cid: str) -> list[str]:
    try:
        with open(upstreams_file(root, cid)) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moor-dns")
    parser.add_argument("--root", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("MOOR_LOG_LEVEL", "WARNING"))
    try:
        from setproctitle import setproctitle

        setproctitle(f"moor-dns {args.prefix}")
    except ImportError:
        pass
    auth = connect_kwargs(args.redis_url, args.root, WORKER)
    redis = redislib.Redis.from_url(seed_urls(args.redis_url)[0], **auth)
    Resolver(args.root, redis, args.prefix, _stores(args.redis_url, args.prefix, auth)).run()
    return 0


def _stores(url: str, prefix: str, auth: dict[str, Any]) -> list[tuple[Any, Any]] | None:
    """Every shard's (redis, keys) in a sharded deployment (MOOR_SHARDS, inherited from
    the worker that started the resolver) or on a Redis Cluster, else None (one shard on
    one server)."""
    from engine.config import shard_count

    from engine.cluster import on_cluster, shard_redis

    count = shard_count()
    cluster = on_cluster(url, count, **auth)
    if count == 1 and not cluster:
        return None
    every = [keys_for(str(i), prefix=prefix, count=count) for i in range(count)]
    if cluster:  # a client per shard, pinned to its slot's primary

        return [(shard_redis(url, k.tag, **auth), k) for k in every]
    shared = redislib.Redis.from_url(url, **auth)
    return [(shared, k) for k in every]


if __name__ == "__main__":
    raise SystemExit(main())
