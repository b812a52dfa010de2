"""Ready a build: the options, the context directory, the Dockerfile and `.dockerignore`.

Everything that can be refused before the first output line is refused here (a missing
or empty Dockerfile, a parse error, an unknown target, a bad tag), so the API can answer
with an HTTP error, as dockerd does before it has written anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from engine.errors import InvalidParameter
from moor.building.dockerfile import Dockerfile, Instruction, Stage, parse, parse_instruction
from moor.building.dockerignore import IgnoreMatcher
from workers.storage.buildview import clean_rel
from workers.storage.imageconfig import host_arch
from workers.storage.imagerefs import valid_tag

__all__ = ["BuildOptions", "Prepared", "prepare"]


@dataclass
class BuildOptions:
    """The classic builder's options (`POST /build`'s query, `moor build`'s flags)."""

    dockerfile: str = "Dockerfile"
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    target: str = ""
    nocache: bool = False
    rm: bool = True
    forcerm: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    quiet: bool = False
    platform: str = ""


@dataclass
class Prepared:
    """A build ready to run: the stages to build (up to the target) and the context."""

    context_dir: str
    dockerfile: Dockerfile
    stages: list[Stage]
    ignore: IgnoreMatcher
    tags: list[str]

    @property
    def total_steps(self) -> int:
        """Docker's step count: meta ARGs, FROMs and instructions of the stages built."""
        return len(self.dockerfile.meta_args) + sum(1 + len(s.instructions)
                                                    for s in self.stages)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _label_line(labels: dict[str, str]) -> Instruction:
    """`--label`s become a LABEL step at the end of the target stage, as the classic
    builder does."""
    words = " ".join(f'"{k}"="{v}"' for k, v in sorted(labels.items()))
    return parse_instruction(f"LABEL {words}")


def prepare(context_dir: str, options: BuildOptions,
            dockerfile_text: str | None = None) -> Prepared:
    """Read and check everything the build needs before it starts (`dockerfile_text`:
    a Dockerfile from outside the context, which `moor build -f` may name)."""
    if options.platform and options.platform not in ("linux", f"linux/{host_arch()}"):
        raise InvalidParameter(f'"{options.platform}": this engine builds for '
                               f"linux/{host_arch()} only")
    tags = [valid_tag(t) for t in options.tags]
    name = options.dockerfile or "Dockerfile"
    rel = clean_rel(name)
    text = dockerfile_text
    if text is None and rel:
        text = _read(os.path.join(context_dir, rel))  # never above the context: cleaned
    if text is None and name == "Dockerfile":
        text = _read(os.path.join(context_dir, "dockerfile"))  # dockerd's fallback
    if text is None:
        raise InvalidParameter(f"Cannot locate specified Dockerfile: {name}")
    if not text.strip():
        raise InvalidParameter(f"the Dockerfile ({name}) cannot be empty")
    ignore = IgnoreMatcher.from_text(_read(os.path.join(context_dir, ".dockerignore")) or "")
    dockerfile = parse(text, name)
    stages = list(dockerfile.stages)
    if not stages:
        raise InvalidParameter("No image was generated. Is your Dockerfile empty?")
    if options.target:
        wanted = options.target.lower()
        index = next((s.index for s in stages if s.name == wanted), None)
        if index is None:
            raise InvalidParameter(f'target stage "{options.target}" could not be found')
        stages = stages[:index + 1]
    if options.labels:
        last = stages[-1]
        stages[-1] = Stage(index=last.index, base=last.base, name=last.name,
                           platform=last.platform, source=last.source,
                           instructions=[*last.instructions, _label_line(options.labels)])
    return Prepared(context_dir=context_dir, dockerfile=dockerfile, stages=stages,
                    ignore=ignore, tags=tags)
