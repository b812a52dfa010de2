"""`docker build` with the classic builder: the Dockerfile parser, `.dockerignore`, the
build steps and the builder that runs them through the engine."""

from moor.building.builder import Builder, Message, quiet
from moor.building.context import BuildOptions, Prepared, prepare

__all__ = ["BuildOptions", "Builder", "Message", "Prepared", "prepare", "quiet"]
