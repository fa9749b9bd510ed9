"""AI chat: one call to an OpenAI-compatible chat-completions endpoint per item.

Works with any server that speaks `POST {base_url}/chat/completions` (OpenAI, and local servers
such as vLLM, llama.cpp's server or Ollama at http://localhost:11434/v1), so prompts stay on
premises when the model does. Messages come from params (system, prompt, or a full messages
list), each of which may be an expression over the item. With `json_schema` the model is asked
for structured output (`response_format: {type: json_schema}`) and the answer is parsed: a
reply that is not JSON fails the node rather than passing text on as if it were data.
"""

from __future__ import annotations

import json
from typing import Any

from .sdk import NodeContext, NodeError, NodeType, Param, Registry
from .sdk.http import call

ICON = "ai.svg"
CATEGORY = "AI"
API = "https://api.openai.com/v1"


def _messages(ctx: NodeContext, item: dict) -> list[dict]:
    given = ctx.param("messages", item)
    if given:
        if not isinstance(given, list) or not all(isinstance(m, dict) and m.get("role") and "content" in m
                                                  for m in given):
            raise NodeError("messages must be a list of {role, content} (roles: system, user, assistant)")
        return [{"role": str(m["role"]), "content": m["content"] if isinstance(m["content"], str)
                 else json.dumps(m["content"])} for m in given]
    prompt = ctx.param("prompt", item)
    if prompt in (None, ""):
        raise NodeError("give a prompt (or a messages list)")
    out = []
    system = ctx.param("system", item)
    if system:
        out.append({"role": "system", "content": str(system)})
    out.append({"role": "user", "content": prompt if isinstance(prompt, str) else json.dumps(prompt)})
    return out


def _request(ctx: NodeContext, item: dict) -> dict:
    body: dict[str, Any] = {"model": ctx.param("model", item), "messages": _messages(ctx, item)}
    for name in ("temperature", "max_tokens"):
        value = ctx.param(name, item)
        if value is not None:
            body[name] = value
    schema = ctx.param("json_schema", item)
    if schema:
        if not isinstance(schema, dict):
            raise NodeError("json_schema must be a JSON Schema object, e.g. {type: object, properties: {...}}")
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": ctx.param("schema_name", item) or "output", "schema": schema, "strict": True}}
    return body


async def _chat(ctx: NodeContext, items: list[dict]) -> list[dict]:
    url = f"{str(ctx.param('base_url')).rstrip('/')}/chat/completions"
    credential = ctx.credential or False  # local servers often need no key
    out = []
    for item in items:
        body = _request(ctx, item)
        answer = (await call(ctx, "POST", url, json=body, credential=credential,
                             timeout_s=ctx.param("timeout_s", item))).json()
        try:
            choice = answer["choices"][0]
            content = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise NodeError(f"the chat endpoint answered without choices[0].message: {str(answer)[:200]}") from None
        result: dict[str, Any] = {"content": content, "model": answer.get("model"),
                                  "finish_reason": choice.get("finish_reason"), "usage": answer.get("usage")}
        if "response_format" in body:
            try:
                result["json"] = json.loads(content)
            except ValueError:
                raise NodeError(f"the model was asked for JSON matching json_schema but answered: {content[:200]!r}"
                                ) from None
        out.append(result)
    return out


def register(registry: Registry) -> None:
    registry.add(NodeType("ai.chat", _chat, label="AI chat", category=CATEGORY, icon=ICON,
                          credential_types=("bearer", "api_key"), params={
        "base_url": Param("string", default=API, description="OpenAI-compatible API base, e.g. "
                                                             "http://localhost:11434/v1 (Ollama) or http://vllm:8000/v1"),
        "model": Param("string", required=True, description="model name the server knows"),
        "system": Param("string", description="system message (instructions)"),
        "prompt": Param("any", description="the user message; an expression such as 'Summarise: {{ json.text }}'"),
        "messages": Param("list", description="a full conversation [{role, content}] instead of system and prompt"),
        "temperature": Param("number", description="0 (deterministic) to 2"),
        "max_tokens": Param("integer", description="longest answer, in tokens"),
        "json_schema": Param("object", description="JSON Schema for structured output; the answer is parsed into "
                                                   "`json`"),
        "schema_name": Param("string", default="output", description="name of the schema sent to the server"),
        "timeout_s": Param("number", default=120, description="seconds to wait for the answer"),
    }, description="Sends a chat-completions request per item; outputs content (and json with json_schema), "
                   "model, finish_reason and usage."))
