"""decide(world, envelope, command) -> events: Docker's lifecycle guards, pure.

No I/O, no clock, no randomness: ids and times come in the envelope, so the same
command on the same world always yields the same events. A refused command yields one
`CommandRejected` carrying Docker's status and text.

The handlers live by concept: `catalog` (networks, images), `lifecycle` (the control
plane's container commands), `reports` (what hosts observed), `restore` (Docker's restore
after a host reboot) and `policy` (the restart manager the exits consult).
"""

from __future__ import annotations

from collections.abc import Callable

from commands import schema as c
from engine.core import (
    admission,
    catalog,
    hosts,
    imaging,
    interactive,
    lifecycle,
    names,
    networks,
    reports,
    restore,
    update,
    volumes,
)
from engine.core.state import World
from engine.errors import MoorError
from events import model as e

__all__ = ["decide"]


def decide(world: World, env: c.Envelope, cmd: c.Command,
           origin: admission.Origin | None = None) -> tuple[str, list[e.Event]]:
    """Return (container id, events) for a command; rejections are events too.

    `origin` (the reducer's: who wrote it, and the policy) puts the admission policy
    first, as Docker's authorization plugins see a request before the daemon does.
    """
    handler = _HANDLERS[type(cmd)]
    try:
        if origin is not None and origin.policy is not admission.ALLOW_ALL:
            admission.check(origin, env, cmd)
        return handler(world, env, cmd)
    except MoorError as err:
        target = _target_id(world, env, cmd)
        rejected = e.CommandRejected(
            command=type(cmd).__name__, status=err.status, message=err.message,
            rule=getattr(err, "rule", ""),
        )
        return target, [rejected]


def _target_id(world: World, env: c.Envelope, cmd: c.Command) -> str:
    """Attach a rejection to the container it concerned, when there is one."""
    ref = getattr(cmd, "ref", None)
    if ref is not None and not isinstance(cmd, c.RemoveImage | c.TagImage | c.RecordImagePush
                                          | c.NoteImageAction):
        try:
            return names.resolve(world, ref).id
        except MoorError:
            return ""
    return env.container_id if env.container_id in world.containers else ""


_HANDLERS: dict[type, Callable[..., tuple[str, list[e.Event]]]] = {
    c.DefineNetwork: catalog.define_network,
    c.RegisterImage: catalog.register_image,
    c.CommitContainer: catalog.commit_container,
    c.NoteContainerAction: interactive.note_action,
    c.CreateVolume: volumes.create_volume,
    c.RemoveVolume: volumes.remove_volume,
    c.ReserveName: names.reserve_name,
    c.ReleaseName: names.release_name,
    c.RemoveImage: catalog.remove_image,
    c.TagImage: imaging.tag_image,
    c.RecordImagePush: imaging.record_push,
    c.NoteImageAction: imaging.note_image_action,
    c.CreateContainer: lifecycle.create,
    c.StartContainer: lifecycle.start,
    c.StopContainer: lifecycle.stop,
    c.KillContainer: lifecycle.kill,
    c.RestartContainer: lifecycle.restart,
    c.RemoveContainer: lifecycle.remove,
    c.RenameContainer: lifecycle.rename,
    **{report: reports.saga_report for report in c.SAGA_REPORTS},
    c.ReportProcessExited: reports.exited,
    c.ReportStepFailed: reports.failed,
    c.ReportRemoved: reports.removed,
    c.ReportDrift: reports.drift,
    c.ResumeRestart: reports.resume_restart,
    c.CompactLog: catalog.compact_log,
    c.ReportHostBooted: restore.host_booted,
    c.RestoreContainer: restore.restore_container,
    c.PauseContainer: interactive.pause,
    c.UnpauseContainer: interactive.unpause,
    c.ReportFrozen: interactive.frozen,
    c.CreateExec: interactive.create_exec,
    c.StartExec: interactive.start_exec,
    c.ReportExecExited: interactive.exec_exited,
    c.UpdateContainer: update.update,
    c.CreateNetwork: networks.create_network,
    c.RemoveNetwork: networks.remove_network,
    c.PruneNetworks: networks.prune_networks,
    c.ConnectNetwork: networks.connect,
    c.DisconnectNetwork: networks.disconnect,
    c.RemoveLink: networks.remove_link,
    c.ReportNetworkJoined: networks.network_joined,
    c.JoinHost: hosts.join_host,
    c.MarkHostLost: hosts.mark_lost,
    c.MarkHostReturned: hosts.mark_returned,
    c.DropLostContainer: hosts.drop_lost,
}
