#!/usr/bin/env python3
"""Single-row risk predictions over HTTP: ymera serve vs a FastAPI + scikit-learn service
trained on the same rows, each loaded at the same fixed request rate by oha; plus the risk
AUC of scikit-learn's LogisticRegression and RandomForestClassifier on ymera's time split.

Prerequisites (the script installs the Python ones from PyPI when missing):
  * a lake with project events and a trained, promoted `risk` model, and `ymera serve`
    running with an agent key:  see the closing note of issue 4 for the exact commands;
  * the feature rows:  ymera sql --format csv < <(the risk spec's query) > risk_rows.csv
  * oha (`cargo install oha --locked`).

Usage:
  python3 bench/predict_vs_fastapi.py --rows risk_rows.csv --ymera http://127.0.0.1:8080 \
      --token "$AGENT_KEY" --manifest risk_manifest.json --rate 500 --duration 20s
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def need(*mods):
    missing = []
    for m in mods:
        try:
            __import__(m)
        except ImportError:
            missing.append(m)
    if missing:
        pip = {"sklearn": "scikit-learn"}
        subprocess.check_call(
            [sys.executable, "-m", "pip", "install", "-q"] + [pip.get(m, m) for m in missing]
        )


need("fastapi", "uvicorn", "sklearn", "pandas")

import pandas as pd  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

FEATURES = ["burn_rate", "schedule_slip", "scope_changes", "churn", "team_size"]
LABEL = "missed_deadline"

APP = r'''
import pickle, sys
import numpy as np
from fastapi import FastAPI, HTTPException, Request
model = pickle.load(open(sys.argv[-1] if False else "{model}", "rb"))
FEATURES = {features!r}
app = FastAPI()

@app.post("/v1/models/risk:predict")
async def predict(request: Request):
    body = await request.json()
    rows = []
    for i, inst in enumerate(body.get("instances", [])):
        missing = [f for f in FEATURES if f not in inst]
        if missing:
            raise HTTPException(400, f"instances[{{i}}]: missing feature {{missing[0]}}")
        rows.append([float(inst[f]) for f in FEATURES])
    p = model.predict_proba(np.array(rows))[:, 1]
    return {{"predictions": [{{"probability": float(x), "label": bool(x >= 0.5)}} for x in p],
            "model_version": "sklearn"}}
'''


def time_split(df, holdout=0.2):
    """ymera's split: newest `holdout` share held out, equal times kept on one side."""
    df = df.sort_values("observed_at", kind="stable").reset_index(drop=True)
    n = len(df)
    at = n - min(n, int(-(-n * holdout // 1)))
    while 0 < at < n and df.observed_at[at - 1] == df.observed_at[at]:
        at -= 1
    return df.iloc[:at], df.iloc[at:]


def oha(url, token, body, rate, duration):
    cmd = [
        "oha", "--no-tui", "--output-format", "json", "-z", duration, "-q", str(rate),
        "-c", "32", "-m", "POST", "-T", "application/json", "-d", body, url,
    ]
    if token:
        cmd[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    s = r["summary"]
    lat = r.get("latencyPercentiles", {})
    codes = r.get("statusCodeDistribution", {})
    return {
        "requests_per_s": round(s["requestsPerSec"], 1),
        "success_rate": s["successRate"],
        "p50_ms": round(lat.get("p50", 0) * 1000, 3),
        "p99_ms": round(lat.get("p99", 0) * 1000, 3),
        "status": codes,
    }


WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
%s
"""


def to_ms(text):
    for unit, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return round(float(text[: -len(unit)]) * f, 3)
    return float(text)


def wrk(url, token, body, connections, duration):
    """Closed loop at a fixed concurrency (wrk has no fixed-rate mode): req/s and latency."""
    auth = f'wrk.headers["Authorization"] = "Bearer {token}"' if token else ""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA % (body, auth))
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", duration, "--latency", "-s", f.name, url],
        capture_output=True, text=True, check=True,
    ).stdout
    r = {"connections": connections}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            r["requests_per_s"] = float(parts[1])
        elif len(parts) == 2 and parts[0] in ("50%", "90%", "99%"):
            r["p" + parts[0].rstrip("%") + "_ms"] = to_ms(parts[1])
        elif "Non-2xx" in line:
            r["non_2xx"] = int(parts[-1])
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", required=True, help="CSV of the risk spec's query")
    ap.add_argument("--ymera", default="http://127.0.0.1:8080")
    ap.add_argument("--token", default=os.environ.get("YMERA_TOKEN"))
    ap.add_argument("--manifest", help="`ymera models show risk` output (for ymera's AUC)")
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--duration", default="20s")
    ap.add_argument("--port", type=int, default=8099)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tool", choices=["oha", "wrk"], default="oha" if shutil.which("oha") else "wrk")
    ap.add_argument("--connections", type=int, default=16, help="wrk's fixed concurrency")
    a = ap.parse_args()

    df = pd.read_csv(a.rows).dropna(subset=FEATURES + [LABEL])
    df[LABEL] = df[LABEL].astype(str).str.lower().isin(["true", "1"]).astype(int)
    train, hold = time_split(df)
    result = {"rows": len(df), "train_rows": len(train), "holdout_rows": len(hold)}
    t0 = time.perf_counter()
    # fitted on arrays, as the service is called with arrays (no per-request feature-name warning)
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
        train[FEATURES].to_numpy(), train[LABEL]
    )
    result["sklearn_logistic_fit_s"] = round(time.perf_counter() - t0, 4)
    t0 = time.perf_counter()
    rf = RandomForestClassifier(n_estimators=200, min_samples_leaf=5, random_state=42, n_jobs=1)
    rf.fit(train[FEATURES], train[LABEL])
    result["sklearn_random_forest_fit_s"] = round(time.perf_counter() - t0, 4)
    result["auc_sklearn_logistic"] = round(
        roc_auc_score(hold[LABEL], lr.predict_proba(hold[FEATURES].to_numpy())[:, 1]), 4
    )
    result["auc_sklearn_random_forest"] = round(roc_auc_score(hold[LABEL], rf.predict_proba(hold[FEATURES])[:, 1]), 4)
    if a.manifest:
        m = json.load(open(a.manifest))
        result["auc_ymera"] = round(m["metrics"]["auc"], 4)
        result["ymera_fit_s"] = round(m["fit_seconds"], 4)
        result["ymera_holdout_rows"] = m["lineage"]["holdout_rows"]

    # the FastAPI + scikit-learn peer serves the logistic model (the same kind as ymera's)
    import pickle
    work = tempfile.mkdtemp()
    pickle.dump(lr, open(f"{work}/model.pkl", "wb"))
    with open(f"{work}/app.py", "w") as f:
        f.write(APP.format(model=f"{work}/model.pkl", features=FEATURES))
    peer = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--port", str(a.port), "--workers",
         str(a.workers), "--log-level", "warning"],
        cwd=work,
    )
    try:
        body = json.dumps({"instances": [dict(zip(FEATURES, [1.05, 0.03, 2, 1, 8]))]})
        for _ in range(100):
            try:
                subprocess.run(["curl", "-sf", "-X", "POST", "-H", "Content-Type: application/json",
                                "-d", body, f"http://127.0.0.1:{a.port}/v1/models/risk:predict"],
                               check=True, capture_output=True)
                break
            except subprocess.CalledProcessError:
                time.sleep(0.2)
        result["tool"] = a.tool
        peer_url = f"http://127.0.0.1:{a.port}/v1/models/risk:predict"
        ours_url = f"{a.ymera}/v1/models/risk:predict"
        if a.tool == "oha":
            result["ymera"] = oha(ours_url, a.token, body, a.rate, a.duration)
            result["fastapi_sklearn"] = oha(peer_url, None, body, a.rate, a.duration)
        else:
            result["ymera"] = wrk(ours_url, a.token, body, a.connections, a.duration)
            result["fastapi_sklearn"] = wrk(peer_url, None, body, a.connections, a.duration)
    finally:
        peer.send_signal(signal.SIGTERM)
        peer.wait()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
