"""The classic builder: run a prepared Dockerfile step by step, yielding Docker's messages.

Each message is what `POST /build` writes as one JSON object: `{"stream": text}`,
`{"aux": {"ID": ...}}` after each stage, and at the end either the success lines or
`{"errorDetail": {...}, "error": ...}`. A step is served from the cache when this host
built an image from the same parent with the same run config (`Using cache`); otherwise
RUN runs in a container through the engine (moor.building.runstep), COPY and ADD write a
layer from the context (moor.building.copystep), and the other instructions only change
the Config (an empty-layer image, Docker's `#(nop)` history entry).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from commands.client import Client
from engine.core.names import normalize_image_ref
from engine.errors import InvalidParameter, MoorError
from events.specs import ContainerConfig
from moor.building import copystep, runstep
from moor.building.context import BuildOptions, Prepared
from moor.building.dockerfile import Instruction, Stage, parse_instruction
from moor.building.instructions import (
    PREDEFINED_ARGS,
    StageState,
    apply,
    cache_key,
    run_argv,
    run_build_args,
    run_env,
    saved_run_cmd,
)
from moor.building.shellwords import expand, split_words
from moor.committing import upper_dir
from moor.hostcli import image_fields
from projections.stream import load_live
from workers.storage.buildimages import (
    add_step_image,
    cache_get,
    cache_put,
    image_doc,
    scratch_doc,
    tag_image,
)
from workers.storage.commit import add_upper_layer
from workers.storage.images import ImageNotFound, get_image

__all__ = ["Builder", "Message", "quiet"]

Message = dict[str, Any]
Steps = Generator[Message, None, "_Built"]  # yields the step's output, returns its image


def _stream(text: str) -> Message:
    return {"stream": text}


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


@dataclass
class _Built:
    """A finished stage: what `FROM <stage>` and `COPY --from` read."""

    image_id: str
    doc: dict[str, Any]


@dataclass
class Builder:
    """One build on this host, driven through `client` (RUN containers, image facts)."""

    client: Client
    root: str
    prepared: Prepared
    options: BuildOptions
    stop: threading.Event | None = None
    step: int = 0
    built: dict[str, _Built] = field(default_factory=dict)
    registered: set[str] = field(default_factory=set)
    used_args: set[str] = field(default_factory=set)

    def run(self) -> Iterator[Message]:
        """Build; yield the messages. A failure ends the stream with Docker's error."""
        try:
            yield from self._build()
        except runstep.RunFailed as err:
            yield {"errorDetail": {"code": err.code, "message": err.message}
                   if err.code else {"message": err.message}, "error": err.message}
        except MoorError as err:
            yield {"errorDetail": {"message": err.message}, "error": err.message}
        except OSError as err:  # the host refused a file operation: the stream says so
            yield {"errorDetail": {"message": str(err)}, "error": str(err)}

    # --- the stages --------------------------------------------------------------------

    def _header(self, inst: Instruction) -> Iterator[Message]:
        if self.stop is not None and self.stop.is_set():
            raise runstep.Cancelled("the build was cancelled")
        self.step += 1
        yield _stream(f"Step {self.step}/{self.prepared.total_steps} : {inst.original}")
        yield _stream("\n")

    def _build(self) -> Iterator[Message]:
        self.registered = set(load_live(self.client.redis, self.client.keys)[0].images)
        dockerfile = self.prepared.dockerfile
        meta: dict[str, str | None] = {}
        for inst in dockerfile.meta_args:
            yield from self._header(inst)
            state = StageState(config={}, image_id="", build_args=self.options.build_args,
                               meta=meta, escape=dockerfile.escape)
            meta = dict(apply(state, inst)[0].args)
            self.used_args.update(meta)
        last: _Built | None = None
        for stage in self.prepared.stages:
            last = yield from self._stage(stage, meta)
            yield {"aux": {"ID": last.image_id}}
        if last is None or not last.image_id:
            raise InvalidParameter("No image was generated. Is your Dockerfile empty?")
        unused = sorted(set(self.options.build_args) - self.used_args - PREDEFINED_ARGS)
        if unused:
            yield _stream(f"[Warning] One or more build-args [{' '.join(unused)}] "
                          "were not consumed\n")
        info = tag_image(self.root, last.image_id, self.prepared.tags)
        self.client.register_image(origin="build", **image_fields(info))
        yield _stream(f"Successfully built {_short(last.image_id)}\n")
        for tag in self.prepared.tags:
            yield _stream(f"Successfully tagged {tag}\n")

    def _base(self, stage: Stage, meta: dict[str, str | None]) -> _Built:
        env = {k: v for k, v in meta.items() if v is not None}
        name = expand(stage.base, env, self.prepared.dockerfile.escape)
        if name.lower() in self.built:
            return self.built[name.lower()]
        if name == "scratch":
            return _Built("", scratch_doc())
        try:
            info = get_image(self.root, name)
        except ImageNotFound:
            raise ImageNotFound(f"No such image: {normalize_image_ref(name)} (the builder "
                                "uses local images: pull or load it first)") from None
        return _Built(info.id, image_doc(self.root, info.id))

    def _stage(self, stage: Stage, meta: dict[str, str | None]) -> Steps:
        yield from self._header(stage.source)
        current = self._base(stage, meta)
        state = StageState(config=dict(current.doc.get("config") or {}),
                           image_id=current.image_id, build_args=self.options.build_args,
                           meta=meta, escape=self.prepared.dockerfile.escape)
        triggers = list(state.config.get("OnBuild") or [])
        if triggers:
            # The base image's ONBUILD lines run first, as part of the FROM step, and
            # are not inherited further.
            yield _stream(f"# Executing {len(triggers)} build trigger"
                          f"{'s' if len(triggers) > 1 else ''}\n")
            state = replace(state, config={**state.config, "OnBuild": None})
            for text in triggers:
                trigger = parse_instruction(text, 0, state.escape)
                state, current = yield from self._dispatch(state, current, trigger)
        yield _stream(f" ---> {_short(current.image_id)}\n")
        for inst in stage.instructions:
            yield from self._header(inst)
            state, current = yield from self._dispatch(state, current, inst)
            yield _stream(f" ---> {_short(current.image_id)}\n")
        built = _Built(current.image_id, current.doc)
        self.built[str(stage.index)] = built
        if stage.name:
            self.built[stage.name] = built
        return built

    # --- steps -------------------------------------------------------------------------

    def _dispatch(self, state: StageState, current: _Built, inst: Instruction
                  ) -> Generator[Message, None, tuple[StageState, _Built]]:
        """Run one instruction; return the stage's state and image after it."""
        if inst.keyword == "RUN":
            current = yield from self._run(state, current, inst)
        elif inst.keyword in ("COPY", "ADD"):
            current = yield from self._copy(state, current, inst)
        else:
            state, current, hit = self._meta(state, current, inst)
            if hit:
                yield _stream(" ---> Using cache\n")
        return replace(state, image_id=current.image_id), current

    def _cached_or(self, parent: _Built, run_config: dict[str, Any],
                   make: Callable[[], _Built]) -> tuple[_Built, bool]:
        """Serve the step from the cache (True), or make it and remember it there."""
        key = cache_key(parent.image_id, run_config)
        if not self.options.nocache:
            hit = cache_get(self.root, key)
            if hit is not None:
                return _Built(hit, image_doc(self.root, hit)), True
        made = make()
        cache_put(self.root, key, made.image_id)
        return made, False

    def _meta(self, state: StageState, parent: _Built, inst: Instruction
              ) -> tuple[StageState, _Built, bool]:
        """A metadata step: the Config changes, the image gets an empty layer."""
        state, cmd = apply(state, inst)
        if inst.keyword == "ARG":
            self.used_args.update(state.args)
        run_config = {**state.config, "Cmd": cmd}

        def make() -> _Built:
            return _Built(*add_step_image(self.root, parent.image_id, parent.doc,
                                          config=state.config, created_by=" ".join(cmd),
                                          run_config=run_config, author=state.author))

        built, hit = self._cached_or(parent, run_config, make)
        return state, built, hit

    def _register(self, image_id: str) -> None:
        """Make a step image the engine does not know yet known to it (a RUN's parent)."""
        if image_id not in self.registered:
            self.client.register_image(origin="build",
                                       **image_fields(get_image(self.root, image_id)))
            self.registered.add(image_id)

    def _run(self, state: StageState, parent: _Built, inst: Instruction) -> Steps:
        if not parent.doc.get("rootfs", {}).get("diff_ids"):
            raise InvalidParameter("The command '" + " ".join(run_argv(state, inst))
                                   + "' cannot run: the image has no layers (FROM scratch)")
        self.used_args.update(k for k, v in state.args.items())
        argv = run_argv(state, inst)
        saved = saved_run_cmd(argv, run_build_args(state))
        run_config = {**state.config, "Cmd": saved}
        key = cache_key(parent.image_id, run_config)
        if not self.options.nocache and (hit := cache_get(self.root, key)) is not None:
            yield _stream(" ---> Using cache\n")
            return _Built(hit, image_doc(self.root, hit))
        self._register(parent.image_id)
        cfg = state.config
        cid = runstep.create_container(self.client, ContainerConfig(
            image=parent.image_id, cmd=tuple(argv), entrypoint=("",),
            env=tuple(run_env(state)), working_dir=cfg.get("WorkingDir") or "",
            user=cfg.get("User") or ""))
        yield _stream(f" ---> Running in {cid[:12]}\n")
        result = runstep.RunResult(cid)
        try:
            for line in runstep.run_container(self.client, self.root, cid, self.stop, result):
                yield _stream(line)
            if result.exit_code != 0:
                raise runstep.RunFailed(f"The command '{' '.join(argv)}' returned a non-zero "
                                        f"code: {result.exit_code}", result.exit_code)
            image_id, doc = add_step_image(
                self.root, parent.image_id, parent.doc, config=state.config,
                created_by=" ".join(saved), run_config=run_config, container_id=cid,
                layer=lambda store: add_upper_layer(store, self.root,
                                                    upper_dir(self.root, cid)))
            # The same record as `docker commit`: image create, container commit.
            self.client.commit_container(cid, **image_fields(get_image(self.root, image_id)))
            self.registered.add(image_id)
            cache_put(self.root, key, image_id)
        except runstep.RunFailed:
            if self.options.forcerm:  # Docker keeps a failed step's container without it
                yield from self._remove(cid)
            raise
        except BaseException:
            # Cancelled, or the step broke: nothing of it may stay running.
            runstep.remove_container(self.client, cid)
            raise
        if self.options.rm or self.options.forcerm:
            yield from self._remove(cid)
        return _Built(image_id, doc)

    def _remove(self, cid: str) -> Iterator[Message]:
        runstep.remove_container(self.client, cid)
        yield _stream(f" ---> Removed intermediate container {cid[:12]}\n")

    def _copy(self, state: StageState, parent: _Built, inst: Instruction) -> Steps:
        env = state.env()
        words = list(inst.args) if inst.json else split_words(inst.rest, state.escape)
        words = [expand(w, env, state.escape) for w in words]
        if len(words) < 2:
            raise InvalidParameter(f"{inst.keyword} requires at least two arguments, but "
                                   f"only {len(words)} provided")
        plan, comment, cleanup = copystep.plan(self.root, self.prepared, self.built, state,
                                               parent.doc, inst, words)
        try:
            run_config = {**state.config, "Cmd": ["/bin/sh", "-c", "#(nop) " + comment]}
            made, hit = self._cached_or(parent, run_config, lambda: _Built(*add_step_image(
                self.root, parent.image_id, parent.doc, config=state.config,
                created_by="/bin/sh -c #(nop) " + comment, run_config=run_config,
                layer=lambda store: copystep.add_layer(store, self.root, plan))))
        finally:
            cleanup()
        if hit:
            yield _stream(" ---> Using cache\n")
        return made


def quiet(messages: Iterator[Message]) -> Iterator[Message]:
    """`q=1`: hold the output; on success send only the image id, on failure all of it
    and then the error (dockerd's quiet build)."""
    held: list[Message] = []
    image_id = ""
    for msg in messages:
        if "error" in msg:
            yield from held
            yield msg
            return
        if "aux" in msg:
            image_id = str(msg["aux"].get("ID", ""))
        held.append(msg)
    yield _stream(f"{image_id}\n")
