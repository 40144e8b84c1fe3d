"""What a new user meets (issue 17, section 6): Ctrl-C, a folder as --output, fast option errors, --help, rejected
reasons, the summary's wall time and paths, progress. Against real processes where the behaviour is a process's."""

from __future__ import annotations

import hashlib
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from pipeline.demo import make_data, make_model
from pipeline.progress import RateEstimate
from pipeline.run import _descendants, main
from tests.conftest import save, write_parquet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)
INTERRUPTED = (
    "beam-gradients: interrupted: the job was stopped before it finished; nothing was committed, and an earlier "
    "output under the same prefix is left as it was"
)


def _cli(*args, cwd=ROOT, timeout=300):
    """`python -m pipeline ARGS` as a user runs it; (completed process, seconds it took)."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=timeout)
    return done, time.monotonic() - started


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _files(folder) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's model and 3,000 rows of 16x16 images, made in a temporary folder."""
    tmp = tmp_path_factory.mktemp("user")
    make_model(str(tmp / "model.keras"))
    make_data(str(tmp / "data"))
    return tmp


@pytest.mark.parametrize(
    "workers, signal_to",
    [([], "group"), (["--direct_num_workers=2", "--direct_running_mode=multi_processing"], "launcher")],
    ids=["in-process, Ctrl-C on the terminal", "two worker processes, SIGINT to the launcher only"],
)
def test_ctrl_c_exits_130_with_one_line_and_leaves_no_staging_no_workers_and_the_earlier_output(demo, workers, signal_to):
    out = demo / f"out-{signal_to}"
    common = ["--runner=DirectRunner", f"--input={demo}/data", f"--model={demo}/model.keras", f"--output={out}/g"]
    done, _ = _cli(*common, "--quiet")  # an earlier, complete output
    assert done.returncode == 0, done.stderr
    before = _files(out)
    assert "g_SUCCESS" in before
    # A slow job (integrated gradients, 3,000 steps, 8 rows a batch): interrupted once it prints progress.
    code = "import sys; from pipeline.run import main; sys.exit(main(sys.argv[1:], progress_every=0.5))"
    args = [sys.executable, "-c", code, *common, "--method=integrated_gradients", "--steps=3000", "--batch_size=8",
            *workers]
    parent, child = pty.openpty()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=child, env=ENV, cwd=ROOT, start_new_session=True)
    os.close(child)
    seen, workers_seen, deadline = b"", set(), time.monotonic() + 240
    try:
        while b"progress:" not in seen or (workers and len(workers_seen) < 2):
            assert time.monotonic() < deadline and process.poll() is None, seen.decode(errors="replace")
            if select.select([parent], [], [], 0.2)[0]:
                seen += os.read(parent, 4096)
            workers_seen |= set(_descendants(process.pid))
        os.killpg(process.pid, signal.SIGINT) if signal_to == "group" else process.send_signal(signal.SIGINT)
        rest = b""
        while True:  # the rest of the terminal's output, to its end
            if select.select([parent], [], [], 1.0)[0]:
                try:
                    data = os.read(parent, 4096)
                except OSError:
                    break
                if not data:
                    break
                rest += data
            elif process.poll() is not None:
                break
        assert process.wait(timeout=60) == 130
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        os.close(parent)
    lines = [line for line in rest.decode(errors="replace").splitlines() if line.strip() and "progress:" not in line]
    assert lines == [INTERRUPTED]  # one line, and no traceback, no worker log
    assert not [name for name in os.listdir(out) if ".staging-" in name]  # staging folders removed
    assert _files(out) == before  # the earlier output's shards, summary and _SUCCESS marker, byte for byte
    if workers:
        assert workers_seen  # the runner's worker processes (sh and python), seen while the job ran
    deadline = time.monotonic() + 10
    while [pid for pid in workers_seen if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers_seen if _alive(pid)]  # no worker outlives the command


def test_sigterm_during_the_commit_waits_for_its_end_and_the_new_output_is_whole(demo, tmp_path):
    """A scheduler's SIGTERM while the files move into place (slowed here to a second a move, as on an object store,
    where a rename is a copy and a delete) used to stop the moves half-way: the earlier marker gone, half the new
    shards moved, and a line saying the earlier output was left as it was. Now the commit finishes first."""
    from pipeline.reader import read_arrays

    out, flag = tmp_path / "out", tmp_path / "moving"
    common = ["--runner=DirectRunner", f"--input={demo}/data", f"--model={demo}/model.keras", f"--output={out}/g",
              "--keep_columns=id", "--quiet"]
    done, _ = _cli(*common, "--num_shards=2")  # an earlier output, of two shards
    assert done.returncode == 0, done.stderr
    code = (  # the commit's moves (the main thread's; Beam's sink renames its temp files on a pool) slowed
        "import sys, threading, time\n"
        "from apache_beam.io.filesystems import FileSystems\n"
        "rename = FileSystems.rename\n"
        "def slow(*args):\n"
        "    if threading.current_thread() is threading.main_thread():\n"
        f"        open({str(flag)!r}, 'w').close(); time.sleep(1.0)\n"
        "    return rename(*args)\n"
        "FileSystems.rename = staticmethod(slow)\n"
        "from pipeline.cli import main\n"
        "sys.exit(main())\n"  # the command line's own process, under its supervisor, as the console script runs
    )
    process = subprocess.Popen([sys.executable, "-c", code, *common, "--num_shards=1"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    deadline = time.monotonic() + 240
    while not flag.exists():
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines() == ["beam-gradients: stopped by SIGTERM; its output was committed"]
    assert sorted(n for n in os.listdir(out) if n.endswith(".parquet") and "rejected" not in n) == ["g-00000-of-00001.parquet"]
    ids = read_arrays(str(out / "g"))["id"]  # complete: its marker lists every shard, each as written
    assert sorted(ids.tolist()) == list(range(3000))


@pytest.mark.parametrize("slash", ["", "/"])
def test_an_existing_folder_as_output_prefix_is_refused_with_a_valid_prefix_shown(tmp_path, slash):
    folder = tmp_path / "out"
    folder.mkdir()
    done, _ = _cli("--runner=DirectRunner", "--input=x.parquet", "--model=m.keras", f"--output={folder}{slash}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"beam-gradients: error: --output '{folder}{slash}' is a folder, but --output takes a prefix of file names "
        f"(<prefix>-SSSSS-of-NNNNN.parquet, <prefix>_SUCCESS, ...); give one inside it, e.g. --output {folder}/gradients"
    ]
    done, _ = _cli("influence", "--train=t.parquet", "--query=q.parquet", f"--output={folder}{slash}")
    assert done.returncode == 2 and f"e.g. --output {folder}/influence" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done, _ = _cli("report", f"{folder}{slash}")
    assert done.returncode == 2 and f"give one inside it, e.g. {folder}/gradients" in done.stderr
    assert os.listdir(folder) == [] and sorted(os.listdir(tmp_path)) == ["out"]  # nothing written beside or inside


def test_an_output_prefix_with_wildcards_is_refused_before_anything_is_made(tmp_path):
    """Beam's sink globs `<prefix>-*-of-NNNNN`: with `[1]` in it, the job failed after computing, leaving staging."""
    prefix = f"{tmp_path}/out/g[1]"
    done, _ = _cli("--runner=DirectRunner", "--input=x.parquet", "--model=m.keras", f"--output={prefix}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"beam-gradients: error: --output {prefix!r} holds '[', which Beam's file sink reads as wildcards in the "
        "output's file names; give a prefix whose path has no '[', '*' or '?'"
    ]
    done, _ = _cli("influence", "--train=t.parquet", "--query=q.parquet", f"--output={tmp_path}/i*")
    assert done.returncode == 2 and "holds '*', which Beam's file sink" in done.stderr
    assert os.listdir(tmp_path) == []


def test_a_not_yet_existing_folder_with_a_slash_is_refused_too_before_anything_is_made(tmp_path):
    done, _ = _cli("--runner=DirectRunner", "--input=x.parquet", "--model=m.keras", f"--output={tmp_path}/new/")
    assert done.returncode == 2 and f"e.g. --output {tmp_path}/new/gradients" in done.stderr
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "args, says",
    [
        (["--batch_size", "0"], "--batch_size must be 1 or more, not 0"),
        (["--steps", "0", "--method", "integrated_gradients"], "--steps must be 1 or more, not 0"),
        (["--samples", "0", "--method", "smoothgrad"], "--samples must be 1 or more, not 0"),
        (["--batch_size", "0", "--demo"], "--batch_size must be 1 or more, not 0"),  # before the demo's model is made
    ],
)
def test_option_errors_answer_about_as_fast_as_help(tmp_path, args, says):
    helped, help_seconds = _cli("--help", cwd=tmp_path)
    assert helped.returncode == 0
    done, seconds = _cli("--runner=DirectRunner", "--input=x.parquet", "--output=o/g", "--model=m.keras", *args,
                         cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"beam-gradients: error: {says}"]
    assert seconds <= 1.5 * help_seconds + 1.0, (seconds, help_seconds)  # TensorFlow's import alone takes longer
    assert not (tmp_path / "demo").exists()  # --demo made nothing


def test_help_lists_the_other_commands_one_line_each():
    done, _ = _cli("--help")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines if line.startswith("  beam-gradients ")] == [
        ["beam-gradients", "influence"],
        ["beam-gradients", "report"],
    ]


def _mlp():
    import keras

    return keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(1)])


def test_the_summary_names_the_most_frequent_rejection_reasons(tmp_path, capsys):
    rows = [[1.0, 2.0, 3.0]] * 20
    for i in range(7):
        rows[i] = None  # 7 nulls
    for i in range(7, 10):
        rows[i] = [1.0, 2.0]  # 3 of the wrong length
    rows[10] = [1.0, float("nan"), 3.0]  # 1 non-finite
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(20), "x": pa.array(rows, pa.list_(pa.float32()))})
    args = ["--runner=DirectRunner", f"--input={tmp_path}/in", f"--model={save(_mlp(), tmp_path)}", "--quiet"]
    assert main([*args, f"--output={tmp_path}/out/g", "--keep_columns=id"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "rows: 20 in, 9 out, 11 rejected"
    reasons = lines[1]
    assert reasons.startswith("rejected: 7 x ") and "null" in reasons.split(";")[0]
    assert re.findall(r"(?:^rejected: |; )(\d+) x ", reasons) == ["7", "3", "1"]  # the top 3, most frequent first
    assert "has 2 values" in reasons and "NaN or infinity" in reasons.split("; 1 x ")[1]


def test_the_default_target_on_a_softmax_classifier_says_why_its_gradients_are_zero(tmp_path, capsys):
    """The outputs of a softmax sum to 1, so the default `--target sum` differentiates a constant: zeros, correctly,
    and nothing told the user. A class's score is not flat, and gets no such line."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(4, activation="softmax")])
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(30), "x": np.random.default_rng(0).normal(size=(30, 3))})
    args = ["--runner=DirectRunner", f"--input={tmp_path}/in", f"--model={save(model, tmp_path)}", "--keep_columns=id"]
    assert main([*args, f"--output={tmp_path}/out/sum"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("note: every row's gradient is near zero (the largest norm is "), lines
    assert "--target sum adds the outputs" in lines[1] and "--target predicted or class" in lines[1]
    assert main([*args, f"--output={tmp_path}/out/predicted", "--target=predicted"]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]


def test_reasons_alike_but_for_their_numbers_count_as_one_in_the_summary(tmp_path, capsys):
    """Four classes outside the model's, each its own reason in the rejected rows, are one line's worth: not
    '1 x ... class 5; 1 x ... class 6; 1 x ... class 7; and 2 other reason(s)'."""
    import keras

    model = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(3)])
    x = [[1.0, 2.0, 3.0]] * 16
    x[13:] = [None] * 3
    classes = [0, 1, 2] * 3 + [5, 6, 7, 8] + [0, 1, 2]
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(16), "x": pa.array(x, pa.list_(pa.float32())), "c": classes[:16]})
    args = ["--runner=DirectRunner", f"--input={tmp_path}/in", f"--model={save(model, tmp_path)}", "--keep_columns=id"]
    assert main([*args, f"--output={tmp_path}/out/g", "--target=class", "--class_column=c"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "rows: 16 in, 9 out, 7 rejected", lines
    assert re.fullmatch(
        r"rejected: 4 x column 'c' holds class [5-8], outside the model's 3 classes 0\.\.2 \(and 3 more like it with "
        r"other numbers\); 3 x column 'x' [^;]*null[^;]*", lines[1],
    ), lines[1]


def test_every_row_rejected_says_why_and_the_paths_are_as_given_and_the_wall_time_is_the_process(tmp_path):
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(5), "x": pa.array([[1.0, 2.0]] * 5)})  # 2 values, not 3
    save(_mlp(), tmp_path)
    done, seconds = _cli("--runner=DirectRunner", "--input=in", "--model=model.keras", "--output=out/g", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("EVERY ROW WAS REJECTED (5): 5 x column 'x'") and lines[0].endswith(
        "; see the reasons in the rejected rows"
    )
    paths = [line.split(": ", 1)[1] for line in lines if line.startswith(("output:", "rejected rows:", "summary:"))]
    assert paths == ["out/g-00000-of-00001.parquet", "out/g_rejected-00000-of-00001.parquet", "out/g-summary.json"]  # relative, as given
    wall = float(next(line for line in lines if line.startswith("wall time:")).split()[2])
    # From the process's start to the summary: all but the interpreter's own exit (TensorFlow's teardown).
    assert seconds - 3.0 <= wall <= seconds, (wall, seconds)


def test_the_rate_estimate_stays_steady_when_counts_come_in_jumps():
    """10,000 rows every 30 s (333 rows/s), read every 3 s after 8 s of start-up: the issue's 200k-row job."""
    estimate, rates = RateEstimate(), {}
    for i in range(200):
        now = i * 3.0
        done = 0 if now < 8 else min(200_000, 10_000 * (1 + int((now - 8) // 30)))
        rates[now] = estimate.add(now, done)
    assert all(rates[t] is None for t in rates if t < 8)  # no rate before any row is done
    after_a_minute = [r for t, r in rates.items() if 68 <= t < 560]
    assert max(after_a_minute) / min(after_a_minute) < 2.0  # the single-interval rate swings 0 to 3,333
    later = [r for t, r in rates.items() if 150 <= t < 560]
    assert max(later) / min(later) < 1.4
    assert all(abs(r - 10_000 / 30) / (10_000 / 30) < 0.2 for r in later)
    steady = RateEstimate()
    assert [round(steady.add(t, 50 * t) or 0) for t in range(5)] == [0, 50, 50, 50, 50]


def test_progress_is_counted_per_computed_batch_in_a_real_job(tmp_path, monkeypatch):
    from transforms.progress import ProgressFiles

    told = []
    original = ProgressFiles.add

    def add(self, rows, force=False):
        told.append(rows)
        return original(self, rows, force)

    monkeypatch.setattr(ProgressFiles, "add", add)
    monkeypatch.setattr("pipeline.progress.os.isatty", lambda fd: True)  # progress on, as on a terminal
    rows = [[1.0, 2.0, 3.0]] * 60
    rows[3] = None
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(60), "x": pa.array(rows, pa.list_(pa.float32()))})
    args = ["--runner=DirectRunner", f"--input={tmp_path}/in", f"--model={save(_mlp(), tmp_path)}"]
    # One record batch of all 60 rows, computed 8 at a time: told per batch, not once per record batch.
    assert main([*args, f"--output={tmp_path}/out/g", "--read_batch_rows=60", "--batch_size=8"]) == 0
    counted = [r for r in told if r]
    assert sum(counted) == 60
    assert max(counted) <= 8 and len(counted) >= 8  # 59 computed rows in 8 batches, and the rejected one


@pytest.mark.parametrize(
    "args, says",
    [
        (["--input=nowhere/*.parquet"], "--input 'nowhere/*.parquet' matches no file"),
        (["--input=in/a.parquet", "--feature_columns=nope"], "feature column 'nope' not found in in/a.parquet; its columns"),
        (["--input=in/a.parquet", "--input_map=x=nope"], "feature column 'nope' not found in in/a.parquet; its columns"),
    ],
)
def test_input_errors_that_need_no_model_answer_about_as_fast_as_help(tmp_path, args, says):
    """The files are matched and their columns checked before TensorFlow is imported for the spec and model."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": np.arange(3), "x": np.ones(3)}), tmp_path / "in/a.parquet")
    helped, help_seconds = _cli("--help", cwd=tmp_path)
    done, seconds = _cli("--runner=DirectRunner", "--output=o/g", "--model=m.keras", *args, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines
    assert seconds <= 1.5 * help_seconds + 1.0, (seconds, help_seconds)


def test_a_reader_of_stdout_that_goes_away_costs_no_traceback_and_the_rejected_check_still_runs(tmp_path):
    """`beam-gradients ... | head -0`: the output is committed before the summary is printed; a closed pipe then
    gave a BrokenPipeError's traceback, exit 1, and skipped the --max_rejected_fraction check."""
    rows = [[1.0, 2.0, 3.0]] * 10
    rows[0] = None  # one row of ten rejected
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(10), "x": pa.array(rows, pa.list_(pa.float32()))})
    args = ["--runner=DirectRunner", f"--input={tmp_path}/in", f"--model={save(_mlp(), tmp_path)}",
            f"--output={tmp_path}/out/g", "--quiet"]
    for extra, code in (([], 0), (["--max_rejected_fraction=0.05"], 3)):
        process = subprocess.Popen([sys.executable, "-m", "pipeline", *args, *extra], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
        process.stdout.close()  # the reader is gone before the job prints
        err = process.stderr.read()
        assert process.wait(timeout=300) == code, err
        assert "Traceback" not in err and "BrokenPipe" not in err
        assert (tmp_path / "out/g_SUCCESS").exists()
        if code == 3:
            assert err.startswith("beam-gradients: error: 10.0% of rows were rejected (1 of 10), above --max_rejected_fraction")


def test_rejected_rows_without_a_key_column_get_a_note_saying_how_to_find_them(tmp_path, capsys):
    rows = [[1.0, 2.0, 3.0]] * 6
    rows[2] = None
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(6), "x": pa.array(rows, pa.list_(pa.float32()))})
    args = ["--runner=DirectRunner", f"--input={tmp_path}/in", f"--model={save(_mlp(), tmp_path)}", "--quiet"]
    note = ("note: the rejected rows carry no key column, so they cannot be told apart: give --keep_columns (an id "
            "column) to find them in the input")
    assert main([*args, f"--output={tmp_path}/a/g"]) == 0
    assert note in capsys.readouterr().out.splitlines()
    assert main([*args, f"--output={tmp_path}/b/g", "--keep_columns=id"]) == 0
    assert note not in capsys.readouterr().out
    assert main([*args, f"--output={tmp_path}/c/g", "--group_column=id"]) == 0  # a group column is kept, but no key
    assert note in capsys.readouterr().out.splitlines()
