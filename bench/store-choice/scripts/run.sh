#!/usr/bin/env bash
# Runs every measurement of the store-choice harness 3 times and appends one
# `RESULT ... rep=R` line per run to $OUT (default results/raw.txt).
# The commit step honours COMMIT_AGENTS, BATCHES and BACKENDS (space-separated).
# Data directories live under $DATA (default /tmp/store-choice-data) and are
# deleted at the end.
#
# Usage: scripts/run.sh [all|commit|fill|churn|crash|build]...   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=$PWD
OUT=${OUT:-$HERE/results/raw.txt}
DATA=${DATA:-/tmp/store-choice-data}
REPS=${REPS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
COMMIT_AGENTS=${COMMIT_AGENTS:-100000}
BIN=$HERE/target/release/store-choice
mkdir -p "$(dirname "$OUT")" "$DATA"
trap 'rm -rf "$DATA"' EXIT

log() { echo "[$(date +%T)] $*" >&2; }
emit() { sed -n "s/^RESULT /RESULT rep=$1 /p" | tee -a "$OUT"; }

build() { cargo build --release --offline -q; }

run_commit() {
  build
  for rep in $(seq 1 "$REPS"); do
    for k in ${BATCHES:-1 100 1000 10000}; do
      for be in ${BACKENDS:-redb redb-qr sqlite-full sqlite-normal}; do
        log "commit rep=$rep K=$k $be"
        "$BIN" commit --backend "$be" --agents "$COMMIT_AGENTS" --batch "$k" \
          --seconds "$SECONDS_PER_RUN" --seed "$rep" --dir "$DATA/commit-$be" | emit "$rep"
        rm -rf "$DATA/commit-$be"
      done
    done
  done
}

run_fill() {
  build
  for n in 100000 1000000; do
    for be in redb redb-qr sqlite-full; do
      d="$DATA/fill-$be-$n"
      for rep in $(seq 1 "$REPS"); do
        log "fill N=$n $be rep=$rep"
        "$BIN" fill --backend "$be" --agents "$n" --dir "$d" | emit "$rep"
      done
      for rep in $(seq 1 "$REPS"); do
        log "load warm N=$n $be rep=$rep"
        "$BIN" load --backend "$be" --agents "$n" --dir "$d" | sed 's/mode=load/mode=load cache=warm/' | emit "$rep"
      done
      for rep in $(seq 1 "$REPS"); do
        log "load cold N=$n $be rep=$rep"
        python3 scripts/evict.py "$d"
        "$BIN" load --backend "$be" --agents "$n" --dir "$d" | sed 's/mode=load/mode=load cache=cold/' | emit "$rep"
      done
      rm -rf "$d"
    done
  done
}

# Steady-state size: pre-fill N, churn with K = 1000 group commits for 10 s,
# close cleanly (SQLite: checkpoint), report bytes on disk per agent.
run_churn() {
  build
  for n in 100000 1000000; do
    for rep in $(seq 1 "$REPS"); do
      for be in redb sqlite-full; do
        log "churn N=$n $be rep=$rep"
        "$BIN" commit --backend "$be" --agents "$n" --batch 1000 --seconds 10 --seed "$rep" \
          --dir "$DATA/churn-$be" | sed 's/mode=commit/mode=churn/' | emit "$rep"
        rm -rf "$DATA/churn-$be"
      done
    done
  done
}

# Start-up after kill -9: a writer commits K=100 batches (plus a marker record
# holding the commit number) for 3 s and is SIGKILLed; then the DB is opened
# and fully loaded (this includes any crash repair), and the marker must be
# >= the last commit the writer acknowledged on stdout.
run_crash() {
  build
  local n=${CRASH_AGENTS:-1000000}
  for be in redb redb-qr sqlite-full sqlite-normal; do
    d="$DATA/crash-$be"
    "$BIN" fill --backend "$be" --agents "$n" --dir "$d" >/dev/null
    for rep in $(seq 1 "$REPS"); do
      log "crash N=$n $be rep=$rep"
      "$BIN" crashwrite --backend "$be" --agents "$n" --batch 100 --seed "$rep" --dir "$d" >"$DATA/acks" &
      pid=$!
      sleep 3
      kill -9 "$pid"
      wait "$pid" 2>/dev/null || true
      acked=$(tail -n 1 "$DATA/acks" | awk '{print $2}')
      line=$("$BIN" load --backend "$be" --agents "$n" --dir "$d")
      marker=$(sed -n 's/.* marker=\([0-9a-z]*\).*/\1/p' <<<"$line")
      ok=no; [[ "$marker" =~ ^[0-9]+$ && "$marker" -ge "$acked" ]] && ok=yes
      echo "$line" | sed "s/mode=load/mode=crashload acked=$acked durable_ok=$ok/" | emit "$rep"
    done
    rm -rf "$d" "$DATA/acks"
  done
}

# Clean release build of the harness with only one backend feature, in a fresh
# target dir each time (deps already downloaded; --offline so no index update).
run_build() {
  for rep in $(seq 1 "$REPS"); do
    for feat in none redb sqlite; do
      t="$DATA/target-$feat"
      rm -rf "$t"
      if [ "$feat" = none ]; then f=(--no-default-features); else f=(--no-default-features --features "$feat"); fi
      log "build $feat rep=$rep"
      s=$(date +%s.%N)
      CARGO_TARGET_DIR="$t" cargo build --release --offline -q "${f[@]}"
      e=$(date +%s.%N)
      echo "RESULT mode=build features=$feat secs=$(echo "$e - $s" | bc)" | emit "$rep"
      rm -rf "$t"
    done
  done
}

what=("$@"); [ ${#what[@]} -eq 0 ] && what=(all)
for w in "${what[@]}"; do
  case $w in
    all) run_commit; run_fill; run_churn; run_crash; run_build ;;
    commit) run_commit ;;
    fill) run_fill ;;
    churn) run_churn ;;
    crash) run_crash ;;
    build) run_build ;;
    *) echo "unknown step $w" >&2; exit 2 ;;
  esac
done
