"""The output contract (issue 17): no output over an input, a marker that vouches for exactly what it lists, in its
own folder, and says so when it is corrupt; an influence input needs its marker unless --allow_incomplete."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.outputs import CorruptMarker, read_marker, require_marker
from pipeline.options import OptionsError, check_prefix
from pipeline.outputs import OutputClash, check_no_clash, check_pattern_untouched
from pipeline.reader import IncompleteOutput, OutputMismatch, key_columns, output_columns, read_arrays
from pipeline.report import write_report
from transforms.io.files import InputError
from pipeline.report.build import main as report_main
from pipeline.run import main
from tests.conftest import run_on, save, write_parquet
from tests.projections import write_projections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = "--runner=DirectRunner"


def _mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)])


def _data(path, rows=30, bad=()):
    x = np.random.default_rng(0).normal(size=(rows, 3)).astype(np.float32)
    x[list(bad)] = np.nan  # rejected rows
    return write_parquet(path, {"id": np.arange(rows), "x": x})


@pytest.fixture
def done(tmp_path):
    """A complete main-job output at tmp_path/out/g (30 rows in, 2 rejected), two shards."""
    _data(tmp_path / "in/a.parquet", bad=(3, 7))
    run_on(tmp_path, _mlp(), "--num_shards", 2)
    return tmp_path


def _bytes(paths):
    return {str(p): open(p, "rb").read() for p in paths}


# ---------------------------------------------------------------- outputs that overwrite inputs


def test_an_output_over_its_own_input_is_refused_on_the_command_line(tmp_path):
    source = _data(tmp_path / "out/g-00000-of-00001.parquet")  # an earlier run's output, read again
    model = save(_mlp(), tmp_path)
    before = _bytes([source])
    env = dict(os.environ, PYTHONPATH=ROOT)
    args = ["--runner", "DirectRunner", "--input", str(tmp_path / "out/g-*.parquet"), "--output", str(tmp_path / "out/g")]
    args += ["--model", model, "--feature_columns", "x"]
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "--output" in err[0] and "--input" in err[0] and source in err[0], err
    assert _bytes([source]) == before
    assert sorted(os.listdir(tmp_path / "out")) == ["g-00000-of-00001.parquet"]


@pytest.mark.parametrize("what", ["rejected", "summary-config"])
def test_any_file_the_main_job_writes_over_a_file_it_reads_is_refused(tmp_path, capsys, what):
    _data(tmp_path / "in/a.parquet")
    model = save(_mlp(), tmp_path)
    args = [RUNNER, "--input", str(tmp_path / "in/*.parquet"), "--model", model, "--feature_columns", "x"]
    if what == "rejected":  # the rejected rows' shards would replace the input
        victim = _data(tmp_path / "in/bad-00000-of-00001.parquet")
        args[2] = str(tmp_path / "in/[ab]*.parquet")  # a.parquet and bad-..., not the output's in/g-...
        args += ["--output", str(tmp_path / "in/g"), "--rejected", str(tmp_path / "in/bad")]
        options = ("--rejected", "--input")
    else:  # the summary <output>-summary.json would replace the config file (YAML reads JSON)
        victim = str(tmp_path / "out/g-summary.json")
        os.makedirs(tmp_path / "out")
        open(victim, "w").write(json.dumps({"batch_size": 8}))
        args += ["--output", str(tmp_path / "out/g"), "--config", victim]
        options = ("--output", "--config")
    before = _bytes([victim])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(o in err[0] for o in options), err
    assert _bytes([victim]) == before


def test_an_output_its_input_pattern_would_match_is_refused_before_there_is_one(tmp_path, capsys):
    """A first run into a folder its --input pattern reads would pass the file check; its rerun would read the
    first run's output as input (and fail on its columns, or worse). Refused on the first run, before any compute."""
    source = _data(tmp_path / "in/a.parquet")
    model = save(_mlp(), tmp_path)
    for pattern in [str(tmp_path / "in/*.parquet"), str(tmp_path / "in")]:  # a folder reads its *.parquet
        args = [RUNNER, "--input", pattern, "--model", model, "--feature_columns", "x"]
        args += ["--output", str(tmp_path / "in/g")]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        shard = str(tmp_path / "in/g-00000-of-00001.parquet")
        assert len(err) == 1 and f"--input {pattern!r} matches {shard}, which --output writes" in err[0], err
    assert os.listdir(tmp_path / "in") == ["a.parquet"] and _bytes([source])


def test_an_influence_output_over_its_training_input_is_refused(tmp_path, capsys):
    rng = np.random.default_rng(0)
    train = write_projections(tmp_path / "p/g", {"id": np.arange(8)}, rng.normal(size=(8, 4)))
    write_projections(tmp_path / "q/p", {"qid": [1]}, rng.normal(size=(1, 4)))
    files = train + [str(tmp_path / "p/g_SUCCESS")]
    before = _bytes(files)
    status = main(["influence", RUNNER, "--train", str(tmp_path / "p/g-*.parquet"), "--query", str(tmp_path / "q/*.parquet"),
                   "--output", str(tmp_path / "p/g")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "--output" in err[0] and "--train" in err[0], err
    assert _bytes(files) == before
    assert sorted(os.listdir(tmp_path / "p")) == ["g-00000-of-00001.parquet", "g_SUCCESS"]


def test_an_influence_output_its_training_pattern_would_match_is_refused_before_there_is_one(tmp_path, capsys):
    rng = np.random.default_rng(0)
    write_projections(tmp_path / "p/g", {"id": np.arange(8)}, rng.normal(size=(8, 4)))
    write_projections(tmp_path / "q/p", {"qid": [1]}, rng.normal(size=(1, 4)))
    args = ["influence", RUNNER, "--train", str(tmp_path / "p/*.parquet"), "--query", str(tmp_path / "q/*.parquet")]
    assert main(args + ["--output", str(tmp_path / "p/infl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--train" in err[0] and "matches" in err[0] and "which --output writes" in err[0], err
    assert main(args + ["--output", str(tmp_path / "i/infl"), "--self_influence", "--self_influence_output",
                        str(tmp_path / "i/s[1]")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--self_influence_output" in err[0] and "holds '['" in err[0], err
    assert sorted(os.listdir(tmp_path / "p")) == ["g-00000-of-00001.parquet", "g_SUCCESS"]
    assert not os.path.exists(tmp_path / "i")


def test_checks_hold_where_the_working_folder_holds_a_wildcard(tmp_path, monkeypatch):
    """Relative prefixes and patterns put the working folder's name into a glob: `exp[1]` must stay literal there.
    A job may not write under such a folder at all (Beam's sink globs the absolute path); the report may read."""
    folder = tmp_path / "exp[1]"
    (folder / "out").mkdir(parents=True)
    monkeypatch.chdir(folder)
    with pytest.raises(OutputClash, match="overlap"):
        check_no_clash({"--output": "out/g", "--rejected": "out/g-x"})
    with pytest.raises(OutputClash, match="which --output writes"):
        check_pattern_untouched({"--output": "out/g"}, {"--input": "out/*.parquet"})
    with pytest.raises(OptionsError, match=re.escape(f"--output 'out/g' ({folder}/out/g) holds '['")):
        check_prefix("out/g", "--output")
    check_prefix("out/g", "OUTPUT_PREFIX", written=False)  # a report reads such a folder


def test_a_remote_prefix_with_an_empty_or_dot_segment_is_refused_before_anything_is_read():
    """On gs://, `data//g` passed the overlap checks against `data/*.parquet` while Beam's joins wrote the shards
    at `data/g-...`, inside that glob: each rerun read its earlier output (300, 600, then 900 rows)."""
    from pipeline.options import GradientOptions, check_values, parse

    job = parse(["--input", "gs://b/data/*.parquet", "--output", "gs://b/data//g", "--model", "m.keras"])
    with pytest.raises(OptionsError, match=re.escape("--output 'gs://b/data//g' holds '//': ") + ".*; give gs://b/data/g$"):
        check_values(job.view_as(GradientOptions))
    with pytest.raises(OptionsError, match=re.escape("--rejected 'gs://b/out/./r' holds '/./'")):
        check_prefix("gs://b/out/./r", "--rejected")
    with pytest.raises(OptionsError, match=re.escape("holds '/../'") + ".*look$"):
        check_prefix("gs://b/out/../g", "--output")
    check_prefix("gs://b/data/g", "--output")
    with pytest.raises(OptionsError, match=re.escape("; give hdfs:///user/g")):  # the host left empty, as given
        check_prefix("hdfs:///user/./g", "--output")


def test_influence_needs_its_inputs_markers_unless_allow_incomplete(tmp_path, capsys):
    rng = np.random.default_rng(0)
    write_projections(tmp_path / "train/p", {"id": np.arange(8)}, rng.normal(size=(8, 4)))
    query = write_projections(tmp_path / "query/p", {"qid": [1, 2]}, rng.normal(size=(2, 4)), marker=False)
    args = ["influence", RUNNER, "--train", str(tmp_path / "train/*.parquet"), "--query", str(tmp_path / "query/*.parquet")]
    assert main(args + ["--output", str(tmp_path / "out/a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--query" in err[0] and query[0] in err[0] and "--allow_incomplete" in err[0], err
    assert not os.path.exists(tmp_path / "out")
    assert main(args + ["--output", str(tmp_path / "out/b"), "--allow_incomplete"]) == 0
    assert read_marker(str(tmp_path / "out/b"))["query_rows"] == 2


def test_rejected_rows_in_another_folder_are_refused(tmp_path, capsys):
    _data(tmp_path / "in/a.parquet")
    args = [RUNNER, "--input", str(tmp_path / "in/*.parquet"), "--model", save(_mlp(), tmp_path), "--feature_columns", "x"]
    assert main(args + ["--output", str(tmp_path / "out/g"), "--rejected", str(tmp_path / "elsewhere/r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rejected" in err[0] and "must sit in the folder of --output" in err[0], err


# ---------------------------------------------------------------- the marker vouches for exactly what it lists


def test_the_marker_lists_names_in_its_folder_with_rows_and_bytes(done):
    marker = read_marker(str(done / "out/g"))
    names = marker["outputs"]["--output"] + marker["outputs"]["--rejected"]
    assert all("/" not in n for n in names) and marker["files"] == {"summary": "g-summary.json"}
    for name in names:
        path = done / "out" / name
        assert marker["shards"][name] == {"rows": pq.read_metadata(path).num_rows, "bytes": os.path.getsize(path)}
    assert sum(marker["shards"][n]["rows"] for n in marker["outputs"]["--output"]) == marker["rows_out"] == 28


def test_a_shard_cut_short_is_refused_by_the_reader_and_flagged_by_the_report(done, tmp_path):
    prefix = str(done / "out/g")
    marker = read_marker(prefix)
    name = max(marker["outputs"]["--output"], key=lambda n: marker["shards"][n]["rows"])
    shard = done / "out" / name
    table = pq.read_table(shard)
    pq.write_table(table.slice(5), shard)  # five rows cut out, the marker untouched
    with pytest.raises(OutputMismatch) as raised:
        read_arrays(prefix)
    assert str(shard) in str(raised.value) and "\n" not in str(raised.value)
    page = open(write_report(prefix, output=str(tmp_path / "r.html"))).read()
    assert f'<p class="warning">A shard differs from what the marker lists: {shard}' in page

    os.remove(shard)  # a listed shard gone
    with pytest.raises(OutputMismatch, match="missing"):
        read_arrays(prefix)
    assert len(read_arrays(prefix, require_complete=False)["id"]) == 28 - table.num_rows  # what is there, as asked


def test_a_marker_entry_outside_its_folder_is_refused(done, tmp_path):
    prefix = str(done / "out/g")
    other = tmp_path / "other"
    _data(other / "in/a.parquet", bad=(1, 2, 3, 4))
    run_on(other, _mlp())  # another output, with 4 rejected rows, elsewhere
    marker = read_marker(prefix)
    good = json.loads(json.dumps(marker))  # a copy, before the entries below are changed
    for entry in [str(other / "out/g_rejected-00000-of-00001.parquet"), "../other/out/g_rejected-00000-of-00001.parquet"]:
        marker["outputs"]["--rejected"] = [entry]
        open(prefix + "_SUCCESS", "w").write(json.dumps(marker))
        with pytest.raises(CorruptMarker) as raised:
            read_arrays(prefix)
        assert entry in str(raised.value) and "refused" in str(raised.value)
        page = open(write_report(prefix, output=str(tmp_path / "r.html"))).read()
        assert "Corrupt marker" in page and 'data-count="4"' not in page  # not the other output's rejected rows
    # a marker written before names were relative: absolute paths inside the folder still read
    good["outputs"] = {k: [str(done / "out" / n) for n in v] for k, v in good["outputs"].items()}
    open(prefix + "_SUCCESS", "w").write(json.dumps(good))
    assert len(read_arrays(prefix)["id"]) == 28


def test_an_output_is_never_read_as_one_whose_name_extends_its_own(tmp_path):
    """`out/g` is neither `out/g-2` (whose shards Beam's `out/g-*-of-NNNNN` pattern matches) nor its rejected rows;
    a name with `..` inside it is a name, not a way out of the folder."""
    _data(tmp_path / "in/a.parquet", bad=(3,))
    run_on(tmp_path, _mlp(), output="out/g-2")
    run_on(tmp_path, _mlp(), output="out/run..1")
    with pytest.raises(IncompleteOutput):
        read_arrays(str(tmp_path / "out/g"))
    assert len(read_arrays(str(tmp_path / "out/g-2"))["id"]) == 29
    assert len(read_arrays(str(tmp_path / "out/run..1"))["id"]) == 29
    prefix = str(tmp_path / "out/run..1")
    marker = read_marker(prefix)
    marker["outputs"]["--rejected"] = [".."]
    open(prefix + "_SUCCESS", "w").write(json.dumps(marker))
    with pytest.raises(CorruptMarker, match="not a file name"):
        read_arrays(prefix)


def test_the_reader_names_a_column_the_output_lacks_and_types_a_zero_row_output(tmp_path):
    _data(tmp_path / "in/a.parquet", rows=4, bad=(0, 1, 2, 3))  # every row rejected: a zero-row output
    run_on(tmp_path, _mlp())
    prefix = str(tmp_path / "out/g")
    with pytest.raises(KeyError) as raised:  # and an InputError: the report's command says it in one line
        read_arrays(prefix, ["id", "gradeint"])
    assert isinstance(raised.value, InputError)
    assert "'gradeint'" in str(raised.value) and "gradient" in str(raised.value)
    empty = read_arrays(prefix)
    assert empty["id"].dtype == np.int64 and empty["gradient"].shape == (0, 3)
    assert set(read_arrays(prefix, ["gradient"])) == {"gradient"}


def test_the_report_never_writes_its_page_over_a_file_it_reads(done, tmp_path, capsys):
    prefix = str(done / "out/g")
    marker = read_marker(prefix)
    shard = str(done / "out" / marker["outputs"]["--output"][0])
    before = _bytes(glob.glob(prefix + "*"))
    for page in [shard, prefix + "_SUCCESS", prefix + "-summary.json", str(done / "in/a.parquet")]:
        assert report_main([prefix, "--input", str(done / "in/*.parquet"), "--output", page]) == 2
        err = capsys.readouterr().err
        assert f"the report page {page} would replace {page}, which the report reads" in err
        assert len(err.splitlines()) == 1
        with pytest.raises(OutputClash):
            write_report(prefix, str(done / "in/*.parquet"), output=page)
    assert _bytes(glob.glob(prefix + "*")) == before and len(read_arrays(prefix)["id"]) == 28


@pytest.mark.parametrize("text", ["{not json", '["a list"]', '{"outputs": {"--output": "g-00000-of-00001.parquet"}}'])
def test_a_corrupt_marker_is_called_corrupt(done, tmp_path, text):
    prefix = str(done / "out/g")
    open(prefix + "_SUCCESS", "w").write(text)
    with pytest.raises(CorruptMarker) as raised:
        read_arrays(prefix)
    assert f"{prefix}_SUCCESS: corrupt marker" in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(RuntimeError, match="corrupt marker"):
        require_marker(prefix)  # what the DAGs' completion tasks call
    page = open(write_report(prefix, output=str(tmp_path / "r.html"))).read()
    assert "Corrupt marker" in page and "_SUCCESS marker: this output is incomplete" not in page


# ---------------------------------------------------------------- declared columns


def test_every_column_is_declared_with_its_kind_input_and_feature(tmp_path):
    """beam_gradients.columns names every column in the schema's order, with the engine's kind: readers need no names."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    n = 12
    rng = np.random.default_rng(1)
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(n), "a": rng.normal(size=n), "b": rng.normal(size=n),
                                              "c": rng.normal(size=n)})
    run_on(tmp_path, model, "--emit", "predictions,norm", features="a,b,c")
    prefix = str(tmp_path / "out/g")
    declared = output_columns(prefix)
    names = pq.read_schema(glob.glob(prefix + "-*.parquet")[0]).names
    assert [d["column"] for d in declared] == names
    kinds = {d["column"]: d["kind"] for d in declared}
    assert kinds["id"] == "key" and key_columns(prefix) == ["id"]
    gradients = [d for d in declared if d["kind"] == "gradient"]
    assert [d["feature"] for d in gradients] == ["a", "b", "c"]  # one float column per stacked feature, in order
    assert len({d["output"] for d in gradients}) == 1 and len({d["input"] for d in gradients}) == 1  # one model input
    assert gradients[0]["input"] and all(d["input"] is None for d in declared if d["kind"] == "key")
    assert sorted(k for k in kinds.values() if k not in ("key", "gradient")) == ["norm", "prediction"]
    # the report's sections come from these: one feature-importance block of the three features
    page = open(write_report(prefix)).read()
    assert page.count('data-chart="feature-importance"') == 1


def test_influence_outputs_declare_query_and_training_keys(tmp_path):
    rng = np.random.default_rng(0)
    write_projections(tmp_path / "train/p", {"id": np.arange(8)}, rng.normal(size=(8, 4)))
    write_projections(tmp_path / "query/p", {"qid": [1, 2]}, rng.normal(size=(2, 4)))
    out = str(tmp_path / "out/inf")
    assert main(["influence", RUNNER, "--train", str(tmp_path / "train/*.parquet"), "--query",
                 str(tmp_path / "query/*.parquet"), "--output", out, "--top_k", "2", "--self_influence"]) == 0
    kinds = [(d["column"], d["kind"]) for d in output_columns(out)]
    assert kinds == [("qid", "key"), ("rank", "rank"), ("kind", "influence_kind"), ("train__id", "train_key"), ("score", "score")]
    selfs = [(d["column"], d["kind"]) for d in output_columns(out + "_self_influence")]
    assert selfs == [("train__id", "train_key"), ("self_influence", "self_influence")]


def test_a_freely_named_self_influence_output_is_vouched_for_by_the_marker_beside_it(tmp_path):
    rng = np.random.default_rng(0)
    write_projections(tmp_path / "train/p", {"id": np.arange(8)}, rng.normal(size=(8, 4)))
    out, selfs = str(tmp_path / "out/neighbours"), str(tmp_path / "out/ranking")
    assert main(["influence", RUNNER, "--train", str(tmp_path / "train/*.parquet"), "--query", str(tmp_path / "train/*.parquet"),
                 "--output", out, "--top_k", "2", "--self_influence", "--self_influence_output", selfs]) == 0
    # complete: the influence job's marker lists the ranking's shard
    table = read_arrays(selfs)
    assert sorted(table["train__id"].tolist()) == list(range(8))
    page = open(write_report(selfs, output=str(tmp_path / "r.html"))).read()
    assert "incomplete" not in page and "complete: the marker lists every shard" in page
    # the influence page's Run section counts what the influence job's marker holds: its queries and training rows
    shown = open(write_report(out, output=str(tmp_path / "i.html"))).read()
    for label, count in (("query rows", 8), ("training rows", 8), ("rows out", 8 * 2 * 2), ("self-influence rows", 8)):
        assert f"<td>{label}</td><td>{count}</td>" in shown, label
    # a shard the marker does not list beside it is not vouched for: the page says the output is incomplete
    os.remove(out + "_SUCCESS")
    page = open(write_report(selfs, output=str(tmp_path / "r2.html"))).read()
    assert "incomplete: no marker" in page
    with pytest.raises(Exception, match="marker"):
        read_arrays(selfs)
