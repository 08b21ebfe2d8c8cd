#!/usr/bin/env bash
# The end-to-end demo behind `make demo`.
#
# Uses the RabbitMQ and PostgreSQL already answering at the RELIABLE_* URLs (defaults:
# the docker-compose.yml services on 127.0.0.1), or starts them with
# `docker compose up -d --wait` when they do not answer and a Docker engine does.
# Then: migrate, apply the topology, start `reliable outbox relay` and a Celery worker
# for ops/demo/shop.py, place orders of which some fail, send duplicates, inspect and
# replay the dead letters, and check that every order was charged exactly once.
#
# Exits non-zero as soon as a step fails; the background relay and worker are stopped
# on any exit. Knobs: DEMO_ORDERS (12), DEMO_METRICS_PORT (relay, 9108),
# DEMO_WORKER_METRICS_PORT (9109), DEMO_TIMEOUT (90 s), PYTHON (default
# .venv/bin/python, else python3), the RELIABLE_* URLs.
set -Eeuo pipefail

cd "$(dirname "$0")/../.."
# Wide tables in logs and CI output; on a terminal rich uses its real width.
[[ -t 1 ]] || export COLUMNS="${COLUMNS:-120}"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export RELIABLE_AMQP_URL="${RELIABLE_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2F}"
export RELIABLE_MANAGEMENT_URL="${RELIABLE_MANAGEMENT_URL:-http://guest:guest@127.0.0.1:15672}"
export RELIABLE_DATABASE_URL="${RELIABLE_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"

ORDERS="${DEMO_ORDERS:-12}"
BIG_EVERY=4                          # every 4th order is over the card limit and fails
DECLINED=$((ORDERS / BIG_EVERY))
METRICS_PORT="${DEMO_METRICS_PORT:-9108}"
METRICS_URL="http://127.0.0.1:${METRICS_PORT}/metrics"
WORKER_METRICS_PORT="${DEMO_WORKER_METRICS_PORT:-9109}"
WORKER_METRICS_URL="http://127.0.0.1:${WORKER_METRICS_PORT}/metrics"
TIMEOUT="${DEMO_TIMEOUT:-90}"
DLQ=shop.payments.dlq
WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/reliable-demo.XXXXXX")"

reliable() { "$PYTHON" -m reliable "$@"; }
shop() { "$PYTHON" ops/demo/shop.py "$@"; }
check() { "$PYTHON" ops/demo/check.py --timeout "$TIMEOUT" "$@"; }

CURRENT_STEP="starting"
PIDS=()

step() {  # step DESCRIPTION COMMAND...
  CURRENT_STEP="$1"; shift
  printf '\n\033[1m==> %s\033[0m\n' "$CURRENT_STEP"
  printf '    $ %s\n' "$*"
  "$@"
}

start_background() {  # start_background NAME COMMAND...: output goes to $WORKDIR/NAME.log
  local name=$1; shift
  "$@" >"$WORKDIR/$name.log" 2>&1 &
  PIDS+=("$!")
  printf '    started %s (pid %s, log %s)\n' "$name" "$!" "$WORKDIR/$name.log"
}

stop_background() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  # Both handle SIGTERM gracefully: the relay finishes its in-flight confirms, the
  # worker its current task. Give them 30 s, then kill what is left.
  for _ in $(seq 60); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.5
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}

on_exit() {
  local status=$?
  trap - EXIT
  if ((${#PIDS[@]})); then stop_background; fi
  if [[ $status != 0 ]]; then
    printf '\n\033[31mdemo FAILED at step: %s (exit %s)\033[0m\n' "$CURRENT_STEP" "$status" >&2
    for log in "$WORKDIR"/*.log; do
      [[ -f $log ]] || continue
      printf '\n--- last lines of %s ---\n' "$log" >&2
      tail -n 30 "$log" >&2
    done
  else
    printf '\n\033[32mdemo OK\033[0m (logs in %s)\n' "$WORKDIR"
  fi
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ensure_services() {
  if check --timeout 3 services 2>/dev/null; then return 0; fi
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo "    services do not answer; starting them with docker compose"
    docker compose up -d --wait
  fi
  check services
}

wait_for_worker() {  # the worker logs "<name> ready." once it consumes
  local pid=${PIDS[-1]} deadline=$((SECONDS + TIMEOUT))
  until grep -q ' ready\.' "$WORKDIR/worker.log" 2>/dev/null; do
    if ((SECONDS > deadline)); then echo "worker not ready after ${TIMEOUT}s" >&2; return 1; fi
    kill -0 "$pid" 2>/dev/null || { echo "the worker exited" >&2; return 1; }
    sleep 0.5
  done
  echo "ok: worker ready"
}

wait_for_relay() {  # its /metrics answers once it has completed a loop
  local pid=${PIDS[-1]} deadline=$((SECONDS + TIMEOUT))
  until "$PYTHON" ops/demo/check.py --timeout 1 metric-at-least "$METRICS_URL" \
    reliable_relay_last_batch_timestamp_seconds 1 2>/dev/null; do
    if ((SECONDS > deadline)); then echo "relay not ready after ${TIMEOUT}s" >&2; return 1; fi
    kill -0 "$pid" 2>/dev/null || { echo "the relay exited" >&2; return 1; }
  done
}

place_orders() {
  shop place --count "$ORDERS" --big-every "$BIG_EVERY" >"$WORKDIR/run.json"
  echo "placed $ORDERS orders and rolled one back; ids and task ids in $WORKDIR/run.json"
}

echo "reliable demo: $ORDERS orders, $DECLINED of them declined at first; work dir $WORKDIR"

step "RabbitMQ and PostgreSQL answer" ensure_services
step "install the reliable tables" reliable db migrate
step "apply the example topologies" reliable topology apply topology/ --yes
step "apply the demo shop's topology" reliable topology apply ops/demo/topology.yaml --yes
step "create the shop's tables; card limit 100.00" shop setup --limit-cents 10000
step "empty the demo queues left by an earlier run" check purge shop.payments "$DLQ"

step "start the outbox relay" start_background relay \
  "$PYTHON" -m reliable outbox relay --metrics-port "$METRICS_PORT"
step "relay ready (metrics on $METRICS_URL)" wait_for_relay
step "start a Celery worker for shop.py" start_background worker \
  env PYTHONPATH="ops/demo${PYTHONPATH:+:$PYTHONPATH}" SHOP_METRICS_PORT="$WORKER_METRICS_PORT" \
  "$PYTHON" -m celery -A shop worker \
  --pool solo --queues shop.payments --hostname "shop-demo-$$@%h" \
  --without-gossip --without-mingle --loglevel INFO
step "worker ready" wait_for_worker

# Each order: order row + order.created event + charge task in one transaction.
# One more order is rolled back on purpose: nothing of it may ever leave.
step "place $ORDERS orders" place_orders
step "$((ORDERS - DECLINED)) orders paid, $DECLINED charges dead-lettered" \
  check settled "$WORKDIR/run.json" --charged "$((ORDERS - DECLINED))" --dlq "$DLQ" --dead "$DECLINED"

# Redelivery happens (worker crash, producer retry, replay): send 3 charge tasks
# again with their original task ids. The inbox must skip them (the final check
# counts the charges; the worker's duplicate counter shows it saw them).
step "send 3 charge tasks again with the same task ids" shop resend "$WORKDIR/run.json" --count 3
step "the worker skipped them as duplicates" check metric-at-least "$WORKER_METRICS_URL" \
  reliable_inbox_duplicates_total 3

step "list the dead-letter queue" reliable dlq list "$DLQ"
step "show the dead letters" reliable dlq show "$DLQ" --limit 3
step "deploy the fix: card limit 1,000.00" shop set-limit 100000
step "dry run: what would move where" reliable dlq replay "$DLQ" --dry-run
step "the dry run moved nothing" check depth "$DLQ" "$DECLINED"
step "replay the dead letters to shop.payments" reliable dlq replay "$DLQ" --yes --rate 100
step "all $ORDERS orders paid exactly once, $DLQ empty" \
  check settled "$WORKDIR/run.json" --charged "$ORDERS" --dlq "$DLQ" --dead 0
step "outbox status" reliable outbox status
step "relay metrics" check dump "$METRICS_URL"
step "worker metrics" check dump "$WORKER_METRICS_URL"
