"""A client of a sharded deployment: each command goes to the shard it belongs to.

    client = ShardedClient({"0": c0, "1": c1, "2": c2})   # one Client per shard
    cid = client.create(ContainerConfig(image="busybox"), name="web")  # web's home shard
    client.rename("web", "api")          # a reservation in api's home shard, then the rename

Routing (engine.shards): a container lives in one shard for life and its id says which;
a create with a name goes to the name's home shard, one without to the next shard in
turn. A reference is routed by id when it is a full id, else by the names index of the
name's home shard (name -> holder id, written with the facts: engine.batch), else as an id
prefix (8 digits or more name the shard; shorter ones are looked up in every shard).
Engine-wide catalog commands (images, networks, volumes) go to every shard: each shard's
reducer decides them against its own world, so a create in any shard sees the same
images and networks (docs/decisions/0015-scale-out.md). The reducers stay independent:
no command spans two shards' writes, and a rename across shards is a reservation in one
shard and a rename in another, undone if the second is refused.
"""

from __future__ import annotations

import itertools
import secrets
from typing import Any

import msgspec

from commands import schema as c
from commands.client.session import Client, Submitted, new_container_id
from engine.errors import MoorError, NotFound, NotModified, error_for_status
from engine.resp import redis_errors
from engine.shards import ID_DIGITS, home_of_name, in_shard, shard_of_id
from events.specs import ContainerConfig, ExecConfig, HostConfig

__all__ = ["CATALOG", "ShardedClient", "new_id_in"]

_HEX = frozenset("0123456789abcdef")


class Named(msgspec.Struct):
    """The part of a container's snapshot (engine.core.state.Container) routing reads."""

    id: str
    name: str


class _Mount(msgspec.Struct):
    name: str = ""


class _Endpoint(msgspec.Struct):
    network: str = ""


class Uses(msgspec.Struct):
    """The part of a container's snapshot a catalog removal checks (volumes, networks)."""

    mounts: list[_Mount] = []
    endpoint: _Endpoint | None = None
    endpoints: dict[str, _Endpoint] = {}


class _Info(msgspec.Struct):
    id: str = ""


class _Parts(msgspec.Struct):
    """The part of a shard's world snapshot (engine.snapshot.WorldParts) routing reads."""

    network_info: dict[str, _Info] = {}


_CONTAINER = msgspec.msgpack.Decoder(Named)
_USES = msgspec.msgpack.Decoder(Uses)
_PARTS = msgspec.msgpack.Decoder(_Parts)

# Engine-wide commands every shard decides for itself.
CATALOG: frozenset[type] = frozenset({
    c.DefineNetwork, c.RegisterImage, c.CreateVolume, c.RemoveVolume, c.RemoveImage,
    c.TagImage, c.RecordImagePush, c.NoteImageAction, c.CreateNetwork, c.RemoveNetwork,
    c.PruneNetworks,
})


def new_id_in(shard: str, count: int) -> str:
    """Return a fresh 64-hex id in `shard` whose short form is not all digits (as Docker)."""
    while True:
        cid = new_container_id()
        if in_shard(cid, shard, count):
            return cid


class ShardedClient(Client):
    """A Client over every shard of a deployment (`clients`: one Client per shard, "0".."N-1",
    all with the same actor, principal and durability)."""

    def __init__(self, clients: dict[str, Client]) -> None:
        first = clients["0"]
        super().__init__(first.redis, first.keys, actor=first.actor, reason=first.reason,
                         timeout=first.timeout, inbox=first.inbox, replicas=first.replicas,
                         replica_wait_ms=first.replica_wait_ms)
        self.clients = clients
        self.count = len(clients)
        self._turn = itertools.cycle(sorted(clients, key=int))

    # --- routing ------------------------------------------------------------------

    def shard_of(self, cmd: c.Command, container_id: str = "") -> str | None:
        """Return the shard a command goes to, or None for every shard (the catalog)."""
        kind = type(cmd)
        if kind in CATALOG:
            return None
        if container_id:
            return shard_of_id(container_id, self.count)
        if isinstance(cmd, c.ReserveName | c.ReleaseName):
            return home_of_name(cmd.name, self.count)
        if isinstance(cmd, c.StartExec):
            return shard_of_id(cmd.exec_id, self.count)
        ref = getattr(cmd, "ref", None)
        if isinstance(ref, str):
            return self.locate(ref)[0]
        return "0"

    def locate(self, ref: str) -> tuple[str, str]:
        """Return (shard, full id) of the container `ref` names, in Docker's lookup order
        (full id, name, id prefix); ("<name's home>", "") when nothing matches, so the
        command is refused there with Docker's 404."""
        bare = ref[1:] if ref.startswith("/") else ref
        if len(ref) == 64 and not set(ref) - _HEX:
            return shard_of_id(ref, self.count), ref
        home = home_of_name(bare, self.count)
        if bare:
            try:
                holder = self.clients[home].redis.hget(self.clients[home].keys.names, bare)
            except redis_errors() as exc:
                raise _unavailable(exc) from exc
            if holder:
                cid = holder.decode()
                return shard_of_id(cid, self.count), cid
        if ref and not set(ref) - _HEX:
            shards = ([shard_of_id(ref, self.count)] if len(ref) >= ID_DIGITS
                      else sorted(self.clients, key=int))
            found = [(s, cid) for s in shards for cid in self._ids_with_prefix(s, ref)]
            if len(found) == 1:
                return found[0]
            if found:  # the shard's reducer refuses it with Docker's "multiple IDs" text
                return found[0][0], ""
        return home, ""

    def store(self, ref: str = "") -> tuple[Any, Any]:
        client = self.clients[self.locate(ref)[0] if ref else "0"]
        return client.redis, client.keys

    def _ids_with_prefix(self, shard: str, prefix: str) -> list[str]:
        client = self.clients[shard]
        try:
            return [key.decode() for key, _ in client.redis.hscan_iter(
                client.keys.containers, match=f"{prefix}*", count=1000)]
        except redis_errors() as exc:
            raise _unavailable(exc) from exc

    def container(self, ref: str) -> Named:
        """Return a container's id and name, wherever it lives (404 when none matches)."""
        return self._named(ref, *self.locate(ref))

    def _named(self, ref: str, shard: str, cid: str) -> Named:
        client = self.clients[shard]
        raw = client.redis.hget(client.keys.containers, cid) if cid else None
        if raw is None:
            raise NotFound(f"No such container: {ref}")
        return _CONTAINER.decode(raw)

    # --- the primitive, routed ----------------------------------------------------

    def send(self, cmd: c.Command, *, container_id: str = "", command_id: str | None = None,
             reason: str | None = None, causation_id: str = "", reply: bool = False) -> str:
        shard = self.shard_of(cmd, container_id)
        targets = sorted(self.clients, key=int) if shard is None else [shard]
        command_id = command_id or secrets.token_hex(16)
        for target in targets:
            self.clients[target].send(cmd, container_id=container_id, command_id=command_id,
                                      reason=reason, causation_id=causation_id, reply=reply)
        return command_id

    def submit(self, cmd: c.Command, *, container_id: str = "", command_id: str | None = None,
               reason: str | None = None, timeout: float | None = None,
               check: bool = True) -> Submitted:
        shard = self.shard_of(cmd, container_id)
        if shard is not None:
            return self.clients[shard].submit(cmd, container_id=container_id,
                                              command_id=command_id, reason=reason,
                                              timeout=timeout, check=check)
        # The catalog: every shard decides it, in an order that makes them agree (see
        # _catalog_order). A refusal stops the round: the shards before it decided the
        # same command (a removal refused for a use found late is reported, not hidden).
        command_id = command_id or secrets.token_hex(16)
        if isinstance(cmd, c.CreateNetwork):
            cmd = msgspec.structs.replace(cmd, shards=self.count)
        first: Submitted | None = None
        for target in self._catalog_order(cmd):
            answer = self.clients[target].submit(cmd, command_id=command_id, reason=reason,
                                                 timeout=timeout, check=False)
            if first is None:
                first = answer
                cmd = self._as_decided(cmd, target, answer)
            if not answer.result.ok and answer.result.status != 304:
                if check:
                    raise error_for_status(answer.result.status, answer.result.message)
                return answer
        assert first is not None
        if check and not first.result.ok:
            raise error_for_status(first.result.status, first.result.message)
        return first

    def _catalog_order(self, cmd: c.Command) -> list[str]:
        """The shards a catalog command goes to, in order: a removal first to the shards
        where something uses the volume or network (their refusal, with Docker's text,
        is then the answer before any shard removed it); everything else from shard 0."""
        order = sorted(self.clients, key=int)
        if isinstance(cmd, c.RemoveVolume) and not cmd.force:
            users = [s for s in order if self._uses(s, volume=cmd.name)]
        elif isinstance(cmd, c.RemoveNetwork):
            name = self._network_name(cmd.network)
            users = [s for s in order if self._uses(s, network=name)]
        else:
            return order
        return users + [s for s in order if s not in users]

    def _network_name(self, ref: str) -> str:
        """Return the name of the user network `ref` names (name, id or id prefix), as
        shard 0's snapshot knows it; `ref` itself when none matches."""
        client = self.clients["0"]
        raw = client.redis.hget(client.keys.world, "parts")
        if raw is None:
            return ref
        infos = _PARTS.decode(raw).network_info
        if ref in infos:
            return ref
        matches = [name for name, info in infos.items() if info.id.startswith(ref)]
        return matches[0] if len(matches) == 1 else ref

    def _uses(self, shard: str, *, volume: str = "", network: str = "") -> bool:
        client = self.clients[shard]
        try:
            raws = client.redis.hgetall(client.keys.containers).values()
        except redis_errors() as exc:
            raise _unavailable(exc) from exc
        for raw in raws:
            ctr = _USES.decode(raw)
            if volume and any(m.name == volume for m in ctr.mounts):
                return True
            if network and ((ctr.endpoint is not None and ctr.endpoint.network == network)
                            or network in ctr.endpoints):
                return True
        return False

    def _as_decided(self, cmd: c.Command, shard: str, answer: Submitted) -> c.Command:
        """The command for the other shards once the first decided it: a network as the
        first shard created it (its subnet, picked there when none was given), and
        allocated in shares by all."""
        if not isinstance(cmd, c.CreateNetwork) or not answer.result.ok:
            return cmd
        client = self.clients[shard]
        entry = client.redis.xrange(client.keys.events, answer.last_event_id,
                                    answer.last_event_id)
        from commands.codec import CODEC

        created = CODEC.record(entry[0][1][b"d"]).event if entry else None
        spec = getattr(created, "network", None)
        if spec is None:
            return cmd
        return msgspec.structs.replace(cmd, subnet=spec.subnet, gateway=spec.gateway,
                                       subnet_given=bool(cmd.subnet) and cmd.subnet_given,
                                       shards=self.count)

    def wait_event(self, container_id: str, after: str, match: Any,
                   timeout: float | None = None) -> Any:
        return self.clients[shard_of_id(container_id, self.count)].wait_event(
            container_id, after, match, timeout)

    # --- what needs more than one shard -------------------------------------------

    def create(self, config: ContainerConfig, host_config: HostConfig | None = None,
               name: str = "", container_id: str | None = None,
               networking: Any = None) -> str:
        """Create in the name's home shard (no name: the next shard in turn), or beside the
        containers it refers to (`--volumes-from`, `--link`, `container:` modes), which
        only their own shard knows: then a name homed elsewhere is reserved in its home
        first, and released again if the create is refused (the create compensates)."""
        host_config = host_config or HostConfig()
        bare = name[1:] if name.startswith("/") else name
        home = home_of_name(bare, self.count) if bare else None
        shard = self._affinity(host_config, networking) or home or next(self._turn)
        cid = container_id or new_id_in(shard, self.count)
        reserved = False
        if home is not None and home != shard:
            try:
                self.clients[home].submit(c.ReserveName(name=bare, holder=cid))
                reserved = True
            except NotModified:
                pass  # reserved for this very id already: a retried create
        try:
            self.submit(c.CreateContainer(name=name, config=config, host_config=host_config,
                                          networking=networking, shards=self.count),
                        container_id=cid)
        except BaseException:
            if reserved:
                self._release(bare, cid, "")
            raise
        return cid

    def _affinity(self, host_config: HostConfig, networking: Any) -> str | None:
        """The shard of the containers a create refers to, if it refers to any (the first
        one's: references to containers of two shards cannot all be honoured)."""
        refs = [spec.split(":", 1)[0] for spec in host_config.volumes_from]
        for mode in (host_config.network_mode, host_config.pid_mode, host_config.ipc_mode):
            if mode.startswith("container:"):
                refs.append(mode[len("container:"):])
        refs += [link.split(":", 1)[0] for link in getattr(networking, "links", ())]
        for ref in refs:
            shard, cid = self.locate(ref)
            if cid:
                return shard
        return None

    def create_exec(self, ref: str, config: ExecConfig) -> str:
        """Create an exec whose id names its container's shard (StartExec routes by it)."""
        shard = self.locate(ref)[0]
        exec_id = new_id_in(shard, self.count)
        self.clients[shard].submit(c.CreateExec(ref=ref, exec_id=exec_id, config=config))
        return exec_id

    def rename(self, ref: str, new_name: str) -> str:
        """Rename; across shards: reserve the new name in its home shard, rename in the
        container's shard (the reservation is released if that is refused), then give
        back the old name's reservation, if another shard held it.

        A crash between the steps leaves a reservation whose holder does not have the
        name: the home shard's reducer releases such reservations (engine.reservations).
        """
        shard, cid = self.locate(ref)
        new = new_name[1:] if new_name.startswith("/") else new_name
        target = home_of_name(new, self.count) if new else shard
        old = self._named(ref, shard, cid).name if cid else ""
        if not cid or target == shard:
            done = self.clients[shard].rename(ref, new_name)
            self._release(old, cid, shard)
            return done
        reserve = self.clients[target]
        try:
            reserve.submit(c.ReserveName(name=new, holder=cid))
            reserved = True
        except NotModified:
            reserved = False  # held for this container already: it may carry the name
        try:
            done = self.clients[shard].rename(ref, new_name)
        except BaseException:
            if reserved:  # undo only what this call reserved
                self._release(new, cid, "")
            raise
        self._release(old, cid, shard)
        return done

    def _release(self, name: str, holder: str, shard: str) -> None:
        """Give back `name`'s reservation for `holder` if its home is not `shard`
        (best effort: the home shard's reducer releases what is left over)."""
        if not name or not holder or home_of_name(name, self.count) == shard:
            return
        try:
            self.clients[home_of_name(name, self.count)].submit(
                c.ReleaseName(name=name, holder=holder))
        except MoorError:  # NotModified (nothing held) or unreachable: the sweep's job
            pass


def _unavailable(exc: BaseException) -> MoorError:
    from engine.errors import Unavailable

    return Unavailable(f"cannot reach the engine's Redis: {exc}")
