"""The quick start works: a webhook flow imported with the CLI answers through `flowfuse serve`."""

import httpx


def test_webhook_flow_answers_and_is_recorded(server):
    server.import_flow({"name": "double", "nodes": [
        {"id": "hook", "type": "webhook", "params": {"path": "double"}},
        {"id": "calc", "type": "set", "params": {"fields": {"double": "{{ json.n * 2 }}"}}},
    ], "edges": [{"from": "hook", "to": "calc"}]})
    r = httpx.post(server.url + "/hooks/default/double", json={"n": 21})
    assert r.status_code == 200
    assert r.json() == {"n": 21, "double": 42}
    shown = server.execution(r.headers["x-flowfuse-execution"])
    assert shown["status"] == "succeeded"
    assert [s["node"] for s in shown["steps"]] == ["hook", "calc"]
