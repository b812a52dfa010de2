"""Docker's JSON progress messages (pkg/jsonmessage shapes), as builtins. Pure.

Per-layer ids are the first 12 hex of a digest; a state change carries an empty
`progressDetail`, a byte count carries `current`/`total` and Docker's text bar.
"""

from __future__ import annotations

from typing import Any

__all__ = ["aux", "bar", "error", "human_size", "progress", "short", "status"]

_BAR = 50


def short(digest: str) -> str:
    """Return the 12-hex layer id Docker prints."""
    return digest.removeprefix("sha256:")[:12]


def human_size(n: float) -> str:
    """Return n bytes as go-units HumanSize does: 4 significant digits, decimal units."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.4g}{unit}"
        n /= 1000
    raise AssertionError("unreachable")


def bar(current: int, total: int) -> str:
    """Return Docker's `[====>     ] 1.2MB/3.4MB` text (no bar when the total is unknown)."""
    if total <= 0:
        return human_size(current)
    done = min(_BAR, _BAR * current // total)
    arrow = ">" if done < _BAR else ""
    head = "=" * max(done - (1 if arrow else 0), 0) + arrow
    return f"[{head}{' ' * (_BAR - len(head))}] {human_size(current)}/{human_size(total)}"


def status(text: str, ident: str = "", *, detail: bool = False) -> dict[str, Any]:
    """A status line; with detail, the empty progressDetail of a per-layer state change."""
    out: dict[str, Any] = {"status": text}
    if detail:
        out["progressDetail"] = {}
    if ident:
        out["id"] = ident
    return out


def progress(text: str, ident: str, current: int, total: int) -> dict[str, Any]:
    """A byte-count update (Downloading, Extracting, Pushing)."""
    return {"status": text, "progressDetail": {"current": current, "total": total},
            "progress": bar(current, total), "id": ident}


def aux(value: dict[str, Any]) -> dict[str, Any]:
    return {"progressDetail": {}, "aux": value}


def error(message: str) -> dict[str, Any]:
    """An in-stream error (the HTTP status was already 200)."""
    return {"errorDetail": {"message": message}, "error": message}
