#!/usr/bin/env bash
# Models benchmark, end to end on a release build:
#   tansu broker → ymera gen (365 days, PROJECTS projects) → pipelines → lake
#   → ymera train (risk, effort, segments: fit times from the manifests)
#   → ymera serve → single-row risk predictions at a fixed rate (oha) vs a FastAPI +
#     scikit-learn service on the same rows (bench/predict_vs_fastapi.py), and risk AUC vs
#     scikit-learn's LogisticRegression and RandomForestClassifier on the same split.
# Usage: bench/models_bench.sh [PROJECTS] [RATE] [DURATION]
# Needs: a release build (cargo build --release -p ymera-cli), tansu and oha on PATH
# (cargo install tansu --locked --features dynostore; cargo install oha --locked).
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECTS="${1:-2000}"
RATE="${2:-1000}"
DURATION="${3:-20s}"
BIN="${YMERA_BIN:-${CARGO_TARGET_DIR:-target}/release/ymera}"
W="$(mktemp -d /tmp/ymera-models-bench.XXXXXX)"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
KPORT=$(port); HPORT=$(port)
tansu broker --listener-url "tcp://127.0.0.1:$KPORT" --advertised-listener-url "tcp://127.0.0.1:$KPORT" \
  --storage-engine memory://tansu/ >"$W/tansu.log" 2>&1 &
TANSU=$!
cleanup() { kill "$TANSU" ${SERVE:-} 2>/dev/null || true; }
trap cleanup EXIT
sleep 2
export YMERA_BROKERS="127.0.0.1:$KPORT"
export YMERA__LAKE__URL="$W/lake" YMERA__WAREHOUSE__URL="sqlite://$W/warehouse.db"
export YMERA__WAREHOUSE__MIGRATE_ON_START=true YMERA__LOG__LEVEL=warn
export YMERA__AUTH__ADMIN_KEY_FILE="$W/admin.key" YMERA__SERVE__LISTEN="127.0.0.1:$HPORT"
# the per-key rate limit (default 50/s) would answer most benchmark requests with 429
export YMERA__AUTH__RATE_LIMIT__PER_SECOND=1000000 YMERA__AUTH__RATE_LIMIT__BURST=1000000
"$BIN" gen --brokers "$YMERA_BROKERS" --days 365 --projects "$PROJECTS" --seed 5 --services none
mkdir -p "$W/pipelines"; cp pipelines/project_events.yaml pipelines/task_events.yaml "$W/pipelines/"
YMERA__RUN__LISTEN=127.0.0.1:0 "$BIN" run --stop-when-idle 5s "$W/pipelines"
for m in risk effort segments; do
  /usr/bin/time -f "train $m: %e s wall, %M KiB max RSS" "$BIN" train "models/$m.yaml"
  "$BIN" models promote "$m" 1 || true
done
"$BIN" models show risk/1 > "$W/risk_manifest.json"
for m in risk effort segments; do
  python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[2], 'fit_seconds', m['fit_seconds'], 'rows', m['lineage']['rows'], m['metrics'])" \
    <("$BIN" models show "$m/1") "$m"
done
sed -n '/query: |/,/time:/p' models/risk.yaml | sed '1d;$d' > "$W/risk.sql"
"$BIN" sql --format csv < "$W/risk.sql" > "$W/risk_rows.csv"
YMERA__LOG__LEVEL=warn "$BIN" serve 2>"$W/serve.log" &
SERVE=$!
for _ in $(seq 1 100); do curl -sf "127.0.0.1:$HPORT/health/ready" >/dev/null && break; sleep 0.2; done
AGENT=$("$BIN" keys create --role agent 2>/dev/null)
python3 bench/predict_vs_fastapi.py --rows "$W/risk_rows.csv" --ymera "http://127.0.0.1:$HPORT" \
  --token "$AGENT" --manifest "$W/risk_manifest.json" --rate "$RATE" --duration "$DURATION" ${BENCH_ARGS:-}
echo "work dir: $W"
