"""Fit `--strength auto` (inference/adaptive.py) to a sweep made by strength_sweep.py.

Finds the StrengthRule constants that maximize the mean Y PSNR over every (image, degradation) of
the sweep, the PSNR at a strength read off the sweep's grid by linear interpolation. Prints the
rule, its mean PSNR beside the fixed strengths and the per-image oracle, the same by degradation,
and a leave-one-folder-out check (fit without a folder, score on it).

  PYTHONPATH=. python benchmarks/fit_strength_rule.py training_logs/photo-x4/strength_sweep.jsonl
"""
from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict

import numpy as np
from scipy.optimize import minimize

from superres.inference.adaptive import StrengthRule


def load(path: str):
    rows = [json.loads(line) for line in open(path)]
    grid = sorted({float(k) for r in rows for k in r["psnr"]})
    psnr = np.array([[r["psnr"][f"{s:g}"] for s in grid] for r in rows])
    return rows, np.array(grid), psnr


def features(rows) -> np.ndarray:
    a = [r["analysis"] for r in rows]
    return np.array([[x["noise_sigma"] or 0.0, x["blockiness"], x["detail"] or 0.0] for x in a])


def strengths(rule: StrengthRule, feats: np.ndarray) -> np.ndarray:
    return np.array([rule(n, b, d) for n, b, d in feats])


def score(s: np.ndarray, grid: np.ndarray, psnr: np.ndarray) -> np.ndarray:
    return np.array([np.interp(si, grid, p) for si, p in zip(s, psnr)])


def fit(feats: np.ndarray, grid: np.ndarray, psnr: np.ndarray) -> StrengthRule:
    def loss(c) -> float:
        return -score(strengths(StrengthRule(*c), feats), grid, psnr).mean()
    best = None
    # a coarse grid, then Nelder-Mead from the best few starts (the objective is piecewise flat)
    starts = []
    for bias, nw, bw, dw in itertools.product((-2, -1, 0, 1, 2, 4), (-0.1, 0, 0.1), (0, 2, 5, 10), (-1, -0.5, 0)):
        c = (bias, nw, bw, dw)
        starts.append((loss(c), c))
    starts.sort()
    for _, c in starts[:8]:
        r = minimize(loss, np.array(c, float), method="Nelder-Mead",
                     options={"xatol": 1e-3, "fatol": 1e-5, "maxiter": 600, "initial_simplex": None})
        if best is None or r.fun < best[0]:
            best = (r.fun, r.x)
    return StrengthRule(*[round(float(v), 4) for v in best[1]])


def report(rule, rows, feats, grid, psnr, title):
    s = strengths(rule, feats)
    auto = score(s, grid, psnr)
    oracle = psnr.max(axis=1)
    print(f"{title}: auto {auto.mean():.3f}  light(0) {psnr[:, 0].mean():.3f}  heavy(1) "
          f"{psnr[:, -1].mean():.3f}  oracle {oracle.mean():.3f}  (n={len(rows)})")
    kinds = defaultdict(list)
    for i, r in enumerate(rows):
        kinds[r["kind"]].append(i)
    print("| kind | mean strength | auto | light (0) | heavy (1) | oracle |")
    print("| --- | --- | --- | --- | --- | --- |")
    for k, idx in kinds.items():
        print(f"| {k} | {s[idx].mean():.2f} | {auto[idx].mean():.2f} | {psnr[idx, 0].mean():.2f} | "
              f"{psnr[idx, -1].mean():.2f} | {oracle[idx].mean():.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep")
    a = ap.parse_args()
    rows, grid, psnr = load(a.sweep)
    feats = features(rows)
    rule = fit(feats, grid, psnr)
    print(f"rule: {rule}")
    report(rule, rows, feats, grid, psnr, "all")
    sets = sorted({r["set"] for r in rows})
    print("\nleave one folder out (fit without it, score on it):")
    for held in sets:
        tr = np.array([r["set"] != held for r in rows])
        sub = fit(feats[tr], grid, psnr[tr])
        te = ~tr
        auto = score(strengths(sub, feats[te]), grid, psnr[te])
        full = score(strengths(rule, feats[te]), grid, psnr[te])
        print(f"  {held}: auto {auto.mean():.3f} (rule fit on all: {full.mean():.3f}), light {psnr[te, 0].mean():.3f}, "
              f"heavy {psnr[te, -1].mean():.3f}, oracle {psnr[te].max(axis=1).mean():.3f}  {sub}")


if __name__ == "__main__":
    main()
