"""`anyphone tune`: the search-space file's checks, pruning, resuming, interrupted and dead trials continued,
two worker processes on one SQLite study, the table/plots/best command, and (slow) two real trials of train.py.

Most tests drive the real Optuna study code with a toy runner (``toy_runner``) in place of train.py: a
deterministic dev-PER curve that falls with the batch and depends on the parameters.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from anyphone.tuning import (
    TrialOutcome,
    TrialRun,
    TuneError,
    check_flags,
    load_search_space,
    recipe_flags,
    run_study,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]
GOOD_LR = 0.03


def toy_per(params: dict, batch: int) -> float:
    """Dev PER (%) of a toy training: best at --base-lr 0.03 and --time-mask-ratio 1.0, falling with batches."""
    lr = float(params["--base-lr"])
    floor = 5.0 + 40.0 * abs(math.log10(lr / GOOD_LR)) + (10.0 if float(params["--time-mask-ratio"]) > 1 else 0.0)
    return floor + 60.0 * 100.0 / batch


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def toy_runner(calls: list | None = None, delay: float = 0.0, hang_on: int | None = None,
               interrupt_on: int | None = None):
    """A runner that trains nothing: reports toy_per every --valid-interval batches up to --max-batches.

    It reads its budget from the argv it is given, as train.py would, and leaves a file in its exp dir.
    ``hang_on``: that trial sleeps (for a process to be killed); ``interrupt_on``: that trial raises
    KeyboardInterrupt after its first report (Ctrl-C).
    """

    def run(trial: TrialRun) -> TrialOutcome:
        trial.exp_dir.mkdir(parents=True, exist_ok=True)
        with open(trial.exp_dir / "work.txt", "a") as f:
            f.write(f"{os.getpid()} {trial.number}\n")
        if calls is not None:
            calls.append(trial)
        every, last = int(_flag(trial.argv, "--valid-interval")), int(_flag(trial.argv, "--max-batches"))
        if hang_on == trial.number:
            time.sleep(120)
        per = math.nan
        for batch in range(every, last + 1, every):
            per = toy_per(trial.params, batch)
            time.sleep(delay)
            if trial.report(batch, per):
                return TrialOutcome(per, batch, pruned=True)
            if interrupt_on == trial.number:
                raise KeyboardInterrupt
        return TrialOutcome(per, last)

    return run


def write_space(path: Path, **overrides) -> Path:
    space = {
        "recipe": "zipformer_crctc",
        "base": ["--model-size", "tiny", "--train-shar", "data/shar/embedded/train",
                 "--dev-shar", "data/shar/embedded/dev"],
        "space": {"--base-lr": {"type": "float", "low": 0.003, "high": 0.3, "log": True},
                  "--time-mask-ratio": {"type": "categorical", "choices": [1.0, 2.5]}},
        "budget": {"--max-batches": 400},
        "report_every": 100,
        # two good points, then a bad one: the median pruner (2 startup trials) must stop it at batch 100
        "start": [{"--base-lr": 0.03, "--time-mask-ratio": 1.0}, {"--base-lr": 0.02, "--time-mask-ratio": 1.0},
                  {"--base-lr": 0.3, "--time-mask-ratio": 2.5}],
    }
    space.update(overrides)
    path.write_text(json.dumps(space))
    return path


def _states(study) -> list[str]:
    return [t.state.name for t in sorted(study.get_trials(), key=lambda t: t.number)]


def test_median_pruning_table_plots_and_best_command(tmp_path):
    space = load_search_space(write_space(tmp_path / "space.json"))
    calls: list[TrialRun] = []
    out = io.StringIO()
    study = run_study(space, study_name="toy", study_dir=tmp_path / "study", n_trials=5, seed=0,
                      runner=toy_runner(calls), out=out)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert len(trials) == 5 and len(calls) == 5
    # the start points ran first, in order
    assert [round(t.params["base-lr"], 6) for t in trials[:3]] == [0.03, 0.02, 0.3]
    assert trials[0].state.name == "COMPLETE" and trials[0].value == pytest.approx(toy_per(calls[0].params, 400))
    assert trials[1].state.name == "COMPLETE"
    # the bad trial was stopped at its first report, worse than the median of the finished ones there
    assert trials[2].state.name == "PRUNED"
    assert trials[2].user_attrs["batches"] == 100 and list(trials[2].intermediate_values) == [100]
    # each trial got its own exp dir and tune's flags
    assert calls[3].exp_dir == tmp_path / "study" / "trial-3" and (calls[3].exp_dir / "work.txt").is_file()
    assert _flag(calls[3].argv, "--valid-interval") == "100" and _flag(calls[3].argv, "--exp-dir") == str(
        calls[3].exp_dir)
    assert "--test-shar" not in calls[3].argv

    out = io.StringIO()
    report = write_report(study, space, tmp_path / "study", out)
    rows = [r.split("\t") for r in (tmp_path / "study" / "trials.tsv").read_text().splitlines()]
    assert rows[0][:4] == ["trial", "state", "dev_per", "batches"] and "base-lr" in rows[0]
    assert [r[1] for r in rows[1:]] == _states(study)
    assert rows[3][1:4] == ["PRUNED", f"{trials[2].value:.2f}", "100"]
    for name in ("optimization_history.png", "param_importances.png", "intermediate_values.png"):
        assert (tmp_path / "study" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    best = min((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert report["best"].number == best.number
    cmd = report["command"]
    assert cmd.startswith("./zipformer_crctc/train.py --model-size tiny") and cmd in out.getvalue()
    assert f"--base-lr {best.params['base-lr']:.6g}" in cmd and "--max-batches 400" in cmd
    assert "--exp-dir zipformer_crctc/exp-tuned-toy" in cmd


def test_a_trial_that_did_its_whole_budget_is_complete_not_pruned(tmp_path):
    # pruning only at the last report: the bad start point does all 400 batches and keeps its score
    space = load_search_space(write_space(tmp_path / "space.json",
                                          pruner={"n_startup_trials": 2, "n_warmup_steps": 399}))
    study = run_study(space, study_name="end", study_dir=tmp_path / "st", n_trials=3, seed=0, runner=toy_runner(),
                      out=io.StringIO())
    bad = sorted(study.get_trials(), key=lambda t: t.number)[2]
    assert bad.params["base-lr"] == pytest.approx(0.3) and bad.state.name == "COMPLETE"
    assert bad.value == pytest.approx(toy_per({"--base-lr": 0.3, "--time-mask-ratio": 2.5}, 400))
    assert list(bad.intermediate_values) == [100, 200, 300, 400]


def test_resuming_a_study_runs_only_the_missing_trials(tmp_path):
    space = load_search_space(write_space(tmp_path / "space.json"))
    first: list[TrialRun] = []
    study = run_study(space, study_name="s", study_dir=tmp_path / "st", n_trials=3, seed=1,
                      runner=toy_runner(first), out=io.StringIO())
    before = {t.number: (t.state.name, t.params, t.value) for t in study.get_trials()}
    assert len(before) == 3 and len(first) == 3

    second: list[TrialRun] = []
    study = run_study(space, study_name="s", study_dir=tmp_path / "st", n_trials=5, seed=1,
                      runner=toy_runner(second), out=io.StringIO())
    after = {t.number: (t.state.name, t.params, t.value) for t in study.get_trials()}
    assert [c.number for c in second] == [3, 4]  # the start points were not enqueued again
    assert {n: after[n] for n in before} == before
    assert sorted(after) == [0, 1, 2, 3, 4]

    third: list[TrialRun] = []
    out = io.StringIO()
    run_study(space, study_name="s", study_dir=tmp_path / "st", n_trials=5, runner=toy_runner(third), out=out)
    assert third == [] and "has 5 finished trials (--n-trials 5: nothing to run)" in out.getvalue()

    # another study may not use this study's folder, nor the same name with another search space
    with pytest.raises(TuneError, match="holds study 's'"):
        run_study(space, study_name="other", study_dir=tmp_path / "st", runner=toy_runner(), out=io.StringIO())
    changed = load_search_space(write_space(tmp_path / "changed.json", budget={"--max-batches": 800}))
    with pytest.raises(TuneError, match="different search space .*budget"):
        run_study(changed, study_name="s", study_dir=tmp_path / "st", n_trials=6, runner=toy_runner(),
                  out=io.StringIO())


def test_an_interrupted_trial_continues_in_its_folder(tmp_path):
    space = load_search_space(write_space(tmp_path / "space.json", start=[]))
    with pytest.raises(KeyboardInterrupt):
        run_study(space, study_name="i", study_dir=tmp_path / "st", n_trials=4, seed=2,
                  runner=toy_runner(interrupt_on=1), out=io.StringIO())
    study = optuna.load_study(study_name="i", storage=f"sqlite:///{tmp_path / 'st' / 'study.db'}")
    assert _states(study) == ["COMPLETE", "FAIL"]
    stopped = study.get_trials()[1]
    assert stopped.user_attrs["interrupted"] is True

    calls: list[TrialRun] = []
    out = io.StringIO()
    study = run_study(space, study_name="i", study_dir=tmp_path / "st", n_trials=4, seed=2,
                      runner=toy_runner(calls), out=out)
    # the first trial of this run continues trial 1: same parameters, trial 1's folder and work
    assert calls[0].number == 2 and calls[0].continues == 1
    assert calls[0].params == {"--base-lr": stopped.params["base-lr"],
                               "--time-mask-ratio": stopped.params["time-mask-ratio"]}
    assert not (tmp_path / "st" / "trial-1").exists()
    assert (tmp_path / "st" / "trial-2" / "work.txt").read_text().split("\n")[0].endswith(" 1")
    assert "trial 2 continues trial 1" in out.getvalue()
    states = _states(study)
    assert states[:2] == ["COMPLETE", "FAIL"] and len(states) == 5
    assert all(s in ("COMPLETE", "PRUNED") for s in states[2:])
    # continued once, not again on the next run
    later: list[TrialRun] = []
    run_study(space, study_name="i", study_dir=tmp_path / "st", n_trials=5, runner=toy_runner(later),
              out=io.StringIO())
    assert [c.continues for c in later] == [None]


def test_a_lost_study_is_seeded_from_its_table(tmp_path):
    """A study whose database was lost goes on from the trials.tsv it wrote: same numbers, states, parameters
    and scores; an interrupted trial is still continued; the table only seeds an empty study."""
    # two good start points, a bad one (pruned), then a good one, stopped by Ctrl-C after its first report
    start = [{"--base-lr": 0.03, "--time-mask-ratio": 1.0}, {"--base-lr": 0.02, "--time-mask-ratio": 1.0},
             {"--base-lr": 0.3, "--time-mask-ratio": 2.5}, {"--base-lr": 0.025, "--time-mask-ratio": 1.0}]
    space = load_search_space(write_space(tmp_path / "space.json", start=start))
    with pytest.raises(KeyboardInterrupt):
        run_study(space, study_name="t", study_dir=tmp_path / "old", n_trials=6, seed=3,
                  runner=toy_runner(interrupt_on=3), out=io.StringIO())
    old = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'old' / 'study.db'}")
    table = write_report(old, space, tmp_path / "old", io.StringIO())["table"]
    before = [(t.number, t.state.name, t.params, t.value) for t in old.get_trials()]
    assert [b[1] for b in before] == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"]

    calls: list[TrialRun] = []
    out = io.StringIO()
    study = run_study(space, study_name="t", study_dir=tmp_path / "new", n_trials=4, seed=3,
                      runner=toy_runner(calls), out=out, import_table=table)
    assert "added the 4 trials" in out.getvalue()
    got = [(t.number, t.state.name, t.params, t.value) for t in study.get_trials()][:4]
    assert [g[:2] for g in got] == [b[:2] for b in before]
    for (_, _, p_new, v_new), (_, _, p_old, v_old) in zip(got, before):
        assert p_new.keys() == p_old.keys()
        assert all(math.isclose(p_new[k], p_old[k], rel_tol=1e-5) for k in p_new)
        assert (v_new is None) == (v_old is None) and (v_new is None or math.isclose(v_new, v_old, abs_tol=0.005))
    # the start points were not queued again; the interrupted trial 3 is run again first, as trial 4
    assert [c.number for c in calls] == [4] and calls[0].continues == 3
    assert _states(study)[4] == "COMPLETE"

    with pytest.raises(TuneError, match="already holds trials"):
        run_study(space, study_name="t", study_dir=tmp_path / "new", n_trials=6, runner=toy_runner(),
                  out=io.StringIO(), import_table=table)
    bad = tmp_path / "bad.tsv"
    lines = table.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1].replace("\t1\t", "\t7.5\t", 1)]) + "\n")
    with pytest.raises(TuneError, match=r"bad.tsv:2: .*not one of"):
        run_study(space, study_name="b", study_dir=tmp_path / "b", n_trials=1, runner=toy_runner(),
                  out=io.StringIO(), import_table=bad)
    assert not (tmp_path / "b").exists()  # a refused start leaves nothing behind


WORKER = """
import io, sys
sys.path.insert(0, {tests!r})
from test_tune import toy_runner
from anyphone.tuning import load_search_space, run_study
run_study(load_search_space({space!r}), study_name="w", study_dir={study_dir!r}, n_trials={n},
          runner=toy_runner(delay={delay}, hang_on={hang}), heartbeat_interval=1, stale_after=2)
"""


def _worker(tmp_path: Path, n: int, delay: float = 0.0, hang: int | None = None) -> subprocess.Popen:
    code = WORKER.format(tests=str(ROOT / "tests"), space=str(tmp_path / "space.json"),
                         study_dir=str(tmp_path / "st"), n=n, delay=delay, hang=hang)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _heartbeats(study_dir: Path, number: int = 1) -> int:
    """Heartbeats of trial ``number`` in the study's SQLite file (Optuna's trial_heartbeats table)."""
    import sqlite3

    db = study_dir / "study.db"
    if not db.is_file():
        return 0
    con = sqlite3.connect(db, timeout=5)
    try:
        return con.execute("SELECT COUNT(*) FROM trial_heartbeats h JOIN trials t ON h.trial_id = t.trial_id "
                           "WHERE t.number = ?", (number,)).fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0
    finally:
        con.close()


def test_a_trial_whose_process_died_is_continued(tmp_path):
    space = load_search_space(write_space(tmp_path / "space.json"))
    proc = _worker(tmp_path, n=3, hang=1)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "st" / "trial-1" / "work.txt").exists() or not _heartbeats(tmp_path / "st"):
            # wait for trial 1's first heartbeat too: on a loaded machine the worker's heartbeat thread may not
            # have run yet when its trial starts, and a trial with no heartbeat is never found stale
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    time.sleep(4)  # longer than stale_after (2 s) without a heartbeat; SQLite's clock counts whole seconds

    calls: list[TrialRun] = []
    study = run_study(space, study_name="w", study_dir=tmp_path / "st", n_trials=3, runner=toy_runner(calls),
                      heartbeat_interval=1, stale_after=2, out=io.StringIO())
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert trials[1].state.name == "FAIL"
    # the queued start point (trial 2), then trial 3 continues the dead trial 1: same parameters, its folder
    assert [c.continues for c in calls] == [None, 1]
    assert calls[1].exp_dir.name == "trial-3" and not (tmp_path / "st" / "trial-1").exists()
    assert trials[3].params == trials[1].params and trials[3].state.name == "COMPLETE"
    assert (calls[1].exp_dir / "work.txt").read_text().split() == [str(proc.pid), "1", str(os.getpid()), "3"]
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 3


def test_two_worker_processes_share_one_sqlite_study(tmp_path):
    write_space(tmp_path / "space.json", start=[])
    (tmp_path / "st").mkdir()
    procs = [_worker(tmp_path, n=6, delay=0.15) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    study = optuna.load_study(study_name="w", storage=f"sqlite:///{tmp_path / 'st' / 'study.db'}")
    trials = study.get_trials()
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    # each worker stops once the study holds 6; one may finish a trial it had started
    assert 6 <= len(done) <= 7 and all(t.state.name != "RUNNING" for t in trials)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    pids = {line.split()[0] for d in (tmp_path / "st").glob("trial-*")
            for line in (d / "work.txt").read_text().splitlines()}
    assert len(pids) == 2, "both workers should have run trials"


# A stand-in for train.py with its contract: --help lists the flags, dev PERs go to EXP/metrics.jsonl, a run
# resumes after its last logged batch, SIGTERM "saves a checkpoint" and exits with status 3.
FAKE_TRAIN = """
import json, math, os, signal, sys, time
argv = sys.argv[1:]
if argv == ["--help"]:
    print("--model-size --train-shar --dev-shar --base-lr --time-mask-ratio --max-batches --valid-interval --exp-dir")
    sys.exit(0)
flag = lambda name: argv[argv.index(name) + 1]
exp, lr = flag("--exp-dir"), float(flag("--base-lr"))
os.makedirs(exp, exist_ok=True)
open(os.path.join(exp, "pid"), "w").write(str(os.getpid()))
def on_term(*_):
    open(os.path.join(exp, "checkpoint"), "w").write("saved")
    sys.exit(3)
signal.signal(signal.SIGTERM, on_term)
if lr > 0.25:
    print("train.py: error: something broke", file=sys.stderr)
    sys.exit(1)
metrics = os.path.join(exp, "metrics.jsonl")
done = [json.loads(x)["batch"] for x in open(metrics)] if os.path.exists(metrics) else []
every = int(flag("--valid-interval"))
for batch in range(max(done, default=0) + every, int(flag("--max-batches")) + 1, every):
    time.sleep(float(os.environ.get("FAKE_STEP_S", "0.3")))
    per = 5 + 40 * abs(math.log10(lr / 0.03)) + 6000 / batch
    with open(metrics, "a") as f:
        f.write(json.dumps({"split": "valid", "batch": batch, "loss": 1.0, "err_rate": per}) + "\\n")
"""


def test_train_runner_follows_metrics_kills_pruned_trials_and_names_failures(tmp_path):
    """The default runner against a stand-in train.py that writes metrics.jsonl as training does."""
    from anyphone.tuning import train_runner

    script = tmp_path / "train.py"
    script.write_text(FAKE_TRAIN)
    space = load_search_space(write_space(tmp_path / "space.json", start=[
        {"--base-lr": 0.03, "--time-mask-ratio": 1.0}, {"--base-lr": 0.02, "--time-mask-ratio": 1.0},
        {"--base-lr": 0.2, "--time-mask-ratio": 1.0}, {"--base-lr": 0.3, "--time-mask-ratio": 1.0}]))
    with pytest.raises(TuneError, match=r"trial 3: train.py exited with status 1: train.py: error: something broke"):
        run_study(space, study_name="f", study_dir=tmp_path / "st", n_trials=5, max_failures=1,
                  runner=train_runner(script, poll_s=0.05), out=io.StringIO())
    study = optuna.load_study(study_name="f", storage=f"sqlite:///{tmp_path / 'st' / 'study.db'}")
    assert _states(study) == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    t0 = study.get_trials()[0]
    assert t0.value == pytest.approx(5 + 6000 / 400) and t0.user_attrs["batches"] == 400
    assert sorted(t0.intermediate_values) == [100, 200, 300, 400]
    pruned = tmp_path / "st" / "trial-2"
    pid = int((pruned / "pid").read_text())
    with pytest.raises(ProcessLookupError):  # killed, not left running
        os.kill(pid, 0)
    assert (pruned / "metrics.jsonl").read_text().count('"valid"') < 4
    assert "something broke" in (tmp_path / "st" / "trial-3" / "tune-output.txt").read_text()


def test_ctrl_c_stops_the_trial_with_a_checkpoint_and_the_next_run_continues_it(tmp_path):
    """`anyphone tune` in a terminal: Ctrl-C sends train.py SIGTERM (it saves, exits 3), tune exits 130 with one
    line; the same command again continues that trial from its folder and finishes the study."""
    (tmp_path / "train.py").write_text(FAKE_TRAIN)
    path = write_space(tmp_path / "space.json", recipe=str(tmp_path / "train.py"), start=[
        {"--base-lr": 0.03, "--time-mask-ratio": 1.0}, {"--base-lr": 0.02, "--time-mask-ratio": 1.0}],
        pruner=False)
    cmd = [sys.executable, "-m", "anyphone.cli", "tune", str(path), "--study-dir", str(tmp_path / "st"),
           "--n-trials", "3", "--seed", "0"]
    env = {**os.environ, "FAKE_STEP_S": "0.5"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        metrics = tmp_path / "st" / "trial-1" / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().count("\n") == 0 and "interrupted" in err and "run the same command" in err, err
    assert (tmp_path / "st" / "trial-1" / "checkpoint").read_text() == "saved"

    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "FAKE_STEP_S": "0.05"},
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert "trial 2 continues trial 1" in res.stdout
    rows = [r.split("\t") for r in (tmp_path / "st" / "trials.tsv").read_text().splitlines()[1:]]
    assert [r[:2] for r in rows] == [["0", "COMPLETE"], ["1", "FAIL"], ["2", "COMPLETE"], ["3", "COMPLETE"]]
    assert rows[1][-1] == "interrupted" and rows[2][-1] == "continues trial 1"
    assert rows[2][4] == "0.02" and rows[2][3] == "400"
    # the continued training resumed: batch 100 was logged once, by the interrupted run
    batches = [json.loads(x)["batch"] for x in (tmp_path / "st" / "trial-2" / "metrics.jsonl").open()]
    assert batches == [100, 200, 300, 400][:len(batches)] and batches[-1] == 400


@pytest.mark.parametrize("change, message", [
    ({"base": ["--dev-shar", "d", "--test-shar", "test=data/shar/embedded/test"]}, "never reads a test split"),
    ({"space": {"--test-shar": {"type": "categorical", "choices": ["a"]}}}, "never reads a test split"),
    ({"base": ["--dev-shar", "data/shar/embedded/test"]}, "looks like a test split"),
    ({"base": ["--train-shar", "data/shar/embedded/train"]}, "needs --dev-shar"),
    ({"budget": {"--exp-dir": "x"}}, "tune sets for every trial"),
    ({"budget": {"--base-lr": 0.1}}, "given in space and in budget"),
    ({"space": {"--base-lr": {"type": "float", "low": 0.1, "high": 0.01}}}, "must be below high"),
    ({"space": {"--base-lr": {"type": "uniform", "low": 0.1, "high": 0.2}}}, "type must be"),
    ({"start": [{"--base-lr": 5.0, "--time-mask-ratio": 1.0}]}, "outside its range"),
    ({"report_every": 0}, "report_every must be"),
    ({"recipes": "x"}, "unknown key"),
])
def test_bad_search_space_files_are_refused_in_one_line(tmp_path, change, message):
    path = write_space(tmp_path / "space.json", **change)
    with pytest.raises(TuneError, match=message) as e:
        load_search_space(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_cli_tune_refuses_a_test_split_and_bad_json(tmp_path, capsys):
    from anyphone.cli import main

    path = write_space(tmp_path / "space.json", base=["--dev-shar", "dev", "--test-shar", "t=test"])
    assert main(["tune", str(path), "--study-dir", str(tmp_path / "st")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and "test split" in err and "Traceback" not in err
    assert not (tmp_path / "st").exists()
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["tune", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.json: not valid JSON" in err


def test_yaml_space_file_and_the_shipped_demo_space(tmp_path):
    import yaml

    as_json = load_search_space(write_space(tmp_path / "space.json"))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(json.loads((tmp_path / "space.json").read_text())))
    as_yaml = load_search_space(tmp_path / "space.yaml")
    assert (as_yaml.base, as_yaml.space, as_yaml.budget, as_yaml.start) == \
        (as_json.base, as_json.space, as_json.budget, as_json.start)
    (tmp_path / "bad.yaml").write_text("space: [unclosed")
    with pytest.raises(TuneError, match="bad.yaml: not valid YAML"):
        load_search_space(tmp_path / "bad.yaml")

    demo = load_search_space(ROOT / "local" / "tune_space.json")
    assert demo.recipe == "zipformer_crctc" and demo.space and "--dev-shar" in demo.base
    assert demo.start, "the demo space should try the demo's own values first"
    # every flag it names exists in the recipe's train.py (a renamed flag would fail every trial)
    known = recipe_flags(ROOT / "zipformer_crctc" / "train.py")
    assert {"--base-lr", "--dev-shar", "--max-batches", "--valid-interval", "--exp-dir"} <= known
    check_flags(demo, known)
    with pytest.raises(TuneError, match="--no-such-flag: not a flag of"):
        check_flags(load_search_space(write_space(tmp_path / "typo.json", budget={"--no-such-flag": 1})), known)


@pytest.mark.slow
def test_two_real_trials_of_train_py(tmp_path):
    """Two trials of the tiny recipe for 4 batches each, through `anyphone tune` (flags checked by --help)."""
    from training_fixtures import NO_AUG, SMALL_MODEL, write_tone_corpus

    from anyphone.cli import main

    write_tone_corpus(tmp_path, n=8, dev=2, durations=(0.9, 1.1))
    space = {
        "recipe": str(ROOT / "zipformer_crctc"),
        "base": ["--lang-dir", str(ROOT / "ipa_simplified"), "--train-shar", str(tmp_path / "train"),
                 "--dev-shar", str(tmp_path / "dev"), "--max-duration", "4", "--tensorboard", "0",
                 "--num-threads", "1", "--valid-every-epoch", "0", "--num-epochs", "100", *SMALL_MODEL, *NO_AUG],
        "space": {"--base-lr": {"type": "float", "low": 0.01, "high": 0.1, "log": True}},
        "budget": {"--max-batches": 4},
        "report_every": 2,
        "pruner": False,
    }
    (tmp_path / "space.json").write_text(json.dumps(space))
    assert main(["tune", str(tmp_path / "space.json"), "--study-dir", str(tmp_path / "st"),
                 "--n-trials", "2", "--seed", "0"]) == 0
    rows = [r.split("\t") for r in (tmp_path / "st" / "trials.tsv").read_text().splitlines()]
    assert [r[1] for r in rows[1:]] == ["COMPLETE", "COMPLETE"]
    for r in rows[1:]:
        # the score is the last dev PER train.py itself logged (validations at batches 2 and 4)
        records = [json.loads(line) for line in
                   (tmp_path / "st" / f"trial-{r[0]}" / "metrics.jsonl").read_text().splitlines()]
        valid = [(rec["batch"], rec["err_rate"]) for rec in records if rec["split"] == "valid"]
        assert [b for b, _ in valid] == [2, 4]
        assert r[3] == "4" and r[2] == f"{valid[-1][1]:.2f}"
