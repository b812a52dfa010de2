"""The Docker Engine API (a subset) over moorage, served on a unix socket.

A host daemon like dockerd: it speaks HTTP to the docker CLI and docker-py, drives the
engine through the control-plane client (submit, wait for the outcome) and reads the
projections; image loads and container logs touch this host's files, so it imports
`workers` (only programs under moor/ may).

    moor api [--socket PATH] [--tcp 127.0.0.1:2375]      # also started by `moor up`
    DOCKER_HOST=unix://$MOOR_DATA_ROOT/docker.sock docker run -d busybox sleep 60
"""

__all__ = ["app", "archive", "containers", "context", "create", "http", "images", "prune",
           "server", "streams", "system"]
