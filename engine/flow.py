"""The flow model: parse and validate flow JSON, and compile it once for the executor.

`compile_flow(doc, registry)` either returns a `Flow` ready to run or raises `FlowInvalid` whose
`errors` each name the node (or edge) and say what to fix. Validation and compilation are one
pass so that what was checked is exactly what runs.

Loops: the only cycle allowed is a loop body that returns to its `split_in_batches` node. The
body of such a node is everything reachable from its `loop` output before coming back to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .expressions import Compiled, ExpressionError, compile_value
from .nodes import NodeType, Registry

FLOW_KEYS = {"name", "nodes", "edges", "settings", "description", "tags"}
NODE_KEYS = {"id", "type", "params", "credential", "retry", "timeout_s", "on_error", "name", "position", "notes"}
EDGE_KEYS = {"from", "to", "output"}
SETTINGS_KEYS = {"error_flow", "timeout_s"}
RETRY_KEYS = {"max_attempts", "backoff_s", "max_backoff_s"}
ON_ERROR = ("fail", "continue", "output")
LOOP_TYPE = "split_in_batches"


@dataclass(frozen=True)
class ValidationError:
    """One problem in a flow; `node` is the node id it concerns (None for the flow itself)."""

    node: str | None
    message: str

    def __str__(self) -> str:
        return f"node {self.node!r}: {self.message}" if self.node else self.message

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "message": self.message}


class FlowInvalid(Exception):
    def __init__(self, errors: list[ValidationError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


@dataclass(frozen=True)
class Retry:
    max_attempts: int = 1
    backoff_s: float = 1.0
    max_backoff_s: float = 300.0


@dataclass
class Node:
    id: str
    type: str
    spec: NodeType
    raw_params: dict[str, Any]
    params: dict[str, Compiled]
    credential: str | None
    retry: Retry
    timeout_s: float | None
    on_error: str
    #: Incoming edges as (from node, its output), in the order the flow lists them.
    inputs: list[tuple[str, str]] = field(default_factory=list)
    #: Edges from this node's loop body back into it (split_in_batches only).
    loop_returns: list[tuple[str, str]] = field(default_factory=list)
    #: The innermost split_in_batches whose body holds this node, or None.
    loop_owner: str | None = None
    #: Nodes of this node's loop body in run order (split_in_batches only).
    body: list[str] = field(default_factory=list)
    #: True when nothing follows this node: its items are part of the flow's output.
    is_leaf: bool = True


@dataclass
class Flow:
    name: str
    nodes: dict[str, Node]
    order: list[str]
    trigger: Node
    settings: dict[str, Any]
    doc: dict[str, Any]

    @property
    def timeout_s(self) -> float | None:
        return self.settings.get("timeout_s")

    @property
    def error_flow(self) -> str | None:
        return self.settings.get("error_flow")


def _unknown(keys: Any, allowed: set[str]) -> list[str]:
    return sorted(k for k in keys if k not in allowed)


def _positive(value: Any, integer: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return value > 0 and (not integer or isinstance(value, int))


def _node_settings(raw: dict[str, Any], errors: list[ValidationError], nid: str) -> tuple[Retry, float | None, str]:
    retry = Retry()
    r = raw.get("retry")
    if r is not None:
        if not isinstance(r, dict):
            errors.append(ValidationError(nid, "retry must be an object with max_attempts, backoff_s, max_backoff_s"))
        else:
            for k in _unknown(r, RETRY_KEYS):
                errors.append(ValidationError(nid, f"retry has an unknown key {k!r} (use max_attempts, backoff_s, max_backoff_s)"))
            attempts = r.get("max_attempts", 1)
            if not _positive(attempts, integer=True):
                errors.append(ValidationError(nid, "retry.max_attempts must be a whole number of at least 1"))
                attempts = 1
            backoff = r.get("backoff_s", 1.0)
            cap = r.get("max_backoff_s", 300.0)
            for key, v in (("backoff_s", backoff), ("max_backoff_s", cap)):
                if not (_positive(v) or v == 0) or isinstance(v, bool):
                    errors.append(ValidationError(nid, f"retry.{key} must be a number of seconds, 0 or more"))
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (backoff, cap)):
                retry = Retry(attempts, float(backoff), float(cap))
    timeout = raw.get("timeout_s")
    if timeout is not None and not _positive(timeout):
        errors.append(ValidationError(nid, "timeout_s must be a number of seconds above 0"))
        timeout = None
    on_error = raw.get("on_error", "fail")
    if on_error not in ON_ERROR:
        errors.append(ValidationError(nid, f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}"))
        on_error = "fail"
    return retry, timeout, on_error


def _params(spec: NodeType, raw: Any, errors: list[ValidationError], nid: str) -> dict[str, Compiled]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(ValidationError(nid, "params must be an object"))
        return {}
    compiled: dict[str, Compiled] = {}
    errors_before = len(errors)
    for name in _unknown(raw, set(spec.params)):
        known = ", ".join(sorted(spec.params)) or "none"
        errors.append(ValidationError(nid, f"{spec.type} has no param {name!r} (its params: {known})"))
    for name, p in spec.params.items():
        if name not in raw or raw[name] is None:
            if p.required:
                errors.append(ValidationError(nid, f"param {name!r} is required ({p.description or p.kind})"))
            compiled[name] = Compiled(p.default, None)
            continue
        value = raw[name]
        if not p.expression and isinstance(value, str) and "{{" in value:
            errors.append(ValidationError(nid, f"param {name!r} must be a literal value, not an expression"))
            continue
        problem = p.check(value)
        if problem:
            errors.append(ValidationError(nid, f"param {name!r} {problem}"))
            continue
        try:
            compiled[name] = compile_value(value) if p.expression else Compiled(value, None)
        except ExpressionError as exc:
            errors.append(ValidationError(nid, f"param {name!r}: {exc}"))
    if spec.validate and len(errors) == errors_before:  # this node's params are well-typed
        errors.extend(ValidationError(nid, m) for m in spec.validate(raw))
    return compiled


def compile_flow(doc: Any, registry: Registry, *, require_trigger: bool = True) -> Flow:
    """Validate a flow document and compile it; raises FlowInvalid listing every problem."""
    errors: list[ValidationError] = []
    if not isinstance(doc, dict):
        raise FlowInvalid([ValidationError(None, "a flow must be a JSON object with name, nodes and edges")])
    for k in _unknown(doc, FLOW_KEYS):
        errors.append(ValidationError(None, f"unknown flow key {k!r} (a flow has {', '.join(sorted(FLOW_KEYS))})"))
    name = doc.get("name")
    if not isinstance(name, str) or not name.strip():
        errors.append(ValidationError(None, "the flow needs a \"name\" (a non-empty string)"))
        name = ""
    settings = doc.get("settings") or {}
    if not isinstance(settings, dict):
        errors.append(ValidationError(None, "settings must be an object"))
        settings = {}
    for k in _unknown(settings, SETTINGS_KEYS):
        errors.append(ValidationError(None, f"unknown setting {k!r} (settings are error_flow, timeout_s)"))
    if "timeout_s" in settings and not _positive(settings["timeout_s"]):
        errors.append(ValidationError(None, "settings.timeout_s must be a number of seconds above 0"))
    if "error_flow" in settings and not (isinstance(settings["error_flow"], str) and settings["error_flow"]):
        errors.append(ValidationError(None, "settings.error_flow must be the name of a flow"))
    tags = doc.get("tags", [])
    if not (isinstance(tags, list) and all(isinstance(t, str) and t.strip() and len(t) <= 50 for t in tags)):
        errors.append(ValidationError(None, "tags must be a list of short strings (1 to 50 characters each), "
                                            'e.g. "tags": ["sales", "nightly"]'))

    raw_nodes = doc.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        errors.append(ValidationError(None, "\"nodes\" must be a non-empty list"))
        raise FlowInvalid(errors)
    nodes: dict[str, Node] = {}
    unusable: set[str] = set()  # ids of nodes already reported (e.g. an unknown type)
    for i, raw in enumerate(raw_nodes):
        if not isinstance(raw, dict):
            errors.append(ValidationError(None, f"nodes[{i}] must be an object"))
            continue
        nid = raw.get("id")
        if not isinstance(nid, str) or not nid:
            errors.append(ValidationError(None, f"nodes[{i}] needs an \"id\" (a non-empty string)"))
            continue
        if nid in nodes:
            errors.append(ValidationError(nid, "two nodes have this id; ids must be unique"))
            continue
        for k in _unknown(raw, NODE_KEYS):
            errors.append(ValidationError(nid, f"unknown node key {k!r}"))
        ntype = raw.get("type")
        spec = registry.get(ntype) if isinstance(ntype, str) else None
        if spec is None:
            errors.append(ValidationError(nid, f"unknown node type {ntype!r}; known types: {', '.join(registry.names())}"))
            unusable.add(nid)
            continue
        cred = raw.get("credential")
        if cred is not None and not (isinstance(cred, str) and cred):
            errors.append(ValidationError(nid, "credential must be the name of a credential"))
            cred = None
        retry, timeout, on_error = _node_settings(raw, errors, nid)
        params = _params(spec, raw.get("params"), errors, nid)
        nodes[nid] = Node(nid, ntype, spec, dict(raw.get("params") or {}), params, cred, retry, timeout, on_error)

    raw_edges = doc.get("edges", [])
    if not isinstance(raw_edges, list):
        errors.append(ValidationError(None, "\"edges\" must be a list"))
        raw_edges = []
    edges: list[tuple[str, str, str]] = []
    for i, e in enumerate(raw_edges):
        if not isinstance(e, dict):
            errors.append(ValidationError(None, f"edges[{i}] must be an object with from, to and output"))
            continue
        for k in _unknown(e, EDGE_KEYS):
            errors.append(ValidationError(None, f"edges[{i}] has an unknown key {k!r}"))
        src, dst, out = e.get("from"), e.get("to"), e.get("output", "main")
        if not all(isinstance(v, str) for v in (src, dst, out)):
            errors.append(ValidationError(None, f"edges[{i}] needs \"from\" and \"to\" node ids (and \"output\" "
                                                "a name, if given)"))
            continue
        if src in unusable or dst in unusable:
            continue  # the node exists; its own error says what is wrong with it
        if src not in nodes:
            errors.append(ValidationError(src if isinstance(src, str) else None,
                                          f"edges[{i}] comes from a node that does not exist: {src!r}"))
            continue
        if dst not in nodes:
            errors.append(ValidationError(src, f"edges[{i}] goes to a node that does not exist: {dst!r}"))
            continue
        node = nodes[src]
        outs = node.spec.output_names(node.raw_params)
        if out not in outs and not (out == "error" and node.on_error == "output"):
            hint = ", ".join(outs) + (", error (with on_error: output)" if node.on_error != "output" else "")
            errors.append(ValidationError(src, f"has no output {out!r} (edges[{i}] to {dst!r}); its outputs: {hint}"))
            continue
        if nodes[dst].spec.trigger:
            errors.append(ValidationError(dst, f"is a trigger and cannot receive an edge (edges[{i}] from {src!r})"))
            continue
        edges.append((src, out, dst))

    triggers = [n for n in nodes.values() if n.spec.trigger]
    if require_trigger and not triggers and nodes:
        errors.append(ValidationError(None, "the flow has no trigger; add a manual, webhook or schedule node"))
    if len(triggers) > 1:
        for t in triggers[1:]:
            errors.append(ValidationError(t.id, f"is a second trigger; a flow has exactly one (first: {triggers[0].id!r})"))
    if errors:
        raise FlowInvalid(errors)

    order = _analyse_graph(nodes, edges, errors)
    if errors:
        raise FlowInvalid(errors)
    trigger = triggers[0] if triggers else nodes[order[0]]
    return Flow(name=name, nodes=nodes, order=order, trigger=trigger, settings=dict(settings), doc=doc)


def _analyse_graph(nodes: dict[str, Node], edges: list[tuple[str, str, str]], errors: list[ValidationError]) -> list[str]:
    """Find loop bodies, reject other cycles, and return a run order (topological, stable)."""
    succ: dict[str, list[tuple[str, str]]] = {n: [] for n in nodes}
    for src, out, dst in edges:
        succ[src].append((out, dst))

    # Loop bodies: reachable from a split_in_batches' loop output without passing through it.
    bodies: dict[str, set[str]] = {}
    for sib in (n for n in nodes.values() if n.type == LOOP_TYPE):
        seen: set[str] = set()
        stack = [dst for out, dst in succ[sib.id] if out == "loop"]
        while stack:
            cur = stack.pop()
            if cur == sib.id or cur in seen:
                continue
            seen.add(cur)
            stack.extend(dst for _, dst in succ[cur])
        bodies[sib.id] = seen

    back_edges: set[tuple[str, str, str]] = set()
    for src, out, dst in edges:
        if dst in bodies and (src in bodies[dst] or src == dst):
            back_edges.add((src, out, dst))
            nodes[dst].loop_returns.append((src, out))
        else:
            nodes[dst].inputs.append((src, out))
            nodes[src].is_leaf = False
    for src, _, _ in back_edges:
        nodes[src].is_leaf = False

    for sib_id, body in bodies.items():
        done_targets = [dst for out, dst in succ[sib_id] if out == "done"]
        for member in body:
            if member in done_targets:
                errors.append(ValidationError(sib_id, f"node {member!r} is both in the loop body and after 'done'"))
            for src, _ in nodes[member].inputs:
                if src != sib_id and src not in body:
                    errors.append(ValidationError(member, f"is inside the loop of {sib_id!r} but also receives items from {src!r} outside it"))
    # Innermost owner: the smallest body that contains the node.
    for nid in nodes:
        owners = [s for s, b in bodies.items() if nid in b]
        if owners:
            nodes[nid].loop_owner = min(owners, key=lambda s: len(bodies[s]))

    # Kahn's algorithm over forward edges; ties broken by the order nodes are listed in.
    position = {nid: i for i, nid in enumerate(nodes)}
    indegree = {nid: len(n.inputs) for nid, n in nodes.items()}
    ready = sorted((nid for nid, d in indegree.items() if d == 0), key=position.get)
    order: list[str] = []
    while ready:
        nid = ready.pop(0)
        order.append(nid)
        for out, dst in succ[nid]:
            if (nid, out, dst) in back_edges:
                continue
            indegree[dst] -= 1
            if indegree[dst] == 0:
                ready.append(dst)
                ready.sort(key=position.get)
    if len(order) < len(nodes):
        stuck = [nid for nid in nodes if nid not in order]
        errors.append(ValidationError(stuck[0], "is part of a cycle (" + " -> ".join(stuck) +
                                      "); only a split_in_batches loop may lead back"))
        return order
    rank = {nid: i for i, nid in enumerate(order)}
    for sib_id, body in bodies.items():
        nodes[sib_id].body = sorted(body, key=rank.get)
    for nid, n in nodes.items():
        if not n.spec.trigger and not n.inputs and n.loop_owner is None:
            errors.append(ValidationError(nid, "is not connected: no edge leads to it"))
    return order


def descendants(flow: Flow, node_id: str) -> set[str]:
    """Every node reachable from `node_id` along forward edges (not itself; loop back edges are not
    followed, a loop node's body counts as downstream of it)."""
    succ: dict[str, list[str]] = {nid: [] for nid in flow.nodes}
    for nid, node in flow.nodes.items():
        for src, _ in node.inputs:
            succ[src].append(nid)
    found: set[str] = set()
    stack = list(succ[node_id])
    while stack:
        cur = stack.pop()
        if cur not in found and cur != node_id:
            found.add(cur)
            stack.extend(succ[cur])
    return found


def ancestors(flow: Flow, node_ids: set[str] | list[str]) -> set[str]:
    """Every node from which one of `node_ids` is reachable along forward edges (none of them)."""
    start = set(node_ids)
    found: set[str] = set()
    stack = [src for nid in start for src, _ in flow.nodes[nid].inputs]
    while stack:
        cur = stack.pop()
        if cur not in found and cur not in start:
            found.add(cur)
            stack.extend(src for src, _ in flow.nodes[cur].inputs)
    return found
