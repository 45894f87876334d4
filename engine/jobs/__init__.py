"""Long-running work as generators of typed events, with a cancel token, and the pacing of occasional work
beside it (pacing.py). How jobs are driven: docs/ARCHITECTURE.md, "Jobs and events"."""

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
