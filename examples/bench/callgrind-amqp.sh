#!/usr/bin/env bash
# Instructions per RPC call and per event (callgrind), nameko-rs against raw lapin, on
# both sides: each server in turn under valgrind, driven by the raw client; then each
# client under valgrind, driving the raw server. Deterministic, so it can be measured
# on a busy machine (the broker's own work is not counted).
# Usage: examples/bench/callgrind-amqp.sh BIN BROKER_URI [CALLS]
# (BIN: target/release/example-bench; needs valgrind; RUST_LOG applies; the queues of
# the `bench` service are used, so nothing else may run it on that vhost meanwhile;
# the exchange `cg-rpc-<pid>` and those queues stay: use a throwaway vhost).
set -u
BIN=$1; URI=$2; N=${3:-2000}
EX="cg-rpc-$$"
ir_of() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}'; }
top_of() { callgrind_annotate --inclusive=no "$1" 2>/dev/null | sed -n '/^-* *$/,$p' | grep -E '^ *[0-9,]+ ' | head -${TOP:-25}; }

server() { # name args...   (the server under valgrind, the raw client drives it)
  local name=$1; shift
  valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$name.%p "$BIN" "$@" >/tmp/cg.$name.log 2>&1 &
  local pid=$!
  until "$BIN" raw-client --broker "$URI" --rpc-exchange "$EX" seq 5 10 >/dev/null 2>&1; do sleep 0.5; done
  for scenario in "seq $N 100" "conc $N 64" "events $N 64"; do
    callgrind_control -z $pid >/dev/null
    "$BIN" raw-client --broker "$URI" --rpc-exchange "$EX" $scenario >/dev/null
    callgrind_control -d "${scenario%% *}" $pid >/dev/null
    local f; f=$(ls -t /tmp/cg.$name.$pid.* | head -1)
    local ir; ir=$(ir_of "$f")
    echo "server $name ${scenario%% *}: Ir/op=$(( ir / N ))  file=$f"
  done
  kill -TERM $pid; wait $pid 2>/dev/null
}

client() { # name subcommand   (the client under valgrind against the raw server; the
           # difference between N and 2N operations removes start-up and shutdown)
  local name=$1 command=$2
  for scenario in "seq @ 100" "conc @ 64" "events @ 64"; do
    local irs=()
    for n in $N $(( 2 * N )); do
      local s=${scenario/@/$n}
      valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.client-$name-${s%% *}-$n "$BIN" $command \
        --broker "$URI" --rpc-exchange "$EX" $s >/dev/null 2>&1
      irs+=("$(ir_of /tmp/cg.client-$name-${s%% *}-$n)")
    done
    echo "client $name ${scenario%% *}: Ir/op=$(( (irs[1] - irs[0]) / N ))  file=/tmp/cg.client-$name-${scenario%% *}-$(( 2 * N ))"
  done
}

server nameko run bench --broker "$URI" --define rpc_exchange=$EX --define WEB_SERVER_ADDRESS=127.0.0.1:0
server raw raw-server --broker "$URI" --rpc-exchange "$EX"
"$BIN" raw-server --broker "$URI" --rpc-exchange "$EX" >/tmp/cg.raw-server.log 2>&1 &
RAW=$!
until "$BIN" raw-client --broker "$URI" --rpc-exchange "$EX" seq 5 10 >/dev/null 2>&1; do sleep 0.2; done
client nameko client
client raw raw-client
kill -TERM $RAW; wait $RAW 2>/dev/null
