"""The workflow engine: flow model, expressions and the durable executor.

It knows flows, items and a storage port; nothing here knows HTTP requests, users or SQL.
"""

from .executor import Executor, Limits, NodeContext, NodeError, Outcome, Run, StopExecution, Wait, backoff_delay
from .expressions import ExpressionError, compile_value
from .flow import Flow, FlowInvalid, Node, ValidationError, compile_flow
from .nodes import NodeType, Param, Registry
from .ports import (
    CANCELLED, FAILED, FINAL, QUEUED, RETRY, RUNNING, SUCCEEDED, WAITING,
    ExecutionRef, ExecutionStore, Finish, MemoryStore, Services, StepRecord,
)

__all__ = [
    "CANCELLED", "FAILED", "FINAL", "QUEUED", "RETRY", "RUNNING", "SUCCEEDED", "WAITING",
    "ExecutionRef", "ExecutionStore", "Executor", "ExpressionError", "Finish", "Flow", "FlowInvalid",
    "Limits", "MemoryStore", "Node", "NodeContext", "NodeError", "NodeType", "Outcome", "Param",
    "Registry", "Run", "Services", "StepRecord", "StopExecution", "ValidationError", "Wait",
    "backoff_delay", "compile_flow", "compile_value",
]
