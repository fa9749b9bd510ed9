"""A GraphQL server over HTTP (https://graphql.org/learn/serving-over-http/): `POST` of
`{"query", "variables", "operationName"}`, answered `{"data": ...}` or `{"errors": [{"message",
"locations", "path"}], "data": ...}`, executed by graphql-core against a small to-do schema."""

from __future__ import annotations

from graphql import build_schema, graphql_sync

from . import FakeService, Reply, Request

SCHEMA = build_schema("""
type Todo { id: ID!, title: String!, done: Boolean! }
type Query { todos(done: Boolean): [Todo!]!, todo(id: ID!): Todo }
type Mutation { addTodo(title: String!): Todo!, finish(id: ID!): Todo! }
""")


class FakeGraphQL(FakeService):
    def __init__(self, token: str = "gql-token") -> None:
        self.token = token
        self.todos: list[dict] = [{"id": "1", "title": "write tests", "done": True},
                                  {"id": "2", "title": "ship", "done": False}]
        super().__init__()

    def route(self, request: Request) -> Reply:
        if request.path != "/graphql" or request.method != "POST":
            return Reply(404, {"errors": [{"message": "not found"}]})
        if request.bearer != self.token:
            return Reply(401, {"errors": [{"message": "Unauthorized: a valid bearer token is required"}]})
        body = request.json()
        root = {
            "todos": lambda info, done=None: [t for t in self.todos if done is None or t["done"] == done],
            "todo": lambda info, id: next((t for t in self.todos if t["id"] == id), None),
            "addTodo": self.add,
            "finish": self.finish,
        }
        result = graphql_sync(SCHEMA, body.get("query", ""), root_value=root,
                              variable_values=body.get("variables"), operation_name=body.get("operationName"))
        out = {"data": result.data}
        if result.errors:
            out["errors"] = [e.formatted for e in result.errors]
        # a request that fails to parse or validate never executes: 400 (GraphQL over HTTP, application/json)
        executed = result.data is not None or any(e.path for e in result.errors or [])
        return Reply(200 if executed else 400, out)

    def add(self, info, title: str) -> dict:
        todo = {"id": str(len(self.todos) + 1), "title": title, "done": False}
        self.todos.append(todo)
        return todo

    def finish(self, info, id: str) -> dict:
        todo = next((t for t in self.todos if t["id"] == id), None)
        if todo is None:
            raise ValueError(f"no to-do with id {id}")
        todo["done"] = True
        return todo
