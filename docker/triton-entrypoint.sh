#!/bin/sh
# tritonserver as `htr serve` runs it, for the compose `triton` service: docker-compose.yml passes the flags of
# TritonServer.command() ("$@"; tests/test_monitoring.py compares them), this adds the restricted-API flags
# with the admin key read from the compose secret, so the key is in neither the compose file nor the
# environment. The APIs are those `htr serve` restricts off loopback (serve/server.py RESTRICTED_APIS plus
# shared-memory); requests to them need the header `htr-admin-key: <key>`.
#
# It stays in front of the server to stop it as `htr serve` does: on SIGTERM/SIGINT (`docker compose stop`)
# it first unloads the ensembles and waits for them to go (triton-healthcheck.py --drain), so ensemble
# requests in flight finish, then forwards SIGTERM, and exits with tritonserver's status.
#
#   HTR_ADMIN_KEY_FILE    the key (default /run/secrets/htr_admin_key; whitespace in it is dropped)
#   HTR_SERVER_PID_FILE   where tritonserver's pid is written for the health check (/tmp/tritonserver.pid)
#   HTR_HEALTH_STATE      the health check's memory, cleared here: a restarted container starts afresh
#   TRITONSERVER, PYTHON  the executables (default: tritonserver and python3 on PATH)
set -eu
here=$(dirname "$0")
key_file=${HTR_ADMIN_KEY_FILE:-/run/secrets/htr_admin_key}
if [ ! -r "$key_file" ]; then
    echo "triton-entrypoint: cannot read the admin key at $key_file (the compose secret htr_admin_key)" >&2
    exit 2
fi
key=$(tr -d ' \t\r\n' < "$key_file")
if [ "${#key}" -lt 16 ]; then
    echo "triton-entrypoint: the admin key in $key_file is shorter than 16 characters" >&2
    exit 2
fi
restricted="model-repository,trace,logging,shared-memory:htr-admin-key=$key"
rm -f "${HTR_HEALTH_STATE:-/tmp/htr-health.json}"
"${TRITONSERVER:-tritonserver}" "$@" --http-restricted-api="$restricted" --grpc-restricted-protocol="$restricted" &
pid=$!
echo "$pid" > "${HTR_SERVER_PID_FILE:-/tmp/tritonserver.pid}"

stop() {
    trap 'kill -KILL "$pid" 2>/dev/null || true' TERM INT  # a second signal, once the drain returned, kills
    "${PYTHON:-python3}" "$here/triton-healthcheck.py" --drain || true
    kill -TERM "$pid" 2>/dev/null || true
}
trap stop TERM INT
status=0
while kill -0 "$pid" 2>/dev/null; do
    wait "$pid" && status=0 || status=$?  # returns early when a signal arrives; the loop waits again
done
exit "$status"
