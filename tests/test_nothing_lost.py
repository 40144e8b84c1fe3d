"""Nothing lost, second round: rejected rows survive every runner's finalize, reruns never erase a good
output, run-time failures are one line, and odd inputs are handled, not crashed on."""

import glob
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from pipeline.outputs import read_marker
from pipeline.run import main
from transforms.gradients import GradientEngine, GradientSpec, from_keras
from transforms.gradients.engine import _own_array
from tests.conftest import (
    assert_close,
    by_key,
    eager_gradients,
    read_output,
    run_on,
    save,
    tensor_column,
    write_parquet,
)
from tests.faults import DropFirstOutput, FailFirstAttempt

ROWS = 90
BAD = {4, 33, 61}  # rows holding NaN: rejected at validation


def _mlp():
    x = keras.Input((3,), name="x")
    return keras.Model(x, keras.layers.Dense(1)(keras.layers.Dense(4, activation="tanh")(x)))


def _data_with_bad_rows(tmp_path, rows=ROWS, files=3):
    x = np.random.default_rng(8).normal(size=(rows, 3)).astype(np.float32)
    dirty = x.copy()
    dirty[sorted(BAD), 1] = np.nan
    per_file = rows // files
    for i in range(files):
        part = slice(i * per_file, (i + 1) * per_file)
        write_parquet(tmp_path / f"in/{i}.parquet", {"id": np.arange(rows)[part], "x": dirty[part]})
    return x


def _one_line_stderr(text: str) -> list[str]:
    """stderr without TensorFlow's own start-up lines (its C++ logger writes before any Python runs)."""
    return [
        line
        for line in text.splitlines()
        if line.strip() and not line.startswith(("WARNING: All log messages before absl", "I0000", "E0000", "W0000"))
    ]


RUNNERS = {
    "in-process": ["--runner", "DirectRunner"],
    "multi-process": ["--runner", "DirectRunner", "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"],
    "bundle-based": ["--runner", "BundleBasedDirectRunner"],
}


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("shards", [0, 2])
def test_rejected_rows_survive_the_outputs_finalize_on_every_runner(tmp_path, runner, shards):
    """The old default `<output>-rejected` lost its shards to the output's finalize on BundleBasedDirectRunner."""
    model = _mlp()
    x = _data_with_bad_rows(tmp_path)
    extra = ["--num_shards", shards] if shards else []
    summary = run_on(tmp_path, model, *RUNNERS[runner], *extra, "--batch_size", 16)

    out = by_key(read_output(tmp_path / "out/g"))
    rejected = by_key(read_output(tmp_path / "out/g_rejected"))
    assert rejected.column("id").to_pylist() == sorted(BAD)
    good = [i for i in range(ROWS) if i not in BAD]
    assert out.column("id").to_pylist() == good
    assert_close(tensor_column(out, "gradient"), eager_gradients(model, x[good]), rtol=1e-5)
    assert (summary.rows_in, summary.rows_out, summary.rows_rejected) == (ROWS, ROWS - len(BAD), len(BAD))
    if shards:
        assert len(summary.outputs) == len(summary.rejected) == shards
    marker = read_marker(str(tmp_path / "out/g"))
    assert (marker["rows_in"], marker["rows_out"], marker["rows_rejected"]) == (ROWS, ROWS - len(BAD), len(BAD))
    assert marker["outputs"]["--rejected"] == [os.path.basename(p) for p in summary.rejected]  # names in its folder


@pytest.mark.parametrize(
    "output, rejected",
    [
        ("out/g", "out/g-rejected"),
        ("out/g", "out/g"),
        ("out/g-part", "out/g"),
        ("out/g", "out/g-x-00001-of"),
        ("out/g", "out/../out/g"),  # one prefix spelled two ways: both sinks would write one file
        ("out/g", "out/../out/g-rejected"),
    ],
)
def test_output_prefixes_whose_shards_overlap_are_refused_before_any_compute(tmp_path, capsys, output, rejected):
    _data_with_bad_rows(tmp_path)
    args = ["--runner=DirectRunner", "--input", str(tmp_path / "in/*.parquet"), "--model", save(_mlp(), tmp_path)]
    args += ["--output", str(tmp_path / output), "--rejected", str(tmp_path / rejected)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "overlap" in err and "--output" in err and "--rejected" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "out") or not os.listdir(tmp_path / "out")


def _files(prefix) -> dict:
    """name -> bytes of every file of an output: its shards, rejected shards and marker."""
    found = glob.glob(f"{prefix}-*") + glob.glob(f"{prefix}_*")
    return {os.path.basename(p): open(p, "rb").read() for p in sorted(found)}


def _gather_model(folder) -> str:
    """A SavedModel that fails at run time on a row whose first value is out of its table's range."""

    class Picker(tf.Module):
        def __init__(self):
            self.table = tf.Variable(tf.range(10.0))

        @tf.function(input_signature=[tf.TensorSpec((None, 3), tf.float32, name="x")])
        def serve(self, x):
            picked = tf.gather(self.table, tf.cast(x[:, 0], tf.int32))
            return {"y": tf.reduce_sum(x, axis=1, keepdims=True) * picked[:, None]}

    picker = Picker()
    path = str(folder / "picker")
    tf.saved_model.save(picker, path, signatures={"serving_default": picker.serve})
    return path


def test_failed_reruns_leave_the_earlier_output_intact_with_its_marker(tmp_path):
    """A good run; a rerun killed midway; a rerun whose model fails at run time; then a rerun that completes."""
    model = _mlp()
    path = save(model, tmp_path)
    small = np.random.default_rng(1).uniform(0, 9, size=(60, 3)).astype(np.float32)
    write_parquet(tmp_path / "small/a.parquet", {"id": np.arange(60), "x": small})
    rows = 400_000
    big = np.random.default_rng(2).normal(size=(rows, 3)).astype(np.float32)
    for i in range(2):
        part = slice(i * rows // 2, (i + 1) * rows // 2)
        write_parquet(tmp_path / f"big/{i}.parquet", {"id": np.arange(rows)[part], "x": big[part]}, row_group_size=50_000)

    def command(data, model_path, *extra):
        args = ["--runner", "DirectRunner", "--input", tmp_path / data, "--output", tmp_path / "out/g"]
        args += ["--model", model_path, "--feature_columns", "x", "--keep_columns", "id", *extra]
        return [sys.executable, "-m", "pipeline", *map(str, args)]

    done = subprocess.run(command("small/*.parquet", path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    first = _files(tmp_path / "out/g")
    assert read_marker(str(tmp_path / "out/g"))["rows_out"] == 60

    # Killed midway: once the sink has taken its first batches (in the staging folder, not under the prefix).
    job = subprocess.Popen(
        command("big/*.parquet", path, "--batch_size", 64, "--read_batch_rows", 2048),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not glob.glob(str(tmp_path / "out/.g.staging-*/beam-temp-*/*")):
            assert job.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        job.send_signal(signal.SIGKILL)
    finally:
        job.kill()
        job.wait()
    assert job.returncode == -signal.SIGKILL
    assert _files(tmp_path / "out/g") == first

    # Fails at run time: one line, with TensorFlow's cause, the op and the rows; exit 1.
    bad = small.copy()
    bad[45, 0] = 50
    write_parquet(tmp_path / "bad/a.parquet", {"id": np.arange(60), "x": bad})
    done = subprocess.run(
        command("bad/*.parquet", _gather_model(tmp_path), "--batch_size", 16), capture_output=True, text=True, timeout=300
    )
    lines = _one_line_stderr(done.stderr)
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
    assert "indices[13] = 50 is not in [0, 10)" in lines[0] and "op Gather" in lines[0]
    assert f"rows 32-47 of {tmp_path / 'bad/a.parquet'}" in lines[0] and "Traceback" not in done.stderr
    assert _files(tmp_path / "out/g") == first

    # A rerun that completes replaces it all: every row once, no staging folder left, a new marker.
    done = subprocess.run(command("big/*.parquet", path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = read_output(tmp_path / "out/g")
    ids = out.column("id").to_numpy()
    assert len(ids) == rows and len(np.unique(ids)) == rows
    assert not glob.glob(str(tmp_path / "out/.*"))
    marker = read_marker(str(tmp_path / "out/g"))
    assert (marker["rows_in"], marker["rows_out"], marker["rows_rejected"]) == (rows, rows, 0)
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        [os.path.basename(p) for p in marker["outputs"]["--output"] + marker["outputs"]["--rejected"]]
        + [os.path.basename(p) for p in marker["files"].values()]  # the summary
        + ["g_SUCCESS"]
    )
    sample = np.argsort(ids)[:: rows // 200]
    assert_close(tensor_column(out, "gradient")[sample], eager_gradients(model, big[ids[sample]]), rtol=1e-4)


def test_a_failing_model_on_the_multi_process_runner_is_one_line_too(tmp_path):
    x = np.random.default_rng(1).uniform(0, 9, size=(60, 3)).astype(np.float32)
    x[7, 0] = -3
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(60), "x": x})
    args = ["--runner", "DirectRunner", "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
    args += ["--input", tmp_path / "in/*.parquet", "--output", tmp_path / "out/g", "--model", _gather_model(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    lines = _one_line_stderr(done.stderr)
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("beam-gradients: the job failed: InvalidArgumentError: indices[7] = -3 is not in [0, 10)")
    assert "worker output: " in lines[0]
    assert not glob.glob(str(tmp_path / "out/g*"))


def test_the_injected_fault_on_the_direct_runner_is_one_line(tmp_path, capfd):
    _data_with_bad_rows(tmp_path)
    faults = tmp_path / "faults"
    faults.mkdir()
    args = ["--runner=DirectRunner", "--input", str(tmp_path / "in/*.parquet"), "--model", save(_mlp(), tmp_path)]
    assert main([*args, "--output", str(tmp_path / "out/g")], fault=FailFirstAttempt(faults)) == 1
    err = _one_line_stderr(capfd.readouterr().err)
    assert len(err) == 1 and err[0].startswith("beam-gradients: the job failed: InjectedFault: injected transient fault")


def test_rows_lost_after_they_were_counted_fail_the_job_naming_the_missing_count(tmp_path, capsys):
    """A table dropped on its way to the sink: the counters saw its rows, the output's footers do not."""
    x = _data_with_bad_rows(tmp_path)
    args = ["--runner=DirectRunner", "--input", str(tmp_path / "in/*.parquet"), "--model", save(_mlp(), tmp_path)]
    args += ["--output", str(tmp_path / "out/g"), "--batch_size", "16"]
    assert main(args) == 0
    first = _files(tmp_path / "out/g")
    assert main(args, fault=DropFirstOutput()) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("beam-gradients: error: ")
    lost = int(err[0].split("error: ")[1].split()[0])
    assert 0 < lost < ROWS and f"the input files hold {ROWS}, the job wrote {ROWS - len(BAD) - lost} out" in err[0]
    assert _files(tmp_path / "out/g") == first  # nothing moved into place
    assert not glob.glob(str(tmp_path / "out/.*"))
    del x


def test_a_column_named_twice_is_an_option_error_naming_the_file_and_column(tmp_path, capsys):
    table = pa.Table.from_arrays(
        [pa.array([1, 2]), pa.array([[1.0, 2.0, 3.0]] * 2), pa.array([0.5, 0.5])], names=["id", "x", "id"]
    )
    os.makedirs(tmp_path / "in")
    pq.write_table(table, tmp_path / "in/twice.parquet")
    args = ["--runner=DirectRunner", "--input", str(tmp_path / "in/*.parquet"), "--model", save(_mlp(), tmp_path)]
    assert main([*args, "--output", str(tmp_path / "out/g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"beam-gradients: error: {tmp_path / 'in/twice.parquet'} has the column 'id' twice; "
                   "Parquet readers cannot tell the two apart (rewrite the file with unique column names)"]


def test_column_names_with_spaces_work_exactly_from_yaml_and_the_command_line(tmp_path):
    model = _mlp()
    x = np.random.default_rng(4).normal(size=(20, 3)).astype(np.float32)
    write_parquet(tmp_path / "in/a.parquet", {" id": np.arange(20), "x ": x, "x": np.zeros((20, 3), np.float32)})
    config = tmp_path / "job.yaml"
    config.write_text('feature_columns: ["x "]\nkeep_columns: [" id"]\n')
    run_on(tmp_path, model, "--config", config, features=None, keys=None)
    out = read_output(tmp_path / "out/g")
    assert out.column_names[0] == " id" and out.column(" id").to_pylist() == list(range(20))
    assert_close(tensor_column(out, "gradient"), eager_gradients(model, x))
    run_on(tmp_path, model, output="cli/g", features="x ", keys=" id")
    assert read_output(tmp_path / "cli/g").column(" id").to_pylist() == list(range(20))


def test_a_zero_byte_file_is_skipped_with_a_warning_and_counted(tmp_path):
    model = _mlp()
    x = np.random.default_rng(4).normal(size=(20, 3)).astype(np.float32)
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(20), "x": x})
    (tmp_path / "in/b.parquet").write_bytes(b"")
    summary = run_on(tmp_path, model)
    assert summary.rows_in == summary.rows_out == 20 and summary.skipped == [str(tmp_path / "in/b.parquet")]
    assert "skipped 1 empty (0-byte) input file(s)" in str(summary)
    assert read_marker(str(tmp_path / "out/g"))["skipped"] == [str(tmp_path / "in/b.parquet")]
    (tmp_path / "in/c.parquet").write_bytes(b"not parquet")  # content that is not Parquet stays an error
    with pytest.raises(Exception, match="c.parquet is not a readable Parquet file"):
        run_on(tmp_path, model)


def test_a_row_whose_prediction_overflows_is_rejected(tmp_path):
    x = keras.Input((2,), name="x")
    model = keras.Model(x, keras.layers.Dense(1, use_bias=False, kernel_initializer=keras.initializers.Constant(1e37))(x))
    values = np.ones((10, 2), np.float32)
    values[6] = 100.0  # 2e39 overflows float32; the gradient (the kernel, 1e37) does not
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(10), "x": values})
    summary = run_on(tmp_path, model, "--emit", "predictions")
    rejected = read_output(tmp_path / "out/g_rejected").to_pylist()
    assert [(r["id"], r["stage"]) for r in rejected] == [(6, "compute")]
    out = read_output(tmp_path / "out/g")
    [prediction] = [c for c in out.column_names if c.startswith("prediction__")]
    assert rejected[0]["reason"] == f"the computed {prediction} is NaN or infinite for this row"
    assert np.isfinite(tensor_column(out, prediction)).all()
    assert summary.rows_out == 9 and 6 not in out.column("id").to_pylist()


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the overflowing sum is looked past, not warned of
def test_finite_gradients_whose_batch_sum_overflows_are_kept_and_only_an_infinite_row_is_rejected(tmp_path):
    """Each row's gradient is the kernel, 3e38 a value: finite, though a batch's sum of them is not."""
    x = keras.Input((4,), name="x")
    kernel = keras.initializers.Constant(3e38)
    model = keras.Model(x, keras.layers.Dense(1, use_bias=False, kernel_initializer=kernel)(x))
    values = np.full((10, 4), 1e-30, np.float32)
    values[3, 1] = 1e10  # its prediction, 3e48, overflows float32: that row alone is rejected
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(10), "x": values})
    summary = run_on(tmp_path, model, "--emit", "predictions")
    rejected = read_output(tmp_path / "out/g_rejected").to_pylist()
    assert [(r["id"], r["stage"]) for r in rejected] == [(3, "compute")]
    out = read_output(tmp_path / "out/g")
    assert summary.rows_out == 9 and out.column("id").to_pylist() == [i for i in range(10) if i != 3]
    assert np.array_equal(tensor_column(out, "gradient"), np.full((9, 4), np.float32(3e38)))  # the kernel


def test_the_engines_outputs_outlive_its_next_batch_in_the_same_buffers():
    """The engine returns views of TensorFlow's memory, not copies: a batch's outputs must survive the caller
    refilling its input buffers and calling again, as the job does while earlier tables wait to be written."""
    x = keras.Input((6,), name="x")
    model = keras.Model(x, {"same": keras.layers.Identity(name="same")(x), "score": keras.layers.Dense(1)(x)})
    engine = GradientEngine(from_keras(model), GradientSpec(output_name="score", emit=("predictions",)), 8)
    rng = np.random.default_rng(5)
    buffer = rng.normal(size=(8, 6)).astype(np.float32)
    first = engine([buffer])
    expected = {name: np.array(values) for name, values in first.items()}
    assert np.array_equal(first["prediction__same"], buffer)  # an input passed straight through
    buffer[:] = rng.normal(size=(8, 6))
    second = engine([buffer])
    for name, values in first.items():
        assert np.array_equal(values, expected[name]), name
    assert np.array_equal(second["prediction__same"], buffer)
    # TensorFlow 2.21 copies its arguments, so the guard for an output sharing an argument's memory is tried alone
    tensor = tf.constant(rng.normal(size=(8, 6)).astype(np.float32))
    argument = np.asarray(tensor)  # an argument that is the output's own memory
    own = _own_array(tensor, [argument])
    assert not np.may_share_memory(own, argument) and np.array_equal(own, argument)
    assert np.may_share_memory(_own_array(tensor, [buffer]), argument)  # no copy where nothing is shared


def test_max_rejected_fraction_writes_everything_then_exits_3(tmp_path, capsys):
    _data_with_bad_rows(tmp_path)
    args = ["--runner=DirectRunner", "--input", str(tmp_path / "in/*.parquet"), "--model", save(_mlp(), tmp_path)]
    args += ["--output", str(tmp_path / "out/g"), "--keep_columns", "id"]
    assert main([*args, "--max_rejected_fraction", "0.01"]) == 3
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "beam-gradients: error: 3.3% of rows were rejected (3 of 90), above --max_rejected_fraction 0.01; "
        "the output was written"
    )
    assert read_output(tmp_path / "out/g").num_rows == ROWS - len(BAD)
    assert main([*args, "--max_rejected_fraction", "0.05"]) == 0


def test_a_job_that_rejected_every_row_says_so_on_its_first_line(tmp_path, capsys):
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(5), "x": pa.array([[1.0, 2.0]] * 5)})  # 2 values, not 3
    args = ["--runner=DirectRunner", "--input", str(tmp_path / "in/*.parquet"), "--model", save(_mlp(), tmp_path)]
    assert main([*args, "--output", str(tmp_path / "out/g")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("EVERY ROW WAS REJECTED (5): 5 x column 'x' has 2 values")  # the top reason, counted
    assert first.endswith("; see the reasons in the rejected rows")


def test_option_errors_exit_2_with_debug_too(tmp_path, capsys):
    assert main(["--runner=DirectRunner", "--batch_size", "0", "--input", "x", "--output", "y", "--model", "z", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "beam-gradients: error: --batch_size must be 1 or more, not 0"
