"""The connector SDK: everything a node type's author needs, in one import.

A connector module defines `NodeType`s and adds them to the registry passed to its `register`
function::

    from connectors.sdk import NodeType, Param, NodeError

    def register(registry):
        registry.add(NodeType("hello", run=hello, params={"name": Param("string", required=True)},
                              label="Hello", category="Examples", icon="hello.svg"))

    def hello(ctx, items):
        return [{**item, "greeting": f"hello {ctx.param('name', item)}"} for item in items]

`run(ctx, items)` may be async. Return a list of items for the `main` output or a dict of
output name -> items. Raise `NodeError` with a message the user can act on.

A node that needs a secret names the credential types it accepts (`credential_types=("bearer",)`);
register a type of your own beside the node when none of the built-in ones fits::

    registry.add_credential_type(CredentialType("acme", {"key": Field("API key")}))

Built-in types: `api_key` (key, name, in: header|query), `bearer` (token), `basic` (username,
password), `header` (name, value), `oauth2_client_credentials`, `oauth2_authorization_code` and
`generic`. Fields are secret unless `Field(secret=False)`; secret values are write-only and the
engine redacts them from everything a run records. The node reads the fields from `ctx.credential`.

Calling an HTTP API: `connectors.sdk.http.call(ctx, "GET", url)` authenticates with the node's
credential (any built-in type, OAuth2 tokens fetched and refreshed: see `connectors.sdk.auth`),
honours 429/503 Retry-After and turns 4xx/5xx answers into a `NodeError` with the API's message.

Triggers: `trigger_kind="webhook"` (with `verify`/`respond`), `"polling"` (with `poll`) or
`"event"` (with `listen`); see `engine.nodes` and docs/connectors/write-a-connector.md.

Discovery: connectors/*.py modules named in `connectors.BUILTIN`, the Python entry points of the
group `flowfuse.connectors`, and `<data_dir>/plugins/*.py`; each module has `register(registry)`.
"""

from engine.executor import NodeContext, NodeError, StopExecution, Wait
from engine.nodes import (
    Credential, CredentialType, EventContext, Field, NodeType, Param, PollContext, PollResult, Registry, Unverified,
    WebhookRequest,
)

__all__ = ["Credential", "CredentialType", "EventContext", "Field", "NodeContext", "NodeError", "NodeType", "Param",
           "PollContext", "PollResult", "Registry", "StopExecution", "Unverified", "Wait", "WebhookRequest"]
