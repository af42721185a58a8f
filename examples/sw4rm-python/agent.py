"""A SW4RM agent written with SW4RM's own Python SDK (sw4rm-sdk 0.6.0, unmodified) that uses
corral as its router and registry.

It registers as `py-greeter`, streams its messages, and for each DATA message
{"name": ...}: acknowledges it (RECEIVED, READ, FULFILLED — SW4RM's MessageProcessor does
that) and replies to the producer with {"greeting": "hello, <name>"} under the same
correlation id, which is what a Wasm agent's `messaging.request` waits for.

    python agent.py [--grpc 127.0.0.1:50051] [--agent-id py-greeter] [--once]
"""

import argparse
import json
import tempfile

import grpc
from sw4rm import constants as C
from sw4rm.ack_integration import ACKLifecycleManager, MessageProcessor
from sw4rm.activity_buffer import PersistentActivityBuffer
from sw4rm.clients.registry import RegistryClient
from sw4rm.clients.router import RouterClient
from sw4rm.envelope import build_envelope
from sw4rm.persistence import JSONFilePersistence


class Router(RouterClient):
    """sw4rm-sdk 0.6.0's build_envelope() adds three keys its own Envelope lacks (see the SDK
    notes); drop them so the client can send."""

    def send_message(self, envelope):
        extra = ("effective_policy_id", "audit_proof", "audit_policy_id")
        return super().send_message({k: v for k, v in envelope.items() if k not in extra})


def main():
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--grpc", default="127.0.0.1:50051", help="corral's --grpc-listen address")
    args.add_argument("--agent-id", default="py-greeter")
    args.add_argument("--once", action="store_true", help="exit after one message")
    opts = args.parse_args()

    with grpc.insecure_channel(opts.grpc) as channel:
        router, registry = Router(channel), RegistryClient(channel)
        registered = registry.register({"agent_id": opts.agent_id, "name": opts.agent_id, "capabilities": ["greeting"]})
        if not registered.accepted:
            raise SystemExit(f"registration refused: {registered.reason}")
        registry.heartbeat(opts.agent_id, C.RUNNING)
        print(f"{opts.agent_id} registered; waiting for messages", flush=True)

        def greet(envelope):
            name = json.loads(envelope["payload"]).get("name", "world")
            # corral routes by the payload's "to" (or Envelope.recipient, field 200).
            body = {"to": envelope["producer_id"], "greeting": f"hello, {name}"}
            reply = build_envelope(
                producer_id=opts.agent_id,
                message_type=C.DATA,
                payload=json.dumps(body).encode(),
                correlation_id=envelope["correlation_id"],
            )
            answer = router.send_message(reply)
            print(f"greeted {name} (reply accepted: {answer.accepted} {answer.reason})", flush=True)

        buffer = PersistentActivityBuffer(persistence=JSONFilePersistence(tempfile.mktemp(suffix=".json")))
        processor = MessageProcessor(ACKLifecycleManager(router, buffer, opts.agent_id))
        processor.register_handler(C.DATA, greet)
        processor.set_default_handler(lambda envelope: None)

        for item in router.stream_incoming(opts.agent_id):
            envelope = {f.name: getattr(item.msg, f.name) for f in item.msg.DESCRIPTOR.fields}
            if envelope["message_type"] == C.ACKNOWLEDGEMENT:
                continue
            processor.process_message(envelope)
            if opts.once:
                break
        registry.deregister(opts.agent_id)


if __name__ == "__main__":
    main()
