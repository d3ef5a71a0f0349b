#!/usr/bin/env python3
"""`just reproduce-all`: every small-scale experiment of the four papers, one after the other,
then docs/RESULTS.md from the claims each sweep's report computed (`claims.json`).

usage: python scripts/reproduce_all.py [--smoke] [--collect-only] [--state DIR] [--results FILE]

- Resumable: runs/reproduce-all/state.json records each experiment's sweep folder as soon as it
  starts and whether it finished. Run again after an interruption (Ctrl-C): finished experiments
  are skipped, a half-finished one resumes from its checkpoints (`runner run --resume`).
- One progress line per experiment, and a status line every 30 s: which one, its elapsed time,
  the expected remaining time (the specs' `expected_minutes`).
- Experiments that have no implementation in this build yet are listed as such, not run.
- --smoke runs every experiment's --smoke budget (state in runs/reproduce-all-smoke, results
  written to that folder) to test this script; --collect-only rewrites the results page from
  the state file without running anything.
- Anything on the results page after a line `<!-- end of the generated part -->` is kept.
- Without --smoke or --results, the README's block between the `reproduce-all` markers gets
  the verdicts and wall times too, with the date and machine.
"""
import argparse
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
# REPRISE_RUNNER replaces the runner (scripts/test_reproduce_all.py gives it a stand-in).
RUNNER = os.environ.get("REPRISE_RUNNER") or os.path.join(ROOT, "target", "release", "runner")
# Hand-written sections of the results page after this line are kept when it is rewritten.
KEEP_MARKER = "<!-- end of the generated part -->"
EXPERIMENTS = [
    "jem/digits-calibration",
    "jem/mnist-small",
    "robust-transfer/mnist-eps-sweep",
    "deepthin/mnist-mlp-depth",
    "deepthin/mnist-residual",
    "deepthin/sort-transformer",
    "tsit/digits-ast",
    "tsit/scenes-sis",
    "tsit/scenes-ast",
]
PAPERS = {
    "jem": ("Your Classifier is Secretly an Energy Based Model (ICLR 2020)", "docs/jem.md"),
    "robust-transfer": ("Do Adversarially Robust ImageNet Models Transfer Better? (NeurIPS 2020)", "docs/robust-transfer.md"),
    "deepthin": ("Go Wide, Then Narrow: Efficient Training of Deep Thin Networks (ICML 2020)", "docs/deepthin.md"),
    "tsit": ("TSIT: A Simple and Versatile Framework for Image-to-Image Translation (ECCV 2020)", "docs/tsit.md"),
}


def fmt(secs):
    secs = int(round(secs))
    h, m, s = secs // 3600, secs // 60 % 60, secs % 60
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def available():
    """Experiment name -> expected minutes, for the specs this build can run."""
    out = subprocess.run([RUNNER, "list"], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        if not parts:
            continue
        minutes = next((float(p) for p in parts[1:] if re.fullmatch(r"[0-9.]+", p)), None)
        found[parts[0]] = minutes
    return found


def load_state(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def save_state(path, state):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=2)
    os.replace(tmp, path)


def run_one(exp, entry, state, state_path, log_path, smoke, i, n, expected, t_all, remaining_after):
    """Runs or resumes one experiment; returns the runner's exit code."""
    if entry.get("dir") and os.path.isdir(entry["dir"]):
        cmd = [RUNNER, "run", "--resume", entry["dir"], "--jobs", "2"]
        how = "resuming " + entry["dir"]
    else:
        cmd = [RUNNER, "run", exp, "--jobs", "2"] + (["--smoke"] if smoke else [])
        how = "starting"
    print(f"[{i}/{n}] {exp}: {how} (expected {expected:.0f} min)", flush=True)
    t0 = time.time()
    last = t0
    with open(log_path, "a") as log:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             bufsize=1)
        try:
            for line in p.stdout:
                log.write(line)
                m = re.match(r"(?:sweep|run): (\S+)", line)
                if m and not entry.get("dir"):
                    entry["dir"] = os.path.join(ROOT, m.group(1)) if not os.path.isabs(m.group(1)) else m.group(1)
                    save_state(state_path, state)
                now = time.time()
                if now - last >= 30:
                    last = now
                    done = now - t0
                    rest = max(expected * 60 - done, 0) + remaining_after
                    print(f"[{i}/{n}] {exp}: {fmt(done)} elapsed; all: {fmt(now - t_all)} elapsed, "
                          f"about {fmt(rest)} to go", flush=True)
            rc = p.wait()
        except KeyboardInterrupt:
            # Pass the interruption on (a terminal's Ctrl-C reaches the runner too): it writes a
            # checkpoint and exits; wait for it.
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
            rc = p.wait()
            entry["seconds"] = entry.get("seconds", 0.0) + time.time() - t0
            save_state(state_path, state)
            raise
    entry["seconds"] = entry.get("seconds", 0.0) + time.time() - t0
    entry["done"] = rc == 0
    entry["rc"] = rc
    save_state(state_path, state)
    return rc


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs"


def write_results(state, path, avail, note):
    lines = [
        "# Results: does it reproduce?",
        "",
        "Every small-scale experiment of the four papers, the claims it tests, the paper's number (verified or",
        "unverified, as in the specifications) beside ours, and the verdict each paper's code computes from the",
        "runs (`claims.json` of each sweep). Written by `scripts/reproduce_all.py` (`just reproduce-all`).",
        "",
        note,
        "",
        "## Verdicts",
        "",
        "| paper | experiment | verdict | wall time (2 cores, `--jobs 2`) | report |",
        "|---|---|---|---|---|",
    ]
    rows, headline = [], []
    for exp in EXPERIMENTS:
        paper = exp.split("/")[0]
        title, doc = PAPERS[paper]
        e = state.get(exp, {})
        claims = None
        if e.get("done") and e.get("dir"):
            try:
                with open(os.path.join(e["dir"], "claims.json")) as f:
                    claims = json.load(f)
            except (OSError, ValueError):
                pass
        if exp not in avail:
            verdict, wall = "not implemented yet", "—"
        elif claims is None:
            verdict, wall = "not run (or unfinished)", fmt(e["seconds"]) if e.get("seconds") else "—"
        else:
            verdict, wall = claims["verdict"], fmt(e.get("seconds", 0))
        link = f"[{paper}]({os.path.relpath(os.path.join(ROOT, doc), os.path.dirname(path))})" if doc else "—"
        lines.append(f"| {title} | `{exp}` | {verdict} | {wall} | {link} |")
        headline.append((exp, verdict, wall))
        if claims:
            for c in claims["claims"]:
                rows.append((paper, exp, c))
    lines += ["", "## Claims", "",
              "| paper | experiment | claim | what | paper's number | ours (small scale) | verdict |",
              "|---|---|---|---|---|---|---|"]
    for paper, exp, c in rows:
        role = "" if c.get("gating", True) else " (reported, not gating)"
        cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {paper} | `{exp}` | {c['claim']} | {cell(c['what'])} | {cell(c['paper'])} | "
                     f"{cell(c['ours'])} | {c['verdict']}{role} |")
    total = sum(state.get(x, {}).get("seconds", 0) for x in EXPERIMENTS)
    lines += ["", f"Total wall time of the experiments above: {fmt(total)}.", ""]
    kept = ""
    try:
        with open(path) as f:
            old = f.read()
        if KEEP_MARKER in old:
            kept = KEEP_MARKER + old.split(KEEP_MARKER, 1)[1]
    except OSError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + kept)
    print("wrote", os.path.relpath(path, ROOT))
    return headline, total


README_START = "<!-- reproduce-all: start -->"
README_END = "<!-- reproduce-all: end -->"


def update_readme(readme, headline, total, note, results):
    """Rewrites the README's block between the reproduce-all markers: the verdict of every
    experiment and its wall time, the date and machine, a link to the results page."""
    try:
        with open(readme) as f:
            text = f.read()
    except OSError:
        return
    a, b = text.find(README_START), text.find(README_END)
    if a < 0 or b < a:
        print(f"{os.path.relpath(readme, ROOT)} has no {README_START} block; not updated")
        return
    rel = os.path.relpath(results, os.path.dirname(readme))
    block = [README_START, "", f"{note} Every claim with the paper's number beside ours: [{rel}]({rel}).", "",
             "| experiment | verdict | wall time |", "|---|---|---|"]
    block += [f"| `{exp}` | {verdict} | {wall} |" for exp, verdict, wall in headline]
    block += ["", f"Experiments' wall time in all: {fmt(total)} (`just reproduce-all`).", "", README_END]
    with open(readme, "w") as f:
        f.write(text[:a] + "\n".join(block) + text[b + len(README_END):])
    print("updated", os.path.relpath(readme, ROOT))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--collect-only", action="store_true")
    ap.add_argument("--state", default=None)
    ap.add_argument("--results", default=None)
    ap.add_argument("--note", default=None, help="replaces the 'Measured <date> on <machine>' line")
    a = ap.parse_args()
    sdir = a.state or os.path.join(ROOT, "runs", "reproduce-all-smoke" if a.smoke else "reproduce-all")
    os.makedirs(sdir, exist_ok=True)
    state_path = os.path.join(sdir, "state.json")
    results = a.results or (os.path.join(sdir, "RESULTS.md") if a.smoke else os.path.join(ROOT, "docs", "RESULTS.md"))
    state = load_state(state_path)
    avail = available()
    todo = [x for x in EXPERIMENTS if x in avail]
    for x in EXPERIMENTS:
        if x not in avail:
            print(f"{x}: not implemented in this build yet, skipped")
    t_all = time.time()
    if not a.collect_only:
        for i, exp in enumerate(todo, 1):
            entry = state.setdefault(exp, {})
            if entry.get("done") and entry.get("dir") and os.path.isdir(entry["dir"]):
                print(f"[{i}/{len(todo)}] {exp}: done before ({fmt(entry.get('seconds', 0))}), skipped", flush=True)
                continue
            expected = 0.5 if a.smoke else (avail.get(exp) or 10)
            after = sum(0.5 if a.smoke else (avail.get(x) or 10) for x in todo[i:]
                        if not state.get(x, {}).get("done")) * 60
            log_path = os.path.join(sdir, exp.replace("/", "_") + ".log")
            try:
                rc = run_one(exp, entry, state, state_path, log_path, a.smoke, i, len(todo), expected, t_all, after)
            except KeyboardInterrupt:
                print(f"\ninterrupted during {exp}; run `just reproduce-all` again to continue "
                      f"(finished experiments are kept)", file=sys.stderr)
                sys.exit(130)
            print(f"[{i}/{len(todo)}] {exp}: {'finished' if rc == 0 else f'FAILED (exit {rc}; see {log_path})'} "
                  f"in {fmt(entry['seconds'])}", flush=True)
            if rc == 130:
                sys.exit(130)
    measured = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    note = a.smoke and "> **Smoke run**: every experiment's `--smoke` budget; the numbers test the plumbing only." or \
        f"Measured {measured} on {machine()}."
    headline, total = write_results(state, results, avail, a.note or note)
    if not a.smoke and a.results is None:
        update_readme(os.path.join(ROOT, "README.md"), headline, total, a.note or note, results)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    main()
