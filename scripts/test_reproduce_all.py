#!/usr/bin/env python3
"""Tests scripts/reproduce_all.py against a stand-in runner (no training): an interruption by
SIGINT during the second experiment (and a second SIGINT while it waits for the runner to stop),
then a second invocation that skips the finished one,
resumes the interrupted one from its folder and starts the rest, the fourth while the third
still holds a core (after it said every run had started); the results page (verdicts, claims,
kept hand-written part) and the README block. Run by scripts/test.sh.

usage: python scripts/test_reproduce_all.py
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reproduce_all as ra  # noqa: E402

STUB = r'''
import json, os, signal, sys, time
a = sys.argv[1:]
out, state = os.environ["STUB_OUT"], os.environ["STUB_STATE"]
with open(os.path.join(out, "calls.log"), "a") as f:
    f.write(" ".join(a) + "\n")
if a[0] == "list":
    print("experiment expected_minutes")
    for e in os.environ["STUB_LIST"].split(","):
        print(e, "2")
    sys.exit(0)
def finish(d, exp):
    with open(os.path.join(d, "claims.json"), "w") as f:
        json.dump({"verdict": "stub verdict " + exp, "claims": [
            {"claim": "C1", "what": "a | b", "paper": "1.0 (verified)", "ours": "2.0 ± 0.1",
             "verdict": "holds"},
            {"claim": "C2", "what": "reported", "paper": "-", "ours": "3", "verdict": "n/a",
             "gating": False}]}, f)
if a[0] == "run" and a[1] == "--resume":
    d = a[2]
    # A run process of its own, larger than this one: the peak memory must count it.
    import subprocess
    subprocess.run([sys.executable, "-c", "b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096])"],
                   check=True)
    finish(d, json.load(open(os.path.join(d, "exp.json"))))
    sys.exit(0)
exp = a[1]
d = os.path.join(out, exp.replace("/", "-"))
os.makedirs(d)
json.dump(exp, open(os.path.join(d, "exp.json"), "w"))
print("sweep: " + d, flush=True)
if exp == os.environ["STUB_OVERLAP_AT"]:
    # Holds a core from the slots pipe, says every run has started, and finishes only once
    # the script has started the next experiment (which must find the other core free).
    fd = os.open(a[a.index("--slots") + 1], os.O_RDWR | os.O_NONBLOCK)
    assert os.read(fd, 1) == b"+"
    print("sweep " + d + ": every run started", flush=True)
    # The experiment's log shows each line as it comes (someone may be following it).
    log = os.path.join(os.path.dirname(state), exp.replace("/", "_") + ".log")
    for _ in range(200):
        if os.path.exists(log) and "every run started" in open(log).read():
            break
        time.sleep(0.05)
    else:
        open(os.path.join(out, "log-lags"), "w").close()
        sys.exit(1)
    nxt = os.environ["STUB_OVERLAP_NEXT"]
    for _ in range(200):
        with open(os.path.join(out, "calls.log")) as f:
            if any(l.split()[:2] == ["run", nxt] for l in f):
                break
        time.sleep(0.05)
    else:
        sys.exit(1)
    for _ in range(200):
        if os.path.exists(os.path.join(out, "next-got-a-core")):
            break
        time.sleep(0.05)
    else:
        sys.exit(1)
    os.write(fd, b"+")
if exp == os.environ["STUB_OVERLAP_NEXT"]:
    fd = os.open(a[a.index("--slots") + 1], os.O_RDWR | os.O_NONBLOCK)
    assert os.read(fd, 1) == b"+"
    open(os.path.join(out, "next-got-a-core"), "w").close()
    os.write(fd, b"+")
if exp == os.environ["STUB_INTERRUPT_AT"]:
    # Wait until the script has recorded the sweep folder, then interrupt it as Ctrl-C would;
    # it passes the interruption on to this process (as SIGTERM), which exits as the runner does,
    # after a second Ctrl-C that the script, waiting for it, must ignore.
    def on_int(*_):
        open(os.path.join(out, "runner-got-sigterm"), "w").close()
        os.kill(os.getppid(), signal.SIGINT)
        time.sleep(0.5)
        sys.exit(130)
    signal.signal(signal.SIGTERM, on_int)
    for _ in range(200):
        try:
            if json.load(open(state)).get(exp, {}).get("dir") == d:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    os.kill(os.getppid(), signal.SIGINT)
    time.sleep(20)
    sys.exit(1)
finish(d, exp)
'''


def main():
    tmp = tempfile.mkdtemp(prefix="reproduce-all-test-")
    stub = os.path.join(tmp, "runner")
    with open(stub, "w") as f:
        f.write(f"#!{sys.executable}\n{STUB}")
    os.chmod(stub, 0o755)
    # One plays an experiment this build lacks; the others are run in RUN_ORDER, which is not
    # the results page's order.
    missing = "deepthin/sort-transformer"
    listed = [e for e in ra.RUN_ORDER if e != missing]
    assert listed != [e for e in ra.EXPERIMENTS if e != missing]
    sdir = os.path.join(tmp, "state")
    results = os.path.join(tmp, "RESULTS.md")
    env = dict(os.environ, REPRISE_RUNNER=stub, STUB_OUT=tmp, STUB_STATE=os.path.join(sdir, "state.json"),
               STUB_LIST=",".join(listed), STUB_INTERRUPT_AT=listed[1], STUB_OVERLAP_AT=listed[2],
               STUB_OVERLAP_NEXT=listed[3])
    cmd = [sys.executable, os.path.join(HERE, "reproduce_all.py"), "--state", sdir, "--results", results]
    calls = os.path.join(tmp, "calls.log")
    # A shell's background job starts with SIGINT ignored, and Python then installs no Ctrl-C
    # handler; give the script the default disposition a terminal's foreground job has.
    dfl = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731

    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, preexec_fn=dfl)
    assert first.returncode == 130, (first.returncode, first.stdout, first.stderr)
    assert "interrupted during " + listed[1] in first.stderr, first.stderr
    assert "Ctrl-C again is ignored" in first.stderr, first.stderr
    assert os.path.exists(os.path.join(tmp, "runner-got-sigterm")), "the interruption was not passed on"
    state = json.load(open(env["STUB_STATE"]))
    assert state[listed[0]]["done"] is True, state
    assert not state[listed[1]].get("done") and state[listed[1]]["dir"].endswith(listed[1].replace("/", "-")), state
    # The interrupted experiment's time is recorded once, within the invocation's wall time.
    assert 0.5 <= state[listed[1]]["seconds"] <= state["_wall_seconds"] - state[listed[0]]["seconds"] + 0.1, state
    assert listed[2] not in state, state
    with open(calls) as f:
        assert [c.split()[:2] for c in f.read().splitlines()] == [["list"], ["run", listed[0]], ["run", listed[1]]]

    with open(results, "w") as f:
        f.write("old generated text\n" + ra.KEEP_MARKER + "\n\n## Notes\n\nhand-written\n")
    os.remove(calls)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, preexec_fn=dfl)
    assert not os.path.exists(os.path.join(tmp, "log-lags")), "an experiment's log is written behind its output"
    assert second.returncode == 0, (second.returncode, second.stdout, second.stderr)
    assert f"[1/{len(listed)}] {listed[0]}: done before" in second.stdout, second.stdout
    assert f"{missing}: not implemented in this build yet" in second.stdout, second.stdout
    with open(calls) as f:
        got = [c.split() for c in f.read().splitlines()]
    slots = ["--jobs", str(ra.CORES), "--slots", os.path.join(sdir, "slots.fifo")]
    want = [["list"], ["run", "--resume", state[listed[1]]["dir"]] + slots]
    want += [["run", e] + slots for e in listed[2:]]
    assert got == want, got
    # The fourth experiment started while the third still ran (once all its runs had started).
    out = second.stdout
    assert out.index(f"{listed[3]}: starting") < out.index(f"{listed[2]}: finished"), out
    state = json.load(open(env["STUB_STATE"]))
    assert all(state[e]["done"] for e in listed), state
    # Peak memory: the resumed experiment's runner waited for a 200 MB process; the others' stubs
    # are small (a python interpreter), and every one was measured.
    assert state[listed[1]]["peak_rss_mb"] >= 200, state
    assert all(0 < state[e]["peak_rss_mb"] < 100 for e in listed if e != listed[1]), state

    page = open(results).read()
    for e in listed:
        assert f"| `{e}` | stub verdict {e} |" in page, e
    assert f"| `{listed[1]}` | stub verdict {listed[1]} | {ra.fmt(state[listed[1]]['seconds'])} | " \
           f"{state[listed[1]]['peak_rss_mb'] / 1024:.2f} GB |" in page, page
    assert f"| `{missing}` | not implemented yet | — | — |" in page
    assert "| a \\| b | 1.0 (verified) | 2.0 ± 0.1 | holds |" in page
    assert "| n/a (reported, not gating) |" in page
    assert "old generated text" not in page
    assert page.endswith(ra.KEEP_MARKER + "\n\n## Notes\n\nhand-written\n"), page[-200:]

    readme = os.path.join(tmp, "README.md")
    with open(readme, "w") as f:
        f.write(f"# title\n\nbefore\n\n{ra.README_START}\nold block\n{ra.README_END}\n\nafter\n")
    ra.update_readme(readme, [(listed[0], "reproduced", "1m00s", "0.50 GB")], 60, "Measured today.", results)
    text = open(readme).read()
    assert text.startswith("# title\n\nbefore\n\n" + ra.README_START) and text.endswith(ra.README_END + "\n\nafter\n")
    assert "old block" not in text and f"| `{listed[0]}` | reproduced | 1m00s | 0.50 GB |" in text, text
    assert "Measured today. Every claim with the paper's number beside ours: [RESULTS.md](RESULTS.md)." in text
    print("reproduce_all.py: interrupted, resumed, results page and README block as expected")
    return tmp


if __name__ == "__main__":
    shutil.rmtree(main())
