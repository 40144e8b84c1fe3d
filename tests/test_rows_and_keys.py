"""Every row in comes out once, keys unchanged, across files, row groups, padding and bad rows."""

import os
import re

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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
from transforms.io.files import InputError, match_files
from transforms.io.read import _ReadRowGroup


def _model():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(1)])


def test_keys_and_row_counts_survive_several_files_row_groups_and_padding(tmp_path):
    model = _model()
    rng = np.random.default_rng(7)
    sizes = [101, 1, 250, 0, 77]  # an empty file and a one-row file among them
    start, xs = 0, []
    for i, n in enumerate(sizes):
        x = rng.normal(size=(n, 6)).astype(np.float32)
        keys = [f"row-{start + j}" for j in range(n)]
        table = pa.table(
            {
                "key": pa.array(keys, pa.string()),
                "part": pa.array([i] * n, pa.int32()),
                "x": pa.array(list(x), pa.list_(pa.float32(), 6)),
            }
        )
        pq.write_table(table, tmp_path / f"part-{i}.parquet", row_group_size=max(1, n // 3 or 1))
        xs.append(x)
        start += n
    x = np.concatenate(xs)
    summary = run_on(tmp_path, model, "--batch_size", 32, data="part-*.parquet", keys="key,part")
    out = read_output(tmp_path / "out/g")
    total = sum(sizes)
    assert out.num_rows == total
    assert sorted(out.column("key").to_pylist()) == sorted(f"row-{i}" for i in range(total))
    assert out.schema.field("key").type == pa.string() and out.schema.field("part").type == pa.int32()
    order = np.argsort([int(k.split("-")[1]) for k in out.column("key").to_pylist()])
    assert_close(tensor_column(out, "gradient")[order], eager_gradients(model, x, lambda y: y))
    c = summary.counters
    assert c["rows_in"] == c["rows_out"] == total and c["rows_rejected"] == 0
    assert c["padded_rows"] == c["batches"] * 32 - total


def test_bad_rows_go_to_the_rejected_output_and_their_neighbours_are_computed(tmp_path):
    model = _model()
    rng = np.random.default_rng(8)
    rows = 60
    x = rng.normal(size=(rows, 6)).astype(np.float32)
    values = [list(map(float, r)) for r in x]
    values[3] = None  # null
    values[10] = values[10][:5]  # wrong length
    values[11][2] = float("nan")  # NaN
    values[20][0] = float("inf")  # infinity
    values[21][4] = None  # null inside the list
    table = pa.table({"id": np.arange(rows), "x": pa.array(values, pa.list_(pa.float64()))})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=25)
    summary = run_on(tmp_path, model, "--batch_size", 16, data="in.parquet")
    bad = {3: "is null", 10: "has 5 values", 11: "NaN or infinity", 20: "NaN or infinity", 21: "null value"}
    rejected = by_key(read_output(tmp_path / "out/g_rejected"))
    assert rejected.column("id").to_pylist() == sorted(bad)
    for row_id, reason in zip(rejected.column("id").to_pylist(), rejected.column("reason").to_pylist()):
        assert bad[row_id] in reason and "'x'" in reason
    assert set(rejected.column("source_file").to_pylist()) == {str(tmp_path / "in.parquet")}
    out = by_key(read_output(tmp_path / "out/g"))
    good = np.array([i for i in range(rows) if i not in bad])
    assert out.column("id").to_pylist() == good.tolist()
    assert_close(tensor_column(out, "gradient"), eager_gradients(model, x[good], lambda y: y))
    c = summary.counters
    assert c["rows_in"] == rows == c["rows_out"] + c["rows_rejected"] and c["rows_rejected"] == len(bad)


def test_a_huge_row_group_is_read_in_bounded_record_batches(tmp_path):
    model = _model()
    rows = 3000
    x = np.random.default_rng(9).normal(size=(rows, 6)).astype(np.float32)
    write_parquet(tmp_path / "in.parquet", {"id": np.arange(rows), "x": x}, row_group_size=rows)
    assert pq.ParquetFile(tmp_path / "in.parquet").metadata.num_row_groups == 1
    summary = run_on(tmp_path, model, "--batch_size", 128, "--read_batch_rows", 500, data="in.parquet")
    out = by_key(read_output(tmp_path / "out/g"))
    assert out.column("id").to_pylist() == list(range(rows))
    assert_close(tensor_column(out, "gradient"), eager_gradients(model, x, lambda y: y))
    assert summary.counters["batches"] == -(-rows // 128)
    # The reader itself hands out record batches of at most --read_batch_rows rows.
    read = list(_ReadRowGroup(["id", "x"], 500).process((str(tmp_path / "in.parquet"), 0)))
    assert [element.batch.num_rows for element in read] == [500] * 6


def test_files_that_disagree_with_the_first_are_named_before_any_compute(tmp_path):
    model = _model()
    x = np.zeros((4, 6), np.float32)
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(4), "x": x})
    write_parquet(tmp_path / "in/b.parquet", {"id": np.arange(4).astype(np.int32), "x": x})
    path = save(model, tmp_path)
    with pytest.raises(InputError, match=r"b.parquet disagrees with .*a.parquet: column 'id' is int32 there, int64"):
        run_on(tmp_path, path)
    write_parquet(tmp_path / "in/b.parquet", {"id": np.arange(4), "other": x})
    with pytest.raises(InputError, match=r"b.parquet has no column 'x'"):
        run_on(tmp_path, path)
    assert not (tmp_path / "out").exists()


def test_an_empty_first_file_whose_columns_are_typed_null_is_not_what_the_job_plans_by(tmp_path):
    """pandas writes an empty object column as type null; such a file has no rows to decode, so it neither blocks
    the job nor is checked against the others' types."""
    model = _model()
    x = np.random.default_rng(3).normal(size=(5, 6)).astype(np.float32)
    pq.write_table(pa.table({"id": pa.array([], pa.int64()), "x": pa.nulls(0)}), tmp_path / "in-0.parquet")
    write_parquet(tmp_path / "in-1.parquet", {"id": np.arange(5), "x": x})
    summary = run_on(tmp_path, model, data="in-*.parquet")
    out = by_key(read_output(tmp_path / "out/g"))
    assert (summary.rows_in, summary.rows_out, summary.rows_rejected) == (5, 5, 0)
    assert_close(tensor_column(out, "gradient"), eager_gradients(model, x, lambda y: y))


def test_a_file_whose_name_holds_a_wildcard_is_found_once_escaped_and_the_error_says_how(tmp_path):
    path = write_parquet(tmp_path / "run[1].parquet", {"id": np.arange(3), "x": np.zeros((3, 6), np.float32)})
    with pytest.raises(InputError, match=re.escape("write a literal '[' as '[[]'")):
        match_files(str(path))
    assert match_files(str(tmp_path / "run[[]1].parquet")).paths == [str(path)]


def test_a_relative_pattern_with_a_wildcard_in_its_first_part_matches_in_the_working_folder(tmp_path, monkeypatch):
    """Beam's local match found nothing for `*.parquet` run from the data's folder."""
    write_parquet(tmp_path / "a.parquet", {"id": np.arange(2), "x": np.zeros((2, 6), np.float32)})
    monkeypatch.chdir(tmp_path)
    assert match_files("*.parquet").paths == match_files("a*").paths == ["a.parquet"]
    assert match_files("./*.parquet").paths == ["./a.parquet"]


def test_a_rerun_replaces_the_earlier_output_even_with_another_shard_count(tmp_path):
    model = _model()
    rows = 500
    x = np.random.default_rng(14).normal(size=(rows, 6)).astype(np.float32)
    for i in range(4):
        write_parquet(
            tmp_path / f"in/{i}.parquet", {"id": np.arange(i * 125, (i + 1) * 125), "x": x[i * 125 : (i + 1) * 125]}
        )
    path = save(model, tmp_path)
    run_on(tmp_path, path, "--batch_size", 64, "--direct_num_workers", 2, "--direct_running_mode", "multi_processing")
    assert len(list((tmp_path / "out").glob("g-?????-of-00002.parquet"))) == 2
    summary = run_on(tmp_path, path, "--batch_size", 64)
    assert [os.path.basename(f) for f in summary.outputs] == ["g-00000-of-00001.parquet"]
    out = read_output(tmp_path / "out/g")
    assert sorted(out.column("id").to_pylist()) == list(range(rows))
