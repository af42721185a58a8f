#!/usr/bin/env bash
# The five-minute tour of corral's HTTP API, with nothing but curl (and python3 to format JSON).
#
#     ./dev serve                      # in another terminal: a host on http://127.0.0.1:7070
#     examples/curl-tour.sh
#
# Environment:
#   CORRAL        base URL of the host (default http://127.0.0.1:7070)
#   CORRAL_TOKEN  bearer token, when the host's policy has [[principals]]
#
# The tour uses the example agents (echo, counter, orchestrator) that `./dev serve` loads. Each
# step prints the request it makes and what the answer shows. It stops at the first request
# that cannot reach the host; HTTP error answers are part of the tour and are printed.

set -euo pipefail

CORRAL=${CORRAL:-http://127.0.0.1:7070}
CORRAL=${CORRAL%/}
AUTH=()
if [[ -n ${CORRAL_TOKEN:-} ]]; then
    AUTH=(-H "authorization: Bearer $CORRAL_TOKEN")
fi

if ! command -v python3 >/dev/null; then
    echo "curl-tour: python3 is needed to read the JSON answers" >&2
    exit 2
fi

# --- helpers ---------------------------------------------------------------------------------

STEP=0
step() {
    STEP=$((STEP + 1))
    printf '\n\033[1m== %d. %s\033[0m\n' "$STEP" "$1"
}

note() { printf '   %s\n' "$@"; }

# api METHOD PATH [JSON]: makes one request; sets STATUS (HTTP code) and BODY.
api() {
    local method=$1 path=$2 data=() out
    if [[ $# -ge 3 ]]; then
        data=(-H 'content-type: application/json' --data "$3")
        printf '   $ curl -X %s %s -d %s\n' "$method" "$CORRAL$path" "'$3'"
    else
        printf '   $ curl -X %s %s\n' "$method" "$CORRAL$path"
    fi
    out=$(curl -sS -X "$method" ${AUTH[@]+"${AUTH[@]}"} ${data[@]+"${data[@]}"} -w '\n%{http_code}' "$CORRAL$path")
    STATUS=${out##*$'\n'}
    BODY=${out%$'\n'*}
    if [[ $STATUS == 401 ]]; then
        echo "curl-tour: $CORRAL needs a bearer token (its policy has [[principals]]): set CORRAL_TOKEN" >&2
        exit 1
    fi
}

# field KEY... < JSON: prints one value (strings bare, anything else as JSON).
field() {
    python3 -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1:]:
    v = v[int(k)] if isinstance(v, list) else v.get(k)
print(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))
' "$@"
}

# show_job < JSON: the parts of a job worth reading (the full view also has the lease and times).
show_job() {
    python3 -c '
import json, sys
j = json.load(sys.stdin)
if "error" in j and "id" not in j:
    sys.exit("   unexpected answer: " + json.dumps(j["error"], ensure_ascii=False))
print("   job     ", j["id"])
print("   agent   ", j["agent"] + "@" + j["agent_version"])
print("   status  ", j["status"])
for key in ("output", "error"):
    if key in j:
        print("   " + key.ljust(8), json.dumps(j[key], ensure_ascii=False))
'
}

# show_answer: the HTTP status and the body, pretty-printed.
show_answer() {
    note "HTTP $STATUS"
    printf '%s\n' "$BODY" | python3 -m json.tool --no-ensure-ascii | sed 's/^/   /'
}

# --- the tour --------------------------------------------------------------------------------

step "Is the host up?"
if ! curl -sS -f ${AUTH[@]+"${AUTH[@]}"} "$CORRAL/healthz" >/dev/null; then
    echo "curl-tour: no corral host answers at $CORRAL — start one with ./dev serve, or set CORRAL" >&2
    exit 1
fi
note "yes: $CORRAL/healthz answered"

step "What is loaded? (GET /v1/agents)"
api GET /v1/agents
printf '%s\n' "$BODY" | python3 -c '
import json, sys
listing = json.load(sys.stdin)
for a in listing.get("agents", []):
    scopes = ", ".join(a["versions"][-1]["scopes"]) if a["versions"] else ""
    print("   %-14s %-8s scopes: %s" % (a["name"], a["latest"], scopes))
for e in listing.get("errors", []):
    print("   rejected:", json.dumps(e))
' 2>/dev/null || show_answer
note "Each agent declares the scopes it needs; a job never gets more than that."

step "Invoke echo and wait up to 5 s for the result"
api POST '/v1/jobs?wait=5000' '{"agent": "echo", "input": {"hello": "world"}}'
note "HTTP $STATUS (200: finished within the wait; 202 would mean: accepted, still running)"
printf '%s\n' "$BODY" | show_job

step "Durable state: the counter agent increments counter/visits, twice"
for _ in 1 2; do
    api POST '/v1/jobs?wait=5000' '{"agent": "counter", "input": {"key": "visits"}}'
    if [[ $(printf '%s\n' "$BODY" | field status) == completed ]]; then
        note "→ counter/visits is now $(printf '%s\n' "$BODY" | field output value)"
    else
        printf '%s\n' "$BODY" | show_job   # e.g. a policy ceiling without kv.write on counter/*
    fi
done
note "The value lives in the host's SQLite store: it survives restarts."

step "A denial: the same job under a lease that withholds kv.write"
api POST '/v1/jobs?wait=5000' \
    '{"agent": "counter", "input": {"key": "visits"}, "lease": {"grants": {"log": ["**"], "kv.read": ["**"]}}}'
printf '%s\n' "$BODY" | show_job
DENIED_ID=$(printf '%s\n' "$BODY" | field id)
note "The effective lease is declared ∩ policy ∩ request, so kv.write is simply absent." \
     "The host returned the denial to the agent as a value; the agent chose to fail."

step "The denied job's events, as Server-Sent Events (capability = the audit trail)"
printf '   $ curl -N %s\n' "$CORRAL/v1/jobs/$DENIED_ID/events"
curl -sS -N --max-time 30 ${AUTH[@]+"${AUTH[@]}"} "$CORRAL/v1/jobs/$DENIED_ID/events" | sed 's/^/   /'
note "Every host call was checked and recorded: allow kv.read, deny kv.write, allow log."

step "Delegation, progress and streamed chunks: the orchestrator, followed live"
api POST /v1/jobs \
    '{"agent": "orchestrator", "input": {"tasks": [{"agent": "echo", "input": 1}, {"agent": "echo", "input": 2}]}}'
note "HTTP $STATUS (no wait: the job is committed, then the answer comes back at once)"
ORCH_ID=$(printf '%s\n' "$BODY" | field id)
printf '   $ curl -N %s\n' "$CORRAL/v1/jobs/$ORCH_ID/events"
# The stream ends by itself after the job's final `state` event.
curl -sS -N --max-time 30 ${AUTH[@]+"${AUTH[@]}"} "$CORRAL/v1/jobs/$ORCH_ID/events" | grep '^data:' | sed 's/^/   /'
note "Reconnect with the header 'Last-Event-ID: <seq>' to resume after event <seq>."
api GET "/v1/jobs/$ORCH_ID"
printf '%s\n' "$BODY" | show_job

step "Your jobs, newest first (GET /v1/jobs)"
api GET '/v1/jobs?limit=8'
printf '%s\n' "$BODY" | python3 -c '
import json, sys
page = json.load(sys.stdin)
for j in page["jobs"]:
    parent = "  (child of " + j["parent_id"][:13] + "…)" if j.get("parent_id") else ""
    print("   %s  %-13s %-10s%s" % (j["id"], j["agent"], j["status"], parent))
if page.get("next_cursor"):
    print("   more: ?cursor=" + page["next_cursor"])
'
note "Filter with ?status=failed or ?agent=echo; page with ?cursor=<next_cursor>."

step "Cancel a job: start a long fan-out and cancel it while it runs"
# 16 orchestrators delegating to 16 echo jobs each: long enough to catch it running.
TASKS=$(python3 -c '
import json
echoes = [{"agent": "echo", "input": i} for i in range(16)]
print(json.dumps([{"agent": "orchestrator", "input": {"tasks": echoes}}] * 16))
')
printf '   (the request body has 16 orchestrator tasks of 16 echo tasks each)\n'
out=$(curl -sS ${AUTH[@]+"${AUTH[@]}"} -H 'content-type: application/json' \
    --data "{\"agent\": \"orchestrator\", \"input\": {\"tasks\": $TASKS}}" "$CORRAL/v1/jobs")
LONG_ID=$(printf '%s\n' "$out" | field id)
note "submitted job $LONG_ID"
api POST "/v1/jobs/$LONG_ID/cancel"
if [[ $STATUS == 200 ]]; then
    printf '%s\n' "$BODY" | show_job
    note "A running job stops within one epoch tick (a few ms), its unfinished children with it."
else
    show_answer
    note "It had already finished (or failed) before the cancel arrived: 409 job_finished."
fi

step "Error answers have a stable code and say what to do"
api POST /v1/jobs '{"agent": "no-such-agent"}'
show_answer
api POST /v1/jobs '{"agent": "echo", "lease": {"grants": {"kv.raed": ["**"]}}}'
show_answer
note "Codes: invalid_json, invalid_lease, unknown_agent, unknown_version, payload_too_large," \
     "unauthorized, job_not_found, idempotency_conflict, job_finished, shutting_down."

printf '\nDone. The same with the CLI: corral agents | corral invoke echo --input %s\n' "'{\"hello\": 1}'"
