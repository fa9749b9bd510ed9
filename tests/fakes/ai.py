"""An OpenAI-compatible chat-completions server (the API vLLM, llama.cpp's server and Ollama also
speak): `POST /v1/chat/completions` with `{"model", "messages", "temperature"?, "response_format"?}`,
answering a `chat.completion` object; errors as `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import json

from . import FakeService, Reply, Request

MODELS = ("test-model", "llama-3-8b-instruct")


def openai_error(status: int, message: str, code: str | None, type_: str = "invalid_request_error") -> Reply:
    return Reply(status, {"error": {"message": message, "type": type_, "param": None, "code": code}})


def sample(schema: dict) -> object:
    """A value that fits a JSON schema (what a model constrained to the schema would produce)."""
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        return {name: sample(sub) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [sample(schema.get("items", {"type": "string"}))]
    return {"integer": 1, "number": 0.5, "boolean": True, "null": None}.get(kind, "text")


class FakeAI(FakeService):
    def __init__(self, key: str | None = "sk-local-test") -> None:
        self.key = key
        #: What the "model" answers as content; by default it echoes the last user message.
        self.content: str | None = None
        super().__init__()

    def route(self, request: Request) -> Reply:
        if request.path != "/v1/chat/completions" or request.method != "POST":
            return openai_error(404, f"Invalid URL ({request.method} {request.path})", None)
        if self.key and request.bearer != self.key:
            return openai_error(401, f"Incorrect API key provided: {(request.bearer or '')[:3]}***. You can find your "
                                     "API key at your provider's console.", "invalid_api_key")
        body = request.json()
        if body.get("model") not in MODELS:
            return openai_error(404, f"The model `{body.get('model')}` does not exist or you do not have access to it.",
                                "model_not_found")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(
                    m.get("content"), str) for m in messages):
            return openai_error(400, "Invalid value for 'messages': expected a non-empty array of messages.", None)
        if "temperature" in body and not 0 <= body["temperature"] <= 2:
            return openai_error(400, f"Invalid 'temperature': decimal above maximum value. Expected a value <= 2, "
                                     f"but got {body['temperature']} instead.", "decimal_above_max_value")
        fmt = body.get("response_format") or {}
        if self.content is not None:
            content = self.content
        elif fmt.get("type") == "json_schema":
            content = json.dumps(sample(fmt["json_schema"]["schema"]))
        else:
            content = "You said: " + [m for m in messages if m["role"] == "user"][-1]["content"]
        return Reply(200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
        })
