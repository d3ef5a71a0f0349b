#!/usr/bin/env python3
"""`just reproduce-all`: every small-scale experiment of the four papers, in order, then
docs/RESULTS.md from the claims each sweep's report computed (`claims.json`).

usage: python scripts/reproduce_all.py [--smoke] [--collect-only] [--state DIR] [--results FILE]
                                     [--only EXP,EXP]

- The experiments start in `RUN_ORDER` (a one-run experiment is not last, see there).
- Resumable: runs/reproduce-all/state.json records each experiment's sweep folder as soon as it
  starts and whether it finished. Run again after an interruption (Ctrl-C): finished experiments
  are skipped, a half-finished one resumes from its checkpoints (`runner run --resume`). A
  second Ctrl-C while the runners write their checkpoints is ignored (they would go on alone).
- One progress line per experiment, and a status line every 30 s: which one, its elapsed time,
  the expected remaining time (the specs' `expected_minutes`).
- Each experiment's peak memory: the largest resident set of its runner and the run processes
  the runner waited for (the kernel's `ru_maxrss` of the reaped runner, as `/usr/bin/time -v`
  reports it), the largest over its sittings when it was resumed.
- The experiments share the cores through a pipe of tokens (`runner run --slots`, one token per
  core, each run holding one): the next experiment starts as soon as every run of the running
  one has started, so the cores its last runs leave free are not idle.
- Experiments that have no implementation in this build yet are listed as such, not run.
- --smoke runs every experiment's --smoke budget (state in runs/reproduce-all-smoke, results
  written to that folder) to test this script; --collect-only rewrites the results page from
  the state file without running anything; --only runs some of the experiments (state and
  results page in runs/reproduce-all-only unless --state and --results say).
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
import stat
import subprocess
import sys
import threading
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
# REPRISE_RUNNER replaces the runner (scripts/test_reproduce_all.py gives it a stand-in).
RUNNER = os.environ.get("REPRISE_RUNNER") or os.path.join(ROOT, "target", "release", "runner")
# Hand-written sections of the results page after this line are kept when it is rewritten.
KEEP_MARKER = "<!-- end of the generated part -->"
# Cores shared by the experiments' runs (one token each in the slots pipe) and runs per sweep.
CORES = os.cpu_count() or 2
# Guards the state file: the threads reading the runners' output record sweep folders in it.
STATE_LOCK = threading.Lock()
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
# The order they are started in: the results page's, except that the one-run `tsit/scenes-ast`
# goes before `tsit/scenes-sis`. Last, it would start on the one core scenes-sis's final run
# leaves free and keep that one thread to the end, the other core idle (5.2 of 6.8 idle
# core-minutes of the 2026-12-02 run); in the middle, the next sweep's runs take that core.
RUN_ORDER = EXPERIMENTS[:-2] + ["tsit/scenes-ast", "tsit/scenes-sis"]
assert sorted(RUN_ORDER) == sorted(EXPERIMENTS)
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


def fmt_rss(mb):
    """Peak memory in GB (— when it was not measured)."""
    return f"{mb / 1024:.2f} GB" if mb else "—"


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


class Job:
    """One experiment's runner process: its output goes to the experiment's log, and what the
    output says (the sweep or run folder, that every run has started) is noted as it comes."""

    def __init__(self, exp, entry, state, state_path, log_path, smoke, slots, i, n, expected):
        self.exp, self.entry, self.i, self.n, self.expected = exp, entry, i, n, expected
        self.state, self.state_path, self.log_path = state, state_path, log_path
        if entry.get("dir") and os.path.isdir(entry["dir"]):
            cmd = [RUNNER, "run", "--resume", entry["dir"]]
            how = "resuming " + entry["dir"]
        else:
            cmd = [RUNNER, "run", exp] + (["--smoke"] if smoke else [])
            how = "starting"
        cmd += ["--jobs", str(CORES), "--slots", slots]
        print(f"[{i}/{n}] {exp}: {how} (expected {expected:.0f} min)", flush=True)
        # Every run started: the next experiment may take the cores its last runs leave free.
        self.all_started = False
        self.finished = False
        self.maxrss_kb = None  # set when the runner is reaped
        self.t0 = time.time()
        # A session of its own: a terminal's Ctrl-C reaches this script alone, which passes it on
        # once (a second SIGINT would stop the runner before its workers wrote checkpoints).
        self.p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, bufsize=1, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        with open(self.log_path, "a", buffering=1) as log:  # line by line, for `tail -f`
            for line in self.p.stdout:
                log.write(line)
                m = re.match(r"(sweep|run): (\S+)", line)
                if m:
                    d = m.group(2) if os.path.isabs(m.group(2)) else os.path.join(ROOT, m.group(2))
                    if not self.entry.get("dir"):
                        with STATE_LOCK:
                            self.entry["dir"] = d
                            save_state(self.state_path, self.state)
                    if m.group(1) == "run" and os.path.normpath(d) == os.path.normpath(self.entry["dir"]):
                        self.all_started = True  # a single run: it holds its cores now
                elif re.match(r"sweep \S+: every run started", line):
                    self.all_started = True

    def elapsed(self):
        return time.time() - self.t0

    def poll(self):
        """The runner's exit code once it has ended, None before. It is reaped here with wait4,
        which also gives its peak memory (that of the runs it waited for included)."""
        if self.p.returncode is None:
            # Nothing else reaps it (Popen.poll on an already reaped child would say 0: success).
            pid, status, usage = os.wait4(self.p.pid, os.WNOHANG)
            if pid == 0:
                return None
            self.p.returncode = os.waitstatus_to_exitcode(status)
            self.maxrss_kb = usage.ru_maxrss
        return self.p.returncode

    def wait(self):
        while self.poll() is None:
            time.sleep(0.1)
        return self.p.returncode

    def finish(self, rc):
        """Records the exit code and the time this invocation spent on the experiment (once,
        should an interruption come between this and the job's removal from the running ones)."""
        self.reader.join()
        with STATE_LOCK:
            if self.finished:
                return
            self.finished = True
            self.entry["seconds"] = self.entry.get("seconds", 0.0) + self.elapsed()
            if self.maxrss_kb:
                self.entry["peak_rss_mb"] = max(self.entry.get("peak_rss_mb", 0.0), self.maxrss_kb / 1024)
            if rc is not None:
                self.entry["done"] = rc == 0
                self.entry["rc"] = rc
            save_state(self.state_path, self.state)


def make_slots(sdir):
    """The named pipe the runners share cores through (`runner run --slots`), holding one byte
    per core; returns its path and the open end that keeps its contents alive."""
    path = os.path.join(sdir, "slots.fifo")
    if os.path.lexists(path) and not stat.S_ISFIFO(os.lstat(path).st_mode):
        os.remove(path)
    if not os.path.exists(path):
        os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    try:
        while os.read(fd, 4096):  # tokens an earlier, interrupted invocation left
            pass
    except BlockingIOError:
        pass
    os.write(fd, b"+" * CORES)
    return path, fd


def run_all(todo, state, state_path, sdir, smoke, avail):
    """Runs the unfinished experiments of `todo` in order, each as `runner run --jobs CORES
    --slots FIFO`, and starts the next one as soon as every run of the running ones has
    started, so the cores their last runs leave free go to it. Returns the exit code."""
    slots, fd = make_slots(sdir)
    state.setdefault("_wall_seconds", serial_seconds(state))
    budget = lambda x: 0.5 if smoke else (avail.get(x) or 10)  # noqa: E731
    pending = []
    for i, exp in enumerate(todo, 1):
        entry = state.get(exp, {})
        if entry.get("done") and entry.get("dir") and os.path.isdir(entry["dir"]):
            print(f"[{i}/{len(todo)}] {exp}: done before ({fmt(entry.get('seconds', 0))}), skipped", flush=True)
        else:
            pending.append((i, exp))
    jobs, t_all, last = [], time.time(), time.time()

    def stop(names):
        # Pass the interruption on as SIGTERM (which the runner takes as it takes SIGINT, and
        # which a shell never starts a background job ignoring): the runners write checkpoints
        # and exit; wait for them. A second Ctrl-C meanwhile would leave them running unwatched
        # (they are in sessions of their own) and their time unrecorded: it is ignored.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if any(j.poll() is None for j in jobs):
            print("\nstopping: the runners are writing their checkpoints (Ctrl-C again is ignored)",
                  file=sys.stderr, flush=True)
        for j in jobs:
            if j.poll() is None:
                j.p.send_signal(signal.SIGTERM)
        for j in jobs:
            j.wait()
            j.finish(None)
        add_wall(state, state_path, time.time() - t_all)
        print(f"\ninterrupted during {', '.join(names + [j.exp for j in jobs])}; run `just reproduce-all` "
              f"again to continue (finished experiments are kept)", file=sys.stderr)
        return 130

    try:
        while pending or jobs:
            if pending and all(j.all_started for j in jobs):
                i, exp = pending.pop(0)
                log_path = os.path.join(sdir, exp.replace("/", "_") + ".log")
                with STATE_LOCK:
                    entry = state.setdefault(exp, {})
                jobs.append(Job(exp, entry, state, state_path, log_path, smoke, slots, i, len(todo),
                                budget(exp)))
            for j in [j for j in jobs if j.poll() is not None]:
                rc = j.p.returncode
                j.finish(rc)
                jobs.remove(j)
                print(f"[{j.i}/{j.n}] {j.exp}: {'finished' if rc == 0 else f'FAILED (exit {rc}; see {j.log_path})'} "
                      f"in {fmt(j.entry['seconds'])}", flush=True)
                if rc == 130:
                    # The runner was interrupted (SIGINT or SIGTERM sent to it alone): stop the rest.
                    return stop([j.exp])
            now = time.time()
            if jobs and now - last >= 30:
                last = now
                rest = sum(max(j.expected * 60 - j.elapsed(), 0) for j in jobs)
                rest += sum(budget(x) for _, x in pending) * 60
                running = ", ".join(f"[{j.i}/{j.n}] {j.exp}: {fmt(j.elapsed())} elapsed" for j in jobs)
                print(f"{running}; all: {fmt(now - t_all)} elapsed, about {fmt(rest)} to go", flush=True)
            time.sleep(0.2)
    except KeyboardInterrupt:
        return stop([])
    finally:
        os.close(fd)
    add_wall(state, state_path, time.time() - t_all)
    return 0


def serial_seconds(state):
    """The wall time of a state written when experiments ran one after the other (no
    `_wall_seconds`): their times add up."""
    return sum(state.get(x, {}).get("seconds", 0) for x in EXPERIMENTS)


def add_wall(state, state_path, secs):
    """Adds an invocation's wall time to the state's total (`_wall_seconds`)."""
    with STATE_LOCK:
        state["_wall_seconds"] = state.get("_wall_seconds", 0.0) + secs
        save_state(state_path, state)


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
        f"| paper | experiment | verdict | wall time ({CORES} cores, start to end; neighbours overlap) "
        "| peak memory (largest process) | report |",
        "|---|---|---|---|---|---|",
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
        mem = fmt_rss(e.get("peak_rss_mb")) if exp in avail else "—"
        lines.append(f"| {title} | `{exp}` | {verdict} | {wall} | {mem} | {link} |")
        headline.append((exp, verdict, wall, mem))
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
    total = state.get("_wall_seconds", serial_seconds(state))
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
             "| experiment | verdict | wall time | peak memory |", "|---|---|---|---|"]
    block += [f"| `{exp}` | {verdict} | {wall} | {mem} |" for exp, verdict, wall, mem in headline]
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
    ap.add_argument("--only", default=None, metavar="EXP,EXP",
                    help="run only these experiments (with --state and --results elsewhere, to keep the full state)")
    a = ap.parse_args()
    only = a.only.split(",") if a.only else None
    if only and not set(only) <= set(EXPERIMENTS):
        sys.exit(f"--only: not among the experiments: {', '.join(sorted(set(only) - set(EXPERIMENTS)))}")
    part = a.smoke or only is not None  # a smoke run or a part: its own state and page, not docs/
    sdir = a.state or os.path.join(ROOT, "runs", "reproduce-all" + ("-smoke" if a.smoke else "")
                                   + ("-only" if only else ""))
    os.makedirs(sdir, exist_ok=True)
    state_path = os.path.join(sdir, "state.json")
    results = a.results or (os.path.join(sdir, "RESULTS.md") if part else os.path.join(ROOT, "docs", "RESULTS.md"))
    state = load_state(state_path)
    avail = available()
    todo = [x for x in RUN_ORDER if x in avail and (only is None or x in only)]
    for x in EXPERIMENTS:
        if x not in avail:
            print(f"{x}: not implemented in this build yet, skipped")
    if not a.collect_only:
        rc = run_all(todo, state, state_path, sdir, a.smoke, avail)
        if rc == 130:
            sys.exit(130)
    measured = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    note = a.smoke and "> **Smoke run**: every experiment's `--smoke` budget; the numbers test the plumbing only." or \
        f"Measured {measured} on {machine()}."
    headline, total = write_results(state, results, avail, a.note or note)
    if not part and a.results is None:
        update_readme(os.path.join(ROOT, "README.md"), headline, total, a.note or note, results)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    main()
