#!/usr/bin/env bash
# A first tour of Allot through its CLI: reservations, a full slot, a
# release, a capacity change, and the audit trail they leave.
#
# Start a node first (`cargo run -p allot-host -- dev`), then, in another
# terminal:
#
#   bash examples/scenario.sh
#
# It talks to $ALLOT_URL (default http://127.0.0.1:8080) with the dev
# tokens unless ALLOT_CHECKOUT_TOKEN and ALLOT_PLANNER_TOKEN are set, and
# runs `allot` as $ALLOT (default: cargo run from this checkout).
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -n "${ALLOT:-}" ]]; then
    allot=("$ALLOT")
else
    allot=(cargo run --quiet -p allot-host --)
fi
checkout="${ALLOT_CHECKOUT_TOKEN:-dev-checkout-token}"
planner="${ALLOT_PLANNER_TOKEN:-dev-planner-token}"
export ALLOT_URL="${ALLOT_URL:-http://127.0.0.1:8080}"

as_checkout() { ALLOT_TOKEN="$checkout" "${allot[@]}" "$@"; }
as_planner() { ALLOT_TOKEN="$planner" "${allot[@]}" "$@"; }
step() { printf '\n== %s\n' "$*"; }

# GNU date, else BSD date.
day="$(date -u -d tomorrow +%F 2>/dev/null || date -u -v+1d +%F)"
pool="scenario-$(date -u +%H%M%S)-$RANDOM.$day"

step "A planner creates $pool: one van, 08:00-10:00, 1 stop an hour, so the slot takes 2 stops"
as_planner pools create "$pool" --type logistics --config "{
  \"area\": \"scenario\", \"date\": \"$day\",
  \"slots\": [{\"id\": \"08-10\", \"start\": \"08:00\", \"end\": \"10:00\"}],
  \"vans\": [{\"id\": \"van-1\", \"shift_start\": \"08:00\", \"shift_end\": \"10:00\",
              \"stops_per_hour\": 1, \"max_weight_kg\": 300}]
}" > /dev/null
as_planner grid --prefix "$pool"

step "Checkout reserves two deliveries"
as_checkout reserve "$pool" order-1 '{"slot": "08-10", "stops": 1, "weight_kg": 20}' > /dev/null
as_checkout reserve "$pool" order-2 '{"slot": "08-10", "stops": 1, "weight_kg": 35}' > /dev/null
as_checkout reservation "$pool" order-1 | grep '"status"'

step "A retry with the same reservation id books nothing twice"
as_checkout reserve "$pool" order-2 '{"slot": "08-10", "stops": 1, "weight_kg": 35}' | grep '"seq_nr"'

step "The slot is full: a third order is refused (409 slot_full)"
if as_checkout reserve "$pool" order-3 '{"slot": "08-10", "stops": 1, "weight_kg": 10}'; then
    echo "order-3 should have been refused" >&2
    exit 1
fi

step "A customer cancels: releasing order-1 frees its stop, and order-3 fits"
as_checkout release "$pool" order-1 > /dev/null
as_checkout reserve "$pool" order-3 '{"slot": "08-10", "stops": 1, "weight_kg": 10}' > /dev/null
as_planner grid --prefix "$pool"

step "Checkout may not change capacity (403)"
if as_checkout command "$pool" add_van '{}'; then
    echo "checkout should not be able to add a van" >&2
    exit 1
fi

step "The planner adds a second van: the slot grows to 6 stops"
as_planner command "$pool" add_van --key add-van-2 '{"van": {"id": "van-2",
  "shift_start": "08:00", "shift_end": "10:00", "stops_per_hour": 2, "max_weight_kg": 500}}' > /dev/null
as_checkout reserve "$pool" order-4 '{"slot": "08-10", "stops": 1, "weight_kg": 15}' > /dev/null
as_planner grid --prefix "$pool"

step "The audit trail: every event, who caused it, which plugin decided"
as_planner pools history "$pool" | grep -E '"(seq_nr|actor|type)"' | paste - - - | sed 's/  */ /g'

step "Time travel: the pool as it was after its second event"
as_planner pools state "$pool" --seq 2 | grep -E '"(key|used|free|seq_nr)"'

printf '\nScenario done: pool %s\n' "$pool"
