"""Validates corral's served OpenAPI document and drives the API with a client built from it.

Usage: exercise.py BASE_URL

1. The document at BASE_URL/openapi.json must pass openapi-spec-validator (OpenAPI 3.1).
2. A small client reads every operation from the document -- method, path template, which
   parameters go in the path and which in the query, the request body's properties -- and
   calls the live host with it. Parameters the document does not declare, or declares in the
   wrong place, make the call fail. Each JSON answer must match the schema the document
   declares for its status code.
Exits 0 when everything holds; prints what failed otherwise.
"""

import json
import sys
import urllib.error
import urllib.parse
import urllib.request

from openapi_schema_validator import OAS31Validator, validate
from openapi_spec_validator import validate as validate_spec


class Client:
    """Calls operations by operationId, using only what the document says about them."""

    def __init__(self, base, spec):
        self.base = base.rstrip("/")
        self.spec = spec
        self.ops = {}
        for path, item in spec["paths"].items():
            for method, op in item.items():
                self.ops[op["operationId"]] = (method.upper(), path, op)

    def call(self, operation_id, path=None, query=None, body=None):
        method, template, op = self.ops[operation_id]
        declared = {(p["in"], p["name"]): p for p in op.get("parameters", [])}
        url = template
        for name, value in (path or {}).items():
            assert ("path", name) in declared, f"{operation_id}: path parameter {name} is not declared in the path"
            url = url.replace("{" + name + "}", urllib.parse.quote(str(value), safe=""))
        for (where, name), p in declared.items():
            if where == "path":
                assert name in (path or {}), f"{operation_id}: declares path parameter {name}"
            if p.get("required") and where == "query":
                assert name in (query or {}), f"{operation_id}: query parameter {name} is required"
        for name in query or {}:
            assert ("query", name) in declared, f"{operation_id}: query parameter {name} is not declared as a query parameter"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None
        headers = {}
        if body is not None:
            schema = self.resolve(op["requestBody"]["content"]["application/json"]["schema"])
            unknown = set(body) - set(schema.get("properties", {}))
            assert not unknown, f"{operation_id}: body fields {unknown} are not in the request schema"
            validate(body, self.rooted(schema), cls=OAS31Validator)
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        request = urllib.request.Request(self.base + url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        answer = json.loads(raw) if raw else None
        responses = op["responses"]
        assert str(status) in responses, f"{operation_id}: status {status} is not documented ({list(responses)}): {answer}"
        content = responses[str(status)].get("content", {}).get("application/json")
        if content is not None:
            validate(answer, self.rooted(content["schema"]), cls=OAS31Validator)
        return status, answer

    def resolve(self, schema):
        ref = schema.get("$ref")
        if ref:
            return self.resolve(self.spec["components"]["schemas"][ref.split("/")[-1]])
        return schema

    def rooted(self, schema):
        # `$ref`s point at #/components/...: validate against a root that has them.
        return {**schema, "components": self.spec["components"]}


def main():
    base = sys.argv[1]
    with urllib.request.urlopen(base.rstrip("/") + "/openapi.json", timeout=30) as r:
        spec = json.load(r)
    validate_spec(spec)
    c = Client(base, spec)
    checks = []

    def check(name, got, want):
        checks.append((name, got == want, got, want))

    status, _ = c.call("healthz")
    check("healthz", status, 200)
    status, agents = c.call("list_agents", query={"capability": "greeting"})
    check("list_agents", (status, [a["name"] for a in agents["agents"]]), (200, ["greeter"]))
    status, job = c.call("submit_job", query={"wait": 5000}, body={"agent": "echo", "input": {"n": 1}})
    check("submit_job", (status, job["status"]), (200, "completed"))
    status, page = c.call("list_jobs", query={"status": "completed", "agent": "echo", "limit": 5})
    check("list_jobs", (status, len(page["jobs"])), (200, 1))
    status, got = c.call("get_job", path={"id": job["id"]})
    check("get_job", (status, got["id"]), (200, job["id"]))
    status, err = c.call("cancel_job", path={"id": job["id"]})
    check("cancel_job (finished)", (status, err["error"]["code"]), (409, "job_finished"))
    status, sent = c.call("send_message", body={"recipient": {"agent": "greeter"}, "payload": {"name": "openapi"}, "idempotency_token": "openapi-1"})
    check("send_message", status, 202)
    status, m = c.call("get_message", path={"id": sent["messages"][0]["id"]})
    check("get_message", (status, m["history"][0]["stage"]), (200, "RECEIVED"))
    status, listed = c.call("list_messages", query={"recipient": "greeter", "limit": 10})
    check("list_messages", (status, len(listed["messages"])), (200, 1))
    status, err = c.call("send_message", body={"recipient": {"agent": "nobody"}, "payload": 1})
    check("send_message (no route)", (status, err["error"]["code"]), (404, "no_route"))
    status, ext = c.call("register_external_agent", body={"agent_id": "openapi-agent", "capabilities": ["greeting"]})
    check("register_external_agent", (status, ext["available"]), (201, True))
    status, _ = c.call("heartbeat_external_agent", path={"id": "openapi-agent"})
    check("heartbeat_external_agent", status, 200)
    status, _ = c.call("deregister_external_agent", path={"id": "openapi-agent"})
    check("deregister_external_agent", status, 200)
    status, err = c.call("heartbeat_external_agent", path={"id": "openapi-agent"})
    check("heartbeat after deregister", (status, err["error"]["code"]), (404, "external_agent_not_found"))
    secret = {"value": "openapi-value", "allow": ["https://api.example.com/**"], "inject": {"header": "X-Api-Key"}}
    status, view = c.call("set_secret", path={"name": "openapi"}, body=secret)
    check("set_secret", (status, view["name"], "value" in view), (200, "openapi", False))
    status, listed = c.call("list_secrets")
    check("list_secrets", (status, [s["name"] for s in listed["secrets"]]), (200, ["openapi"]))
    status, _ = c.call("remove_secret", path={"name": "openapi"})
    check("remove_secret", status, 200)
    status, err = c.call("remove_secret", path={"name": "openapi"})
    check("remove_secret (gone)", (status, err["error"]["code"]), (404, "secret_not_found"))

    failed = [c for c in checks if not c[1]]
    for name, ok, got, want in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {got}" + ("" if ok else f" (wanted {want})"))
    print(f"{len(spec['paths'])} paths, {len(c.ops)} operations in the document; {len(checks) - len(failed)}/{len(checks)} checks passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
