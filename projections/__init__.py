"""The read side: pure views (projections/views) and their runners over Redis and files:
the live snapshot and watch (stream), export/import (journal), replay and verify (audit)."""

__all__ = ["audit", "journal", "stream", "views"]
