"""Long-running work as generators of typed events, with a cancel token (DESIGN.md §6)."""

from engine.jobs.events import (
    Cancelled,
    CancelToken,
    Done,
    Event,
    Log,
    Losses,
    MeshReady,
    Preview,
    Progress,
    run_job,
)

__all__ = ["CancelToken", "Cancelled", "Done", "Event", "Log", "Losses", "MeshReady", "Preview", "Progress", "run_job"]
