#!/usr/bin/env bash
# Instructions per HTTP request (callgrind), ours vs bare axum: deterministic, so it can
# be measured on a busy machine. Usage: examples/bench/callgrind.sh BIN [SECONDS]
# (BIN: target/release/example-bench; needs valgrind, wrk, curl; RUST_LOG applies).
set -u
BIN=$1; SECS=${2:-10}
measure() { # name port args...
  local name=$1 port=$2; shift 2
  valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$name.%p "$BIN" "$@" >/tmp/cg.$name.log 2>&1 &
  local pid=$!
  for _ in $(seq 1 300); do curl -s -o /dev/null "http://127.0.0.1:$port/echo/x" && break; sleep 0.2; done
  callgrind_control -z $pid >/dev/null
  local out; out=$(wrk -t1 -c8 -d${SECS}s "http://127.0.0.1:$port/echo/x")
  local reqs; reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  callgrind_control -d $pid >/dev/null
  sleep 1
  kill -INT $pid; sleep 2; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  local f; f=$(ls -t /tmp/cg.$name.$pid.* 2>/dev/null | head -1)
  local ir; ir=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
  echo "$name requests=$reqs Ir=$ir Ir/req=$(( ir / reqs ))  file=$f"
}
measure ours 18080 run bench --transport memory -d WEB_SERVER_ADDRESS=127.0.0.1:18080
measure axum 18081 raw-http --address 127.0.0.1:18081
