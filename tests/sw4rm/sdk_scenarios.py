"""corral driven by SW4RM's own Python SDK (sw4rm-sdk 0.6.0, unmodified; installed by
setup_python_client.sh). Each scenario is run by an end-to-end test in tests/e2e/sw4rm.rs:

    python sdk_scenarios.py SCENARIO GRPC_ADDR HTTP_URL

It prints what it checks and exits 0 only if every check held. Where 0.6.0 itself is broken
(CLIENT-NOTES.md), the scenario works around the client, never the server:
- build_envelope() adds three keys Envelope lacks; `Router` drops them before sending;
- the RouterClient has no AckDelivery; scenarios that release explicitly use the generated stub.
"""

import json
import queue
import sys
import tempfile
import threading
import time
import urllib.request

import grpc
from sw4rm import constants as C
from sw4rm.ack_integration import ACKLifecycleManager, MessageProcessor
from sw4rm.activity_buffer import PersistentActivityBuffer
from sw4rm.clients.registry import RegistryClient
from sw4rm.clients.router import RouterClient
from sw4rm.envelope import build_envelope
from sw4rm.persistence import JSONFilePersistence
from sw4rm.protos import router_pb2, router_pb2_grpc

NOT_IN_ENVELOPE = ("effective_policy_id", "audit_proof", "audit_policy_id")


class Router(RouterClient):
    """The SDK's RouterClient, minus quirk 1: build_envelope's extra keys are dropped."""

    def send_message(self, envelope):
        return super().send_message({k: v for k, v in envelope.items() if k not in NOT_IN_ENVELOPE})


CHECKS = []


def check(name, ok, detail=""):
    CHECKS.append((name, bool(ok)))
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""), flush=True)


def as_dict(msg):
    """An Envelope as the dict the SDK's MessageProcessor works with."""
    return {f.name: getattr(msg, f.name) for f in msg.DESCRIPTOR.fields}


def http_json(base, path):
    with urllib.request.urlopen(base + path, timeout=10) as r:
        return json.load(r)


def history(base, message_id):
    return [h["stage"] for h in http_json(base, f"/v1/messages/{message_id}")["history"]]


def wait_for(what, fn, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    check(what, False, "timed out")
    return None


class Inbox:
    """An agent's StreamIncoming, read on a thread into a queue."""

    def __init__(self, router, agent_id):
        self.items = queue.Queue()
        self.call = router.stream_incoming(agent_id)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for item in self.call:
                self.items.put(item)
        except grpc.RpcError:
            pass

    def next(self, timeout=20):
        return self.items.get(timeout=timeout)

    def close(self):
        self.call.cancel()


def agent(registry, agent_id, capabilities):
    response = registry.register({"agent_id": agent_id, "name": agent_id, "capabilities": capabilities})
    check(f"register {agent_id}", response.accepted, response.reason)
    check(f"heartbeat {agent_id}", registry.heartbeat(agent_id, C.RUNNING).ok)


def processor(router, agent_id, handler):
    buffer = PersistentActivityBuffer(persistence=JSONFilePersistence(tempfile.mktemp(suffix=".json")))
    acks = ACKLifecycleManager(router, buffer, agent_id)
    mp = MessageProcessor(acks)
    mp.set_default_handler(handler)
    return mp


def data(producer, payload, **extra):
    return build_envelope(producer_id=producer, message_type=C.DATA, payload=json.dumps(payload).encode(), **extra)


def sdk_roundtrip(channel, base):
    """Two SDK agents: register, heartbeat, stream, send to a named recipient, receive with
    seq, MessageProcessor ACKs visible as RECEIVED -> READ -> FULFILLED, forwarded to the
    producer, deregister."""
    router, registry = Router(channel), RegistryClient(channel)
    agent(registry, "py-a", ["asking"])
    agent(registry, "py-b", ["answering"])
    inbox_a, inbox_b = Inbox(router, "py-a"), Inbox(router, "py-b")
    envelope = data("py-a", {"to": "py-b", "text": "hello"})
    sent = router.send_message(envelope)
    check("send to a named recipient is accepted", sent.accepted, sent.reason)
    item = inbox_b.next()
    check("the recipient receives it with a seq", item.seq > 0 and item.msg.message_id == envelope["message_id"], f"seq {item.seq}")
    got = []
    mp = processor(router, "py-b", lambda env: got.append(env["payload"]))
    result = mp.process_message(as_dict(item.msg))
    check("MessageProcessor handled it and its ACKs were accepted", result.success and result.accepted, result.reason)
    stages = wait_for("stages recorded", lambda: (h := history(base, envelope["message_id"]))[-1:] == ["FULFILLED"] and h)
    check("history is RECEIVED -> READ -> FULFILLED", stages == ["RECEIVED", "READ", "FULFILLED"], stages)
    forwarded = []
    while not forwarded or forwarded[-1] != 3:
        ack = inbox_a.next()
        check("what the producer gets is an ACKNOWLEDGEMENT", ack.msg.message_type == C.ACKNOWLEDGEMENT)
        forwarded.append(json.loads(ack.msg.payload).get("ack_stage"))
    check("the producer gets py-b's ACKs forwarded: RECEIVED, READ, FULFILLED", forwarded == [1, 2, 3], forwarded)
    agents = http_json(base, "/v1/agents?capability=answering")["external"]
    check("discovery by capability", [a["agent"]["agent_id"] for a in agents] == ["py-b"], agents)
    inbox_a.close()
    inbox_b.close()
    check("deregister py-a", registry.deregister("py-a").ok)
    check("deregister py-b", registry.deregister("py-b").ok)
    check("a deregistered agent's heartbeat fails", not registry.heartbeat("py-b", C.RUNNING).ok)


def serve_for_wasm(channel, base):
    """An SDK agent a Wasm agent talks to: answers each request with a reply (same correlation
    id, to the producer) and ACKs it. Prints READY, then serves two messages."""
    router, registry = Router(channel), RegistryClient(channel)
    agent(registry, "py-echo", ["echo"])
    inbox = Inbox(router, "py-echo")
    print("READY", flush=True)

    def answer(env):
        body = json.loads(env["payload"])
        reply = data("py-echo", {"to": env["producer_id"], "echoed": body}, correlation_id=env["correlation_id"])
        response = router.send_message(reply)
        check("the reply is accepted", response.accepted, response.reason)

    mp = processor(router, "py-echo", answer)
    for _ in range(2):
        item = inbox.next(timeout=60)
        result = mp.process_message(as_dict(item.msg))
        check("processed and acknowledged", result.success, result.reason)
    inbox.close()


def send_to_wasm(channel, base):
    """An SDK agent sends to a Wasm consumer (greeter) and sees its FULFILLED on its stream."""
    router, registry = Router(channel), RegistryClient(channel)
    agent(registry, "py-sender", [])
    inbox = Inbox(router, "py-sender")
    envelope = data("py-sender", {"to": "greeter", "name": "python"})
    sent = router.send_message(envelope)
    check("send to the Wasm consumer is accepted", sent.accepted, sent.reason)
    ack = inbox.next()
    payload = json.loads(ack.msg.payload)
    check("its ACK arrives: FULFILLED", payload.get("ack_stage") == "FULFILLED" and payload.get("ack_for_message_id") == envelope["message_id"], payload)
    check("history is RECEIVED -> READ -> FULFILLED", history(base, envelope["message_id"]) == ["RECEIVED", "READ", "FULFILLED"])
    inbox.close()


def bad_input(channel, base):
    """Malformed protobuf, oversize payload, wrong content_length, unknown message type, no
    recipient, streaming an unregistered id: each a clear answer; the server keeps serving."""
    raw = channel.unary_unary("/sw4rm.router.RouterService/SendMessage", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        raw(b"\xff\xff\xff\xff\x0f")
        check("malformed protobuf is refused", False)
    except grpc.RpcError as e:
        check("malformed protobuf is INVALID_ARGUMENT", e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL), e.code())
    router, registry = Router(channel), RegistryClient(channel)
    agent(registry, "py-bad", [])

    def reason(env):
        response = router.send_message(env)
        return response.accepted, response.reason

    big = build_envelope(producer_id="py-bad", message_type=C.DATA, payload=b'{"to": "greeter", "x": "' + b"x" * 300_000 + b'"}')
    accepted, why = reason(big)
    check("oversize payload: OVERSIZE_PAYLOAD", not accepted and why.startswith("OVERSIZE_PAYLOAD"), why)
    lying = data("py-bad", {"to": "greeter"})
    lying["content_length"] = 3
    accepted, why = reason(lying)
    check("wrong content_length: VALIDATION_ERROR", not accepted and why.startswith("VALIDATION_ERROR"), why)
    odd = data("py-bad", {"to": "greeter"})
    odd["message_type"] = 77
    accepted, why = reason(odd)
    check("unknown message type: VALIDATION_ERROR", not accepted and why.startswith("VALIDATION_ERROR"), why)
    nowhere = data("py-bad", {"text": "for nobody"})
    accepted, why = reason(nowhere)
    check("no recipient: NO_ROUTE", not accepted and why.startswith("NO_ROUTE"), why)
    stub = router_pb2_grpc.RouterServiceStub(channel)
    try:
        next(iter(stub.StreamIncoming(router_pb2.StreamRequest(agent_id="not-registered"))))
        check("streaming an unregistered id is refused", False)
    except grpc.RpcError as e:
        check("streaming an unregistered id is NOT_FOUND", e.code() == grpc.StatusCode.NOT_FOUND, e.code())
    accepted, why = reason(data("py-bad", {"to": "greeter", "name": "still serving"}))
    check("the server still serves", accepted, why)


SCENARIOS = {f.__name__: f for f in (sdk_roundtrip, serve_for_wasm, send_to_wasm, bad_input)}


def main():
    scenario, grpc_addr, base = sys.argv[1], sys.argv[2], sys.argv[3]
    with grpc.insecure_channel(grpc_addr) as channel:
        SCENARIOS[scenario](channel, base.rstrip("/"))
    failed = [name for name, ok in CHECKS if not ok]
    print(f"{len(CHECKS) - len(failed)}/{len(CHECKS)} checks passed", flush=True)
    sys.exit(1 if failed or not CHECKS else 0)


if __name__ == "__main__":
    main()
