"""An ASP 0.1.0 peer in Python, for corral's interoperability test (tests/e2e/federation.rs).

Written from the wire as the ASP reference speaks it (and as tests/vectors/asp_vectors.json
records it), independently of corral's Rust code: Ed25519 over SHA-256 of
message_id + timestamp + swarm_id + recipient + type + content, base64 with padding; invite
tokens as compact JWS {"alg":"EdDSA","typ":"JWT"}, base64url without padding; public keys as
base64 of the raw 32 bytes; JSON as Python's json module writes it (non-ASCII escaped).

It serves HTTPS on --port: the ASP endpoints (/swarm/info, /swarm/join, /swarm/message) of
one swarm it is master of, and a few /control/... endpoints the test drives it with (join a
swarm by invite, send a signed message, list what it received and verified). Every line it
prints on stdout is one JSON object; the first is {"ready": ...}.
"""

import argparse
import base64
import datetime
import hashlib
import json
import ssl
import sys
import threading
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def now_timestamp() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def signing_payload(m: dict) -> bytes:
    joined = m["message_id"] + m["timestamp"] + m["swarm_id"] + m["recipient"] + m["type"] + m["content"]
    return hashlib.sha256(joined.encode("utf-8")).digest()


class Peer:
    def __init__(self, seed: bytes, agent_id: str, endpoint: str, ca: str):
        self.key = Ed25519PrivateKey.from_private_bytes(seed)
        raw = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_key = base64.b64encode(raw).decode()
        self.agent_id = agent_id
        self.endpoint = endpoint
        self.client_tls = ssl.create_default_context(cafile=ca)
        self.lock = threading.Lock()
        # Its own swarm (it is the master), and the swarms it joined: swarm id -> members.
        self.swarm_id = str(uuid.uuid4())
        me = {"agent_id": agent_id, "endpoint": endpoint, "public_key": self.public_key}
        self.members = {self.swarm_id: {agent_id: me}}
        self.received = []

    # --- wire ---
    def sign(self, m: dict) -> str:
        return base64.b64encode(self.key.sign(signing_payload(m))).decode()

    def invite(self, max_uses: int) -> str:
        header = json.dumps({"alg": "EdDSA", "typ": "JWT"}, separators=(",", ":"))
        claims = {
            "swarm_id": self.swarm_id,
            "master": self.agent_id,
            "endpoint": self.endpoint,
            "iat": int(datetime.datetime.now().timestamp()),
            "expires_at": "2099-01-01T00:00:00.000Z",
            "max_uses": max_uses,
        }
        signing_input = b64url(header.encode()) + "." + b64url(json.dumps(claims, separators=(",", ":")).encode())
        return signing_input + "." + b64url(self.key.sign(signing_input.encode()))

    def verify_token(self, token: str, public_key_b64: str) -> dict:
        header, claims, signature = token.split(".")
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))
        key.verify(unb64url(signature), (header + "." + claims).encode())
        return json.loads(unb64url(claims))

    def http(self, method: str, url: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, context=self.client_tls, timeout=10) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    # --- ASP endpoints ---
    def on_join(self, body: dict):
        try:
            claims = self.verify_token(body["invite_token"], self.public_key)
        except (InvalidSignature, ValueError, KeyError):
            return 401, {"error": {"code": "INVALID_SIGNATURE", "message": "bad invite"}}
        sender = body["sender"]
        with self.lock:
            members = self.members.setdefault(claims["swarm_id"], {})
            members[sender["agent_id"]] = {k: sender[k] for k in ("agent_id", "endpoint", "public_key")}
            listed = list(members.values())
        return 200, {"status": "accepted", "swarm_id": claims["swarm_id"], "swarm_name": "python", "members": listed}

    def on_message(self, m: dict):
        with self.lock:
            member = self.members.get(m.get("swarm_id"), {}).get(m.get("sender", {}).get("agent_id"))
        if member is None:
            return 403, {"error": {"code": "NOT_AUTHORIZED", "message": "not a member"}}
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(member["public_key"]))
        try:
            key.verify(base64.b64decode(m["signature"]), signing_payload(m))
        except (InvalidSignature, ValueError):
            return 401, {"error": {"code": "INVALID_SIGNATURE", "message": "signature does not verify"}}
        with self.lock:
            self.received.append(m)
        print(json.dumps({"received": m["message_id"]}), flush=True)
        return 200, {"status": "queued", "message_id": m["message_id"]}

    # --- control (the test) ---
    def control_join(self, body: dict):
        token = body["invite"].split("token=")[-1]
        claims = json.loads(unb64url(token.split(".")[1]))
        status, info = self.http("GET", claims["endpoint"].rstrip("/") + "/info")
        if status != 200 or info["agent_id"] != claims["master"]:
            return 400, {"error": "the invite's endpoint is not its master"}
        self.verify_token(token, info["public_key"])
        request = {
            "type": "system",
            "action": "join_request",
            "invite_token": token,
            "sender": {"agent_id": self.agent_id, "endpoint": self.endpoint, "public_key": self.public_key},
        }
        status, answer = self.http("POST", claims["endpoint"].rstrip("/") + "/join", request)
        if status == 200:
            with self.lock:
                self.members[answer["swarm_id"]] = {m["agent_id"]: m for m in answer["members"]}
        return status, answer

    def control_send(self, body: dict):
        with self.lock:
            member = self.members[body["swarm_id"]][body["recipient"]]
        m = {
            "protocol_version": "0.1.0",
            "message_id": str(uuid.uuid4()),
            "timestamp": now_timestamp(),
            "sender": {"agent_id": self.agent_id, "endpoint": self.endpoint},
            "recipient": body["recipient"],
            "swarm_id": body["swarm_id"],
            "type": body.get("type", "message"),
            "content": body["content"],
        }
        m["signature"] = self.sign(m)
        status, answer = self.http("POST", member["endpoint"].rstrip("/") + "/message", m)
        return 200, {"status": status, "answer": answer, "message_id": m["message_id"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--seed", required=True, help="64 hex characters")
    args = parser.parse_args()
    endpoint = f"https://127.0.0.1:{args.port}/swarm"
    peer = Peer(bytes.fromhex(args.seed), "python-peer-" + args.seed[:8], endpoint, args.ca)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/swarm/info":
                self.answer(200, {"agent_id": peer.agent_id, "endpoint": peer.endpoint, "public_key": peer.public_key,
                                  "protocol_version": "0.1.0", "capabilities": ["message"]})
            elif self.path == "/control/state":
                self.answer(200, {"agent_id": peer.agent_id, "swarm_id": peer.swarm_id, "invite": peer.invite(5)})
            elif self.path == "/control/received":
                with peer.lock:
                    self.answer(200, {"received": list(peer.received)})
            else:
                self.answer(404, {"error": {"code": "NOT_FOUND", "message": self.path}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
            routes = {"/swarm/join": peer.on_join, "/swarm/message": peer.on_message,
                      "/control/join": peer.control_join, "/control/send": peer.control_send}
            route = routes.get(self.path)
            if route is None:
                self.answer(404, {"error": {"code": "NOT_FOUND", "message": self.path}})
            else:
                self.answer(*route(body))

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(args.cert, args.key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    print(json.dumps({"ready": endpoint, "agent_id": peer.agent_id}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
