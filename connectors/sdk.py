"""The connector SDK: everything a node type's author needs, in one import.

A connector module defines `NodeType`s and adds them to the registry passed to its `register`
function::

    from connectors.sdk import NodeType, Param, NodeError

    def register(registry):
        registry.add(NodeType("hello", run=hello, params={"name": Param("string", required=True)}))

    def hello(ctx, items):
        return [{**item, "greeting": f"hello {ctx.param('name', item)}"} for item in items]

`run(ctx, items)` may be async. Return a list of items for the `main` output or a dict of
output name -> items. Raise `NodeError` with a message the user can act on.

A node that needs a secret names a credential type; register the type beside the node::

    registry.add_credential_type(CredentialType("api_key", {"key": Field("API key")}))

Fields are secret unless `Field(secret=False)`; secret values are write-only and the engine
redacts them from everything a run records. The node reads the fields from `ctx.credential`.
"""

from engine.executor import NodeContext, NodeError, StopExecution, Wait
from engine.nodes import Credential, CredentialType, Field, NodeType, Param, Registry

__all__ = ["Credential", "CredentialType", "Field", "NodeContext", "NodeError", "NodeType", "Param", "Registry",
           "StopExecution", "Wait"]
