#!/usr/bin/env python3
"""Fit + forecast time of ymera's MSTL + AutoETS against statsforecast's MSTL + AutoETS
(the Python peer, named as such) on the same generated series, in the same run.

Usage: bench/forecast_vs_statsforecast.py [--series 1000] [--days 7] [--ymera PATH]

The series: 5-minute load with a daily cycle (weekday/weekend levels), a slow trend,
noise and occasional spikes, from a fixed seed (numpy default_rng(7)). Written in the NAB
CSV layout to a temporary directory; ymera times `ymera bench --forecast DIR` (one
thread, fit + 1-day forecast per series, I/O excluded); statsforecast fits
MSTL(season_length=288, trend_forecaster=AutoETS(model="ZZN")) per series with n_jobs=1
and forecasts 288 steps (I/O excluded).
"""
import argparse, os, subprocess, sys, tempfile, time

import numpy as np
import pandas as pd


def generate(n, days, seed=7):
    rng = np.random.default_rng(seed)
    steps = days * 288
    t = np.arange(steps)
    start = pd.Timestamp("2026-11-01")
    stamps = start + pd.to_timedelta(t * 300, unit="s")
    out = []
    for i in range(n):
        base = rng.lognormal(4.5, 0.8)
        amp = rng.uniform(0.2, 0.7)
        phase = rng.uniform(0, 2 * np.pi)
        daily = 1 + amp * np.sin(2 * np.pi * t / 288 + phase)
        weekday = np.where(((t // 288) % 7) >= 5, rng.uniform(0.5, 0.9), 1.0)
        trend = 1 + rng.uniform(-0.002, 0.004) * t / 288
        noise = rng.normal(0, rng.uniform(0.03, 0.15), steps)
        y = base * daily * weekday * trend * (1 + noise)
        spikes = rng.random(steps) < 0.002
        y[spikes] *= rng.uniform(1.5, 3.0, spikes.sum())
        out.append(np.maximum(y, 0.0))
    return stamps, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--ymera", default=os.environ.get("YMERA", "target/release/ymera"))
    a = ap.parse_args()
    stamps, series = generate(a.series, a.days)
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(f"{d}/data")
        ts = stamps.strftime("%Y-%m-%d %H:%M:%S")
        for i, y in enumerate(series):
            pd.DataFrame({"timestamp": ts, "value": y}).to_csv(f"{d}/data/s{i:04}.csv", index=False)
        t0 = time.perf_counter()
        out = subprocess.run([a.ymera, "bench", "--forecast", d], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            sys.exit(f"ymera failed: {out.stderr}")
        print(f"ymera:         {out.stdout.strip()} (process wall incl. reading CSVs {wall:.2f} s)")

    from statsforecast import StatsForecast
    from statsforecast.models import MSTL, AutoETS

    frames = [pd.DataFrame({"unique_id": f"s{i:04}", "ds": stamps, "y": y}) for i, y in enumerate(series)]
    df = pd.concat(frames, ignore_index=True)
    sf = StatsForecast(models=[MSTL(season_length=288, trend_forecaster=AutoETS(model="ZZN"))], freq="5min", n_jobs=1)
    # warm-up: numba compiles on first use; not counted
    StatsForecast(models=[MSTL(season_length=288, trend_forecaster=AutoETS(model="ZZN"))], freq="5min", n_jobs=1).forecast(
        df=frames[0], h=288)
    t0 = time.perf_counter()
    fc = sf.forecast(df=df, h=288)
    secs = time.perf_counter() - t0
    print(f"statsforecast: MSTL(288)+AutoETS(ZZN) fit + 1-day forecast of {len(series)} series: {secs:.2f} s, "
          f"{secs * 1000 / len(series):.1f} ms per series; p50 checksum {fc['MSTL'].sum():.3f}")


if __name__ == "__main__":
    main()
