"""Reference optimizer trajectories from PyTorch, stored as a test fixture.

Run with the venv's PyTorch 2.11: python scripts/make_optim_fixture.py
It writes crates/core/tests/fixtures/optim_reference.json, read by crates/core/tests/optim_reference.rs,
which replays the same problem with reprise's optimizers and compares the parameters to 1e-6.
"""
import json
import math
import os

import torch

torch.set_num_threads(1)


def problem():
    # p0[i, j] = sin(4i + j); a[i, j] = 1 + 0.5 cos(i + 2j); b[i, j] = 0.3 (i - j)
    p0 = torch.tensor([[math.sin(4 * i + j) for j in range(4)] for i in range(3)], dtype=torch.float32)
    q0 = torch.tensor([math.cos(3 * k) for k in range(5)], dtype=torch.float32)
    a = torch.tensor([[1 + 0.5 * math.cos(i + 2 * j) for j in range(4)] for i in range(3)], dtype=torch.float32)
    b = torch.tensor([[0.3 * (i - j) for j in range(4)] for i in range(3)], dtype=torch.float32)
    return p0, q0, a, b


def loss_fn(p, q, a, b):
    # sum((a p - b)^2) + 0.01 sum(p^4) + sum((q - 0.5)^2) + 0.1 (sum p)(sum q)
    return ((a * p - b) ** 2).sum() + 0.01 * (p ** 4).sum() + ((q - 0.5) ** 2).sum() + 0.1 * p.sum() * q.sum()


CASES = [
    {"name": "sgd", "opt": "sgd", "lr": 0.05, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "wd": 0.0},
    {"name": "sgd_momentum", "opt": "sgd", "lr": 0.05, "momentum": 0.9, "dampening": 0.0, "nesterov": False, "wd": 0.0},
    {"name": "sgd_nesterov_wd", "opt": "sgd", "lr": 0.05, "momentum": 0.9, "dampening": 0.0, "nesterov": True, "wd": 1e-3},
    {"name": "sgd_dampening_wd", "opt": "sgd", "lr": 0.05, "momentum": 0.5, "dampening": 0.1, "nesterov": False, "wd": 1e-2},
    {"name": "adam", "opt": "adam", "lr": 0.05, "wd": 0.0},
    {"name": "adam_wd", "opt": "adam", "lr": 0.05, "wd": 1e-2},
    {"name": "adamw", "opt": "adamw", "lr": 0.05, "wd": 1e-2},
    {"name": "adam_betas_eps", "opt": "adam", "lr": 0.02, "wd": 0.0, "betas": [0.5, 0.9], "eps": 1e-3},
    # Two parameter groups (q at a tenth of the rate) and a warm-up of the base rate.
    {"name": "adam_groups_warmup", "opt": "adam", "lr": 0.05, "wd": 0.0, "q_mult": 0.1, "warmup": 5},
]
STEPS = 10


def run(case):
    p0, q0, a, b = problem()
    p = p0.clone().requires_grad_(True)
    q = q0.clone().requires_grad_(True)
    mult = case.get("q_mult", 1.0)
    groups = [{"params": [p], "lr": case["lr"]}, {"params": [q], "lr": case["lr"] * mult}]
    if case["opt"] == "sgd":
        opt = torch.optim.SGD(groups, lr=case["lr"], momentum=case["momentum"], dampening=case["dampening"],
                              nesterov=case["nesterov"], weight_decay=case["wd"])
    else:
        cls = torch.optim.AdamW if case["opt"] == "adamw" else torch.optim.Adam
        opt = cls(groups, lr=case["lr"], betas=tuple(case.get("betas", [0.9, 0.999])), eps=case.get("eps", 1e-8),
                  weight_decay=case["wd"])
    warmup = case.get("warmup", 0)
    for t in range(STEPS):
        base = case["lr"] * (t / warmup if t < warmup else 1.0)
        opt.param_groups[0]["lr"] = base
        opt.param_groups[1]["lr"] = base * mult
        opt.zero_grad()
        loss_fn(p, q, a, b).backward()
        opt.step()
    return {"p": p.detach().flatten().tolist(), "q": q.detach().flatten().tolist()}


def main():
    out = {"torch": torch.__version__, "steps": STEPS, "cases": []}
    for c in CASES:
        r = dict(c)
        r.update(run(c))
        out["cases"].append(r)
    path = os.path.join(os.path.dirname(__file__), "..", "crates", "core", "tests", "fixtures", "optim_reference.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print("wrote", os.path.normpath(path))


if __name__ == "__main__":
    main()
