"""The REST API at /api/v1: tenants, members, API keys, flows, executions, variables, credentials, audit.

Every handler names the permission it needs and goes through `Identity.authorize` (the same guard
the console uses); a principal without access to a tenant gets 404 for everything in it, one
without the permission 403. Every failure is an RFC 9457 problem document
(`application/problem+json`) whose `detail` says what to do; validation errors list the fields.
Every state change is written to the audit log with the actor, tenant, target, address and agent.

Handlers are plain functions run in Litestar's thread pool: they call the synchronous stores,
whose writes go through the group-commit writer bound to the web process's loop.
"""

from __future__ import annotations

from litestar import Router
from litestar.di import Provide
from litestar.openapi.datastructures import ResponseSpec

from . import connectors, debug, flows, oauth, people, tenants
from .base import Problem, access_dependency, authenticate, on_error, principal_dependency, problem

HANDLERS = people.HANDLERS + tenants.HANDLERS + flows.HANDLERS + debug.HANDLERS + oauth.HANDLERS
HANDLERS += connectors.HANDLERS

_PROBLEMS = {code: ResponseSpec(data_container=Problem, media_type="application/problem+json", description=text)
             for code, text in ((400, "Malformed request: the body or a parameter does not fit"),
                                (401, "No valid API key or session"),
                                (403, "Not allowed for this role, or missing CSRF token"),
                                (404, "Not found, or not visible to the caller"),
                                (409, "Conflicts with the current state"),
                                (422, "Invalid values; `errors` names the fields"),
                                (429, "Too many attempts; see Retry-After"))}
for _handler in HANDLERS:  # documented in the OpenAPI document, so clients (and Schemathesis) know them
    _handler.responses = {**_PROBLEMS, **(_handler.responses or {})}

router = Router(path="/api/v1", route_handlers=HANDLERS, guards=[authenticate],
                dependencies={"principal": Provide(principal_dependency, sync_to_thread=False),
                              "access": Provide(access_dependency, sync_to_thread=False)},
                exception_handlers={Exception: on_error}, tags=["v1"])

__all__ = ["HANDLERS", "problem", "router"]
