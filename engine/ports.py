"""What the engine needs from the outside world, as small Protocols, and the records it writes.

The appliance implements `ExecutionStore` on SQLite (group commit) and `Services` with the
vault, the HTTP client and the flow catalogue; `MemoryStore` here serves `flowfuse run` and tests
of the engine that need no database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

#: Execution statuses.
QUEUED, RUNNING, WAITING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "running", "waiting", "succeeded", "failed", "cancelled")
FINAL = (SUCCEEDED, FAILED, CANCELLED)
#: The status of the step record that a retry of a failed execution appends for its failed node:
#: the node runs again with a fresh set of attempts (see Executor._run_step).
RETRY = "retry"


@dataclass(slots=True)
class StepRecord:
    """One attempt of one node, as committed. `key` is the node id, prefixed inside loops."""

    key: str
    node: str
    attempt: int
    status: str  # succeeded | failed | waiting | retry
    input_count: int
    started_at: float
    ended_at: float
    #: JSON of {output name: [items]}; None for a failed attempt.
    outputs_json: bytes | None = None
    error: str | None = None
    #: When a waiting step or a parked retry may continue (epoch seconds).
    resume_at: float | None = None
    #: Output was over the size limit: stored truncated, and re-run on resume.
    truncated: bool = False
    #: Position among the execution's step records (set by the executor when recorded).
    seq: int = 0
    #: None for a node that ran; "pinned" (a test run used the flow's pinned items) or "replayed"
    #: (a partial run took the output of an earlier execution) for a node that did not run.
    origin: str | None = None


@dataclass
class Finish:
    """The status change committed together with the last steps of a run."""

    status: str
    output_json: bytes | None = None
    error: dict[str, Any] | None = None
    resume_at: float | None = None
    #: A step-mode run parked before this node (the next one to run), waiting for `continue`.
    paused_at: str | None = None


@dataclass
class ExecutionRef:
    """Enough about an execution for the store to write its steps."""

    id: str
    tenant_id: str
    flow_id: str | None = None
    #: False until the store has written the execution row (sync webhooks write it with step 1).
    persisted: bool = True
    #: Fields of the row for the first write when not persisted.
    row: dict[str, Any] = field(default_factory=dict)
    #: (status, owner, new owner): the stored row must still have that status and owner at the next
    #: commit, which then marks it running under the new owner. A claim made with the run's first
    #: commit instead of a commit of its own; the store raises if the row changed meanwhile.
    claim: tuple[str, str | None, str] | None = None


class ExecutionStore(Protocol):
    async def commit(self, ref: ExecutionRef, steps: list[StepRecord], finish: Finish | None) -> None:
        """Durably write the steps (and the finish) in one transaction before returning."""


class Services(Protocol):
    """What nodes may reach outside the engine. Every member may be absent (None)."""

    def credential(self, tenant_id: str, name: str) -> dict[str, Any]:
        """The decrypted credential, or raise LookupError with a message naming it."""

    async def run_subflow(self, parent: "ExecutionRef", name: str, items: list[dict], key: str) -> list[dict]:
        """Run the named flow to its end with these trigger items; return its output items."""

    def resume_url(self, ref: "ExecutionRef") -> str | None:
        """The URL that resumes an execution parked on `wait` with resume: webhook."""


class MemoryStore:
    """Keeps steps in memory; for `flowfuse run` and engine tests."""

    def __init__(self) -> None:
        self.steps: dict[str, list[StepRecord]] = {}
        self.finished: dict[str, Finish] = {}

    async def commit(self, ref: ExecutionRef, steps: list[StepRecord], finish: Finish | None) -> None:
        self.steps.setdefault(ref.id, []).extend(steps)
        ref.persisted = True
        if finish is not None:
            self.finished[ref.id] = finish
