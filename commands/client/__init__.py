"""The control-plane client: append commands to the engine's stream and wait for results.

This is the only I/O under commands/ (it talks to Redis); the rest of the folder is the
pure schema, options and codec.
"""

from commands.client.session import Client, Submitted, new_container_id

__all__ = ["Client", "Submitted", "new_container_id"]
