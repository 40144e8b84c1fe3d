"""`beam-gradients influence` against brute-force numpy, on Parquet files that follow the projection contract."""

from __future__ import annotations

import glob
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.outputs import read_marker, shard_entries
from pipeline.run import main
from tests.projections import write_projections
from transforms.influence.topk import TopK, block_top_k

RUNNER = "--runner=DirectRunner"


def influence(tmp_path, *args, output="out/inf"):
    """Run the influence job in-process; its exit status."""
    return main(["influence", RUNNER, "--output", str(tmp_path / output), *[str(a) for a in args]])


def read(prefix) -> pa.Table:
    files = sorted(glob.glob(f"{prefix}-?????-of-?????.parquet"))
    assert files, f"no output shards under {prefix}"
    return pa.concat_tables([pq.read_table(f) for f in files])


# ---------------------------------------------------------------- the brute-force reference


def unit(x):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1)


def brute_scores(score, trains, queries, weights, damping=0.0):
    """(queries, train rows) in float64, straight from the formulas."""
    total = 0
    for t, q, w in zip(trains, queries, weights):
        t, q = t.astype(np.float64), q.astype(np.float64)
        if score == "tracin":
            s = q @ t.T
        elif score == "cosine":
            s = unit(q) @ unit(t).T
        else:
            s = q @ np.linalg.inv(t.T @ t + damping * np.eye(t.shape[1])) @ t.T
        total = total + w * s
    return total


def brute_self(score, trains, weights, damping=0.0):
    total = 0
    for t, w in zip(trains, weights):
        t = t.astype(np.float64)
        if score == "tracin":
            total = total + w * (t * t).sum(1)
        else:
            total = total + w * np.einsum("ij,jk,ik->i", t, np.linalg.inv(t.T @ t + damping * np.eye(t.shape[1])), t)
    return total


def brute_top(scores, train_keys, query_keys, k):
    """{(query, kind): [(train key, score), ...]} best first; ties to the smaller key."""
    expected = {}
    for i, q in enumerate(query_keys):
        for kind, sign in (("proponent", -1), ("opponent", 1)):
            order = np.lexsort((train_keys, sign * scores[i]))[:k]
            expected[(q, kind)] = [(train_keys[j], scores[i, j]) for j in order]
    return expected


def got_top(table, query_key="qid", train_key="train__id"):
    got = {}
    for row in table.to_pylist():
        got.setdefault((row[query_key], row["kind"]), []).append((row["rank"], row[train_key], row["score"]))
    for key, rows in got.items():
        assert [r[0] for r in rows] == list(range(1, len(rows) + 1)), f"ranks of {key} not 1..n in order"
        got[key] = [(r[1], r[2]) for r in rows]
    return got


def assert_top(got, expected, rtol=1e-5, atol=1e-5):
    assert got.keys() == expected.keys()
    for key in expected:
        assert [g[0] for g in got[key]] == [e[0] for e in expected[key]], key
        np.testing.assert_allclose([g[1] for g in got[key]], [e[1] for e in expected[key]], rtol=rtol, atol=atol)


def make_inputs(tmp_path, checkpoints, rows=240, queries=6, dim=8, integer=False, seed=0, dtype="float32"):
    """Training and query projections per checkpoint, written shuffled over 3 files with small row groups."""
    rng = np.random.default_rng(seed)
    train_ids = rng.permutation(np.arange(rows) * 3 + 10)  # not in file order, so ties are broken by key, not position
    query_ids = np.arange(queries) + 1000
    trains, query_phis, train_args, query_args = [], [], [], []
    for c in range(checkpoints):
        if integer:  # small integers: exact float32 scores, so many exact ties
            t = rng.integers(-2, 3, size=(rows, dim)).astype(np.float32)
            q = rng.integers(-2, 3, size=(queries, dim)).astype(np.float32)
        else:
            t = rng.normal(size=(rows, dim)).astype(np.float32)
            q = rng.normal(size=(queries, dim)).astype(np.float32)
        shuffle = rng.permutation(rows)  # each checkpoint's files hold the rows in another order
        write_projections(tmp_path / f"train{c}/p", {"id": train_ids[shuffle]}, t[shuffle], files=3,
                          row_group_size=37, model_sha256=f"{c:064x}", dtype=dtype)
        write_projections(tmp_path / f"query{c}/p", {"qid": query_ids}, q, model_sha256=f"{c:064x}", dtype=dtype)
        trains.append(t.astype(dtype).astype(np.float32))
        query_phis.append(q.astype(dtype).astype(np.float32))
        train_args += ["--train", tmp_path / f"train{c}/*.parquet"]
        query_args += ["--query", tmp_path / f"query{c}/*.parquet"]
    return trains, query_phis, train_ids, query_ids, train_args + query_args


# ---------------------------------------------------------------- top-k alone (numpy, Arrow)


def test_block_top_k_breaks_ties_by_key_order():
    scores = np.array([[1, 3, 3, 3, 0, 3]], np.float32)
    order = np.array([5, 4, 3, 2, 1, 0])  # the last column has the smallest key
    chosen = block_top_k(scores, order, 3, largest=True)
    assert sorted(chosen[0].tolist()) == [2, 3, 5]  # the three 3s with the smallest keys
    assert sorted(block_top_k(scores, order, 2, largest=False)[0].tolist()) == [0, 4]


def test_top_k_over_many_blocks_equals_one_sort():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, size=(5, 900)).astype(np.float32)  # ties everywhere
    keys = rng.permutation(900)
    best = TopK(queries=5, k=7, largest=False)
    for start in range(0, 900, 50):  # more than COMPACT_EVERY * k per query: compaction and its bar run
        best.add_block(scores[:, start : start + 50], pa.table({"id": keys[start : start + 50]}))
    result = best.result()
    for q in range(5):
        mine = result.filter(pa.compute.equal(result.column("__query"), q))
        expected = np.lexsort((keys, scores[q]))[:7]
        assert mine.column("id").to_pylist() == keys[expected].tolist()
        assert mine.column("__rank").to_pylist() == list(range(1, 8))


# ---------------------------------------------------------------- the job against brute force


@pytest.mark.parametrize("score", ["tracin", "cosine", "trak"])
@pytest.mark.parametrize("checkpoints", [1, 2])
def test_scores_and_top_k_match_brute_force(tmp_path, score, checkpoints):
    trains, queries, train_ids, query_ids, inputs = make_inputs(tmp_path, checkpoints, seed=checkpoints)
    weights = [1.0, 0.25][:checkpoints]
    damping = 0.5 if score == "trak" else 0.0
    extra = ["--checkpoint_weights", ",".join(map(str, weights)), "--damping", damping]
    extra += ["--self_influence"] if score != "cosine" else []
    assert influence(tmp_path, *inputs, "--score", score, "--top_k", 5, "--read_batch_rows", 50, *extra) == 0

    scores = brute_scores(score, trains, queries, weights, damping)
    expected = brute_top(scores, train_ids, query_ids, 5)
    table = read(tmp_path / "out/inf")
    assert table.column_names == ["qid", "rank", "kind", "train__id", "score"]
    assert table.num_rows == len(query_ids) * 2 * 5
    assert_top(got_top(table), expected, rtol=1e-4)
    marker = read_marker(str(tmp_path / "out/inf"))  # staged, committed, marked like the main job's output
    assert (marker["rows_out"], marker["query_rows"]) == (table.num_rows, len(query_ids))
    if score != "cosine":
        self_table = read(tmp_path / "out/inf_self_influence").sort_by("train__id")
        order = np.argsort(train_ids)
        assert self_table.column("train__id").to_pylist() == train_ids[order].tolist()
        np.testing.assert_allclose(
            self_table.column("self_influence").to_numpy(), brute_self(score, trains, weights, damping)[order],
            rtol=1e-4,
        )


def _trak_scores(tmp_path, train, query, damping, *extra):
    """The job's TRAK scores of every query against every training row, beside float64 numpy's; and (ΦᵀΦ + λI)⁻¹."""
    write_projections(tmp_path / "train/p", {"id": np.arange(len(train))}, train)
    write_projections(tmp_path / "query/p", {"qid": np.arange(len(query))}, query)
    args = ["--train", tmp_path / "train/*.parquet", "--query", tmp_path / "query/*.parquet", "--score", "trak",
            "--damping", damping, "--top_k", len(train), "--kinds", "proponent", *extra]
    assert influence(tmp_path, *args) == 0
    t, q = train.astype(np.float64), query.astype(np.float64)
    inverse = np.linalg.inv(t.T @ t + damping * np.eye(t.shape[1]))
    exact = q @ inverse @ t.T
    table = read(tmp_path / "out/inf")
    got = np.full_like(exact, np.nan)
    got[table.column("qid").to_numpy(), table.column("train__id").to_numpy()] = table.column("score").to_numpy()
    return got, exact, inverse


def test_trak_on_projections_with_a_large_shared_direction_equals_float64_numpy(tmp_path):
    """Rows that share a large offset (as gradients share a mean direction): ΦᵀΦ multiplied in float32 lost the
    small eigenvalues beside it, and the scores were off by 7e-4 of the largest; in float64, by 3e-6."""
    rng = np.random.default_rng(7)
    train = (rng.normal(size=(1000, 16)) + 30).astype(np.float32)
    query = (rng.normal(size=(5, 16)) + 30).astype(np.float32)
    got, exact, _ = _trak_scores(tmp_path, train, query, 1e-3)
    error = np.abs(got - exact).max() / np.abs(exact).max()
    assert error <= 2e-5, error


def test_trak_with_fewer_rows_than_k_and_a_small_damping_equals_float64_numpy(tmp_path):
    """What the job asks for when the rows are fewer than k: a damping. (ΦᵀΦ + λI)⁻¹ then scales each query's
    part outside the rows' span by 1/λ, which the training rows cancel only in exact arithmetic; a float32 product
    was off by 4% of the largest score here, with some queries' top 3 reordered."""
    rng = np.random.default_rng(0)
    train = (rng.normal(size=(40, 64)) + 30).astype(np.float32)
    query = (rng.normal(size=(5, 64)) + 30).astype(np.float32)
    got, exact, inverse = _trak_scores(tmp_path, train, query, 1e-3, "--self_influence")
    assert np.abs(got - exact).max() / np.abs(exact).max() <= 1e-5
    t = train.astype(np.float64)
    self_table = read(tmp_path / "out/inf_self_influence")
    self_got = np.empty(len(train))
    self_got[self_table.column("train__id").to_numpy()] = self_table.column("self_influence").to_numpy()
    np.testing.assert_allclose(self_got, np.einsum("ij,jk,ik->i", t, inverse, t), rtol=1e-5)


def test_ties_are_broken_by_key_on_every_rank(tmp_path):
    trains, queries, train_ids, query_ids, inputs = make_inputs(tmp_path, 2, rows=300, integer=True, dtype="float16")
    assert influence(tmp_path, *inputs, "--top_k", 12, "--read_batch_rows", 40, "--checkpoint_weights", "2,1") == 0
    scores = brute_scores("tracin", trains, queries, [2.0, 1.0])
    ties = sum(len(set(np.sort(s)[-12:])) < 12 for s in scores)
    assert ties == len(query_ids)  # every query's top 12 holds tied scores: the test tests something
    assert_top(got_top(read(tmp_path / "out/inf")), brute_top(scores, train_ids, query_ids, 12), rtol=0, atol=0)


def test_a_query_identical_to_a_training_row_ranks_it_first_under_cosine(tmp_path):
    rng = np.random.default_rng(5)
    train = rng.normal(size=(400, 32)).astype(np.float32)
    train[:, 0] *= 50  # rows with large gradients, which would win under tracin
    planted = 123
    write_projections(tmp_path / "train/p", {"id": np.arange(400)}, train, files=2)
    write_projections(tmp_path / "query/p", {"qid": [7]}, 3 * train[planted][None])
    args = ["--train", tmp_path / "train/*.parquet", "--query", tmp_path / "query/*.parquet", "--top_k", 3]
    assert influence(tmp_path, *args, "--score", "cosine", "--kinds", "proponent") == 0
    table = read(tmp_path / "out/inf")
    assert table.column("train__id").to_pylist()[0] == planted
    assert table.column("score").to_pylist()[0] == pytest.approx(1.0, abs=1e-6)
    assert set(table.column("kind").to_pylist()) == {"proponent"}
    assert influence(tmp_path, *args, "--score", "tracin", "--kinds", "proponent", output="tracin/inf") == 0
    assert read(tmp_path / "tracin/inf").column("train__id").to_pylist()[0] != planted  # cosine is what found it


def test_query_groups_give_the_same_rows_as_one_group(tmp_path, capsys):
    trains, queries, train_ids, query_ids, inputs = make_inputs(tmp_path, 1, rows=200, queries=150, dim=256)
    assert influence(tmp_path, *inputs, "--top_k", 4) == 0
    assert ", 1 query group(s)" in capsys.readouterr().out
    assert influence(tmp_path, *inputs, "--top_k", 4, "--query_memory_mb", 9, output="groups/inf") == 0
    groups = int(capsys.readouterr().out.split(" query group(s)")[0].rsplit(" ", 1)[-1])
    assert groups >= 3
    order = [("qid", "ascending"), ("kind", "ascending"), ("rank", "ascending")]
    one, several = read(tmp_path / "out/inf").sort_by(order), read(tmp_path / "groups/inf").sort_by(order)
    assert several.num_rows == 150 * 2 * 4
    assert one.drop_columns(["score"]).equals(several.drop_columns(["score"]))
    # a product of fewer queries may add up in another order: the same float32 scores to rounding
    np.testing.assert_allclose(one.column("score").to_numpy(), several.column("score").to_numpy(), rtol=1e-6)


def test_string_and_multi_column_keys(tmp_path):
    rng = np.random.default_rng(9)
    train = rng.integers(-1, 2, size=(150, 6)).astype(np.float32)
    names = np.array([f"row-{i % 50}" for i in range(150)])
    part = np.arange(150) // 50
    write_projections(tmp_path / "train/p", {"name": names, "part": part}, train, files=2, row_group_size=20,
                      extra={"loss": rng.random(150)})
    query = rng.integers(-1, 2, size=(2, 6)).astype(np.float32)
    write_projections(tmp_path / "query/p", {"q": ["a", "b"]}, query)
    args = ["--train", tmp_path / "train/*.parquet", "--query", tmp_path / "query/*.parquet", "--top_k", 6]
    assert influence(tmp_path, *args, "--read_batch_rows", 16) == 0
    table = read(tmp_path / "out/inf")
    assert table.column_names == ["q", "rank", "kind", "train__name", "train__part", "score"]  # loss is no key
    scores = query @ train.T
    for i, q in enumerate(["a", "b"]):
        got = table.filter(pa.compute.and_(pa.compute.equal(table.column("q"), q),
                                           pa.compute.equal(table.column("kind"), "proponent")))
        expected = sorted(range(150), key=lambda j: (-scores[i, j], names[j], part[j]))[:6]
        assert list(zip(got.column("train__name").to_pylist(), got.column("train__part").to_pylist())) == [
            (names[j], part[j]) for j in expected
        ]


def test_multi_process_direct_runner_equals_in_process(tmp_path):
    _, _, _, _, inputs = make_inputs(tmp_path, 2, rows=600, queries=5, dim=16, seed=4)
    args = [*inputs, "--top_k", 5, "--score", "trak", "--damping", 0.1, "--self_influence", "--read_batch_rows", 64]
    assert influence(tmp_path, *args) == 0
    multi = ["--direct_num_workers", 2, "--direct_running_mode", "multi_processing"]
    assert influence(tmp_path, *args, *multi, output="multi/inf") == 0
    assert read(tmp_path / "out/inf").equals(read(tmp_path / "multi/inf"))
    single = read(tmp_path / "out/inf_self_influence").sort_by("train__id")
    assert single.equals(read(tmp_path / "multi/inf_self_influence").sort_by("train__id"))


# ---------------------------------------------------------------- refusals, before any compute


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seed": 1}, "projection seed 0 vs 1"),
        ({"dim": 16, "columns": 16}, "projection dim 8 vs 16"),
        ({"model_sha256": "cd" * 32}, f"model_sha256 {'ab' * 32} vs {'cd' * 32}"),
        ({"variables": ("dense/kernel",)}, "variables dense/kernel,dense/bias vs dense/kernel"),
        ({"construction": "kronecker-v1"}, "projection construction gaussian-blocked-v1 vs kronecker-v1"),
    ],
)
def test_projections_that_cannot_be_compared_are_refused(tmp_path, capsys, change, message):
    rng = np.random.default_rng(0)
    write_projections(tmp_path / "train/p", {"id": np.arange(20)}, rng.normal(size=(20, 8)))
    columns = change.pop("columns", 8)
    write_projections(tmp_path / "query/p", {"qid": [1]}, rng.normal(size=(1, columns)), **change)
    status = influence(tmp_path, "--train", tmp_path / "train/*.parquet", "--query", tmp_path / "query/*.parquet")
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert message in err and "train/p-00000-of-00001.parquet" in err and "query/p-00000-of-00001.parquet" in err
    assert not glob.glob(str(tmp_path / "out/*"))


def test_duplicate_keys_are_refused_naming_one(tmp_path, capsys):
    rng = np.random.default_rng(0)
    write_projections(tmp_path / "train/p", {"id": [1, 2, 3, 4, 3, 5]}, rng.normal(size=(6, 4)), files=2)
    write_projections(tmp_path / "query/p", {"qid": [1]}, rng.normal(size=(1, 4)))
    status = influence(tmp_path, "--train", tmp_path / "train/*.parquet", "--query", tmp_path / "query/*.parquet")
    err = capsys.readouterr().err
    assert status == 2 and "the key id=3 occurs more than once" in err and "--train" in err


def test_checkpoints_with_different_rows_are_refused(tmp_path, capsys):
    rng = np.random.default_rng(0)
    write_projections(tmp_path / "t0/p", {"id": [1, 2, 3]}, rng.normal(size=(3, 4)))
    write_projections(tmp_path / "t1/p", {"id": [1, 2, 4]}, rng.normal(size=(3, 4)))
    for c in (0, 1):
        write_projections(tmp_path / f"q{c}/p", {"qid": [1]}, rng.normal(size=(1, 4)))
    args = ["--train", f"{tmp_path}/t0/*.parquet,{tmp_path}/t1/*.parquet"]
    args += ["--query", tmp_path / "q0/*.parquet", "--query", tmp_path / "q1/*.parquet"]
    assert influence(tmp_path, *args) == 2
    assert "the key id=3 is in checkpoint 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint_weights", "1,2"], "--checkpoint_weights has 2 values for 1 checkpoints"),
        (["--score", "cosine", "--self_influence"], "--self_influence needs --score tracin or trak"),
        (["--score", "trak"], "give --damping greater than 0"),
        (["--model", "m.keras"], "--model: an option of the main job"),
        (["--self_influence", "--self_influence_output", "OUT-self"], "overlap: the shards of one match the other's pattern"),
        (["--keep_columns", "nope"], "has no key column 'nope'"),
    ],
)
def test_option_errors_are_one_line(tmp_path, capsys, args, message):
    rng = np.random.default_rng(0)
    write_projections(tmp_path / "train/p", {"id": np.arange(5)}, rng.normal(size=(5, 8)))
    write_projections(tmp_path / "query/p", {"qid": [1]}, rng.normal(size=(1, 8)))
    args = [str(a).replace("OUT", str(tmp_path / "out/inf")) for a in args]
    status = influence(tmp_path, "--train", tmp_path / "train/*.parquet", "--query", tmp_path / "query/*.parquet", *args)
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("multi", [False, True], ids=["in-process", "multi-process"])
def test_a_singular_gram_matrix_found_while_running_is_one_line_naming_the_flags(tmp_path, capsys, multi):
    """More rows than k, so planning lets --damping 0 through, but every row in a plane: the Gram matrix is
    singular only once computed, inside a Beam step, whose error Beam rebuilds (and the multi-process runner
    relays as a traceback's text). The line must still be filled in and name the flags."""
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(40, 2)) @ rng.normal(size=(2, 8))
    write_projections(tmp_path / "train/p", {"id": np.arange(40)}, plane)
    write_projections(tmp_path / "query/p", {"qid": [1]}, rng.normal(size=(1, 8)))
    extra = ["--direct_num_workers", 2, "--direct_running_mode", "multi_processing"] if multi else []
    status = influence(tmp_path, "--train", tmp_path / "train/*.parquet", "--query", tmp_path / "query/*.parquet",
                       "--score", "trak", *extra)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == (1 if multi else 2), err
    assert "--train checkpoint 1: the Gram matrix plus damping 0.0 is singular" in err, err
    assert err.endswith("give a larger --damping" + (" (rerun with --debug for the traceback)" if multi else "")), err
    assert "{" not in err and "while running" not in err, err


def test_the_main_job_refuses_influence_options(tmp_path, capsys):
    assert main([RUNNER, "--input", "x", "--output", "y", "--model", "m", "--top_k", "3"]) == 2
    assert "--top_k: an option of beam-gradients influence" in capsys.readouterr().err


def test_help_lists_every_influence_option(capsys):
    import argparse

    from pipeline.options import INFLUENCE_SHARED, InfluenceOptions

    assert main(["influence", "--help"]) == 0
    text = capsys.readouterr().out
    parser = argparse.ArgumentParser()
    InfluenceOptions._add_argparse_args(parser)
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
    for flag in flags + [f"--{name}" for name in INFLUENCE_SHARED]:
        assert re.search(rf"^\s+{re.escape(flag)}\b", text, re.M), flag


def test_a_yaml_config_lists_checkpoints_and_the_command_line_overrides_it(tmp_path):
    trains, queries, train_ids, query_ids, _ = make_inputs(tmp_path, 2, rows=90, queries=3, seed=7)
    config = tmp_path / "influence.yaml"
    config.write_text(
        f"runner: DirectRunner\ntrain: ['{tmp_path}/train0/*.parquet', '{tmp_path}/train1/*.parquet']\n"
        f"query: ['{tmp_path}/query0/*.parquet', '{tmp_path}/query1/*.parquet']\n"
        "checkpoint_weights: [0.5, 2]\ntop_k: 9\nkinds: [proponent]\n"
    )
    assert main(["influence", "--config", str(config), "--output", str(tmp_path / "out/inf"), "--top_k", "4"]) == 0
    expected = brute_top(brute_scores("tracin", trains, queries, [0.5, 2.0]), train_ids, query_ids, 4)
    assert_top(got_top(read(tmp_path / "out/inf")), {k: v for k, v in expected.items() if k[1] == "proponent"})


def test_a_non_finite_query_projection_fails_the_job_naming_the_file(tmp_path, capsys):
    phi = np.random.default_rng(0).normal(size=(10, 4))
    query = phi[:1].copy()
    query[0, 2] = np.nan  # a query without a score to rank by: an input error, not a rejected row
    write_projections(tmp_path / "train/p", {"id": np.arange(10)}, phi)
    write_projections(tmp_path / "query/p", {"qid": [1]}, query)
    # an input error (exit 2) in-process; a remote runner reports the failed job (exit 1) with the same line
    assert influence(tmp_path, "--train", tmp_path / "train/*.parquet", "--query", tmp_path / "query/*.parquet") == 2
    err = capsys.readouterr().err
    assert "query/p-00000-of-00001.parquet: column 'weight_projection' holds a non-finite number" in err


@pytest.mark.parametrize("score, checkpoints", [("tracin", 1), ("trak", 2)])
def test_a_non_finite_training_row_is_rejected_and_the_rest_scored_as_without_it(tmp_path, capsys, score, checkpoints):
    rng = np.random.default_rng(3)
    ids = np.arange(40)
    trains = [rng.normal(size=(40, 6)) for _ in range(checkpoints)]
    queries = [rng.normal(size=(3, 6)) for _ in range(checkpoints)]
    bad = [6, 17]  # row 6 is NaN in the first checkpoint, row 17 infinite in the last
    dirty = [t.copy() for t in trains]
    dirty[0][6, 2], dirty[-1][17, 0] = np.nan, np.inf
    good = np.setdiff1d(ids, bad)

    def args(name, phis):
        out = []
        for c, phi in enumerate(phis):
            keep = ids if name == "dirty" else good
            write_projections(tmp_path / f"{name}{c}/p", {"id": keep}, phi[keep], model_sha256=f"{c:064x}")
            write_projections(tmp_path / f"{name}-q{c}/p", {"qid": [1, 2, 3]}, queries[c], model_sha256=f"{c:064x}")
            out += ["--train", tmp_path / f"{name}{c}/*.parquet", "--query", tmp_path / f"{name}-q{c}/*.parquet"]
        return out + ["--score", score, "--damping", 0.5, "--top_k", 50, "--self_influence", "--read_batch_rows", 16]

    assert influence(tmp_path, *args("dirty", dirty), output="out/dirty") == 0
    assert "training rows: 40 in, 38 scored, 2 rejected" in capsys.readouterr().out
    assert influence(tmp_path, *args("clean", trains), output="out/clean") == 0

    rejected = read(tmp_path / "out/dirty_rejected").sort_by("id")
    assert rejected.column("id").to_pylist() == bad
    assert rejected.column("stage").to_pylist() == ["projection"] * 2
    assert "checkpoint 1" in rejected.column("reason")[0].as_py()
    assert f"checkpoint {checkpoints}" in rejected.column("reason")[1].as_py()
    marker = read_marker(str(tmp_path / "out/dirty"))
    assert (marker["train_rows"], marker["train_rows_scored"], marker["train_rows_rejected"]) == (40, 38, 2)
    assert marker["outputs"]["rejected"] == ["dirty_rejected-00000-of-00001.parquet"]
    for suffix in ("", "_self_influence"):  # every score of the others: those of a run without the bad rows
        dirty_table = read(tmp_path / f"out/dirty{suffix}").drop_columns([]).to_pylist()
        clean_table = read(tmp_path / f"out/clean{suffix}").to_pylist()
        assert len(dirty_table) == len(clean_table) > 0
        key = (lambda r: (r.get("qid"), r.get("kind"), r.get("rank"), r.get("train__id")))
        for d, c in zip(sorted(dirty_table, key=key), sorted(clean_table, key=key)):
            assert {k: v for k, v in d.items() if "score" not in k and "influence" not in k} == {
                k: v for k, v in c.items() if "score" not in k and "influence" not in k
            }
            value = "score" if "score" in d else "self_influence"
            np.testing.assert_allclose(d[value], c[value], rtol=1e-5)


def test_checkpoints_join_by_key_across_buckets():
    """Several checkpoints' blocks, rows in other orders, meet by key in several buckets: every row once, aligned."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that

    from pipeline.run import resolve_runner
    from transforms.influence.steps import Block, JoinCheckpoints

    rng = np.random.default_rng(2)
    ids = rng.permutation(500)
    truth = {c: rng.normal(size=(500, 3)).astype(np.float32) for c in (0, 1)}  # row i of id ids[i]
    blocks = []
    for c in (0, 1):
        order = rng.permutation(500)
        for part in np.array_split(order, 6):
            blocks.append(Block(pa.table({"id": ids[part]}), (truth[c][part],), c))

    def check(joined):
        rows = {}
        for block in joined:
            assert block.rows <= 16 and block.keys.column("id").to_pylist() == sorted(block.keys.column("id").to_pylist())
            for j, key in enumerate(block.keys.column("id").to_pylist()):
                assert key not in rows
                rows[key] = (block.projections[0][j], block.projections[1][j])
        assert sorted(rows) == list(range(500))
        where = {key: i for i, key in enumerate(ids)}
        for key, (a, b) in rows.items():
            np.testing.assert_array_equal(a, truth[0][where[key]])
            np.testing.assert_array_equal(b, truth[1][where[key]])

    options = beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"])
    with beam.Pipeline(runner=resolve_runner(options), options=options) as pipeline:
        joined = pipeline | beam.Create(blocks, reshuffle=False) | JoinCheckpoints(2, buckets=7, block_rows=16)
        assert_that(joined, check)


def test_dataflow_dry_run_builds_every_branch(tmp_path):
    """DataflowRunner translates the whole job (TRAK's Gram pass, the checkpoint join, three query groups), offline."""
    from pipeline.influence import run_options
    from pipeline.options import parse

    _, _, _, _, inputs = make_inputs(tmp_path, 2, rows=50, queries=150, dim=256)
    summary = run_options(
        parse(
            ["--runner", "DataflowRunner", "--dry_run=True", "--project", "test-project", "--region", "us-central1"]
            + ["--temp_location", "gs://bucket/tmp", "--output", str(tmp_path / "out/inf")]
            + [str(a) for a in inputs]
            + ["--score", "trak", "--damping", "1", "--self_influence", "--query_memory_mb", "28"]
        )
    )
    assert summary.dry_run and summary.plan.groups == 3 and not (tmp_path / "out").exists()
    components = summary.result.job.proto_pipeline.components
    names = {t.unique_name for t in components.transforms.values()}
    expected = {"Gram/Sum", "Group2/Join", "Train0/Join/Group", "Train2/Score", "WriteInfluence", "WriteSelfInfluence"}
    assert expected <= names


def test_an_output_prefix_given_for_its_files_says_where_its_shards_are(tmp_path, capsys):
    rng = np.random.default_rng(1)
    write_projections(tmp_path / "train/p", {"id": np.arange(4)}, rng.normal(size=(4, 3)).astype(np.float32))
    assert influence(tmp_path, "--train", tmp_path / "train/p", "--query", tmp_path / "train/p") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"beam-gradients: error: --train '{tmp_path}/train/p' matches no file (it is an output's prefix: its shards "
        f"are {tmp_path}/train/p-*.parquet)"
    ]


def test_a_pattern_that_also_takes_the_rejected_rows_says_so_and_which_pattern_takes_the_shards(tmp_path, capsys):
    """`--train 'out/p*.parquet'` matches the main job's `p_rejected-...` shard too: the error names that file as
    rejected rows and gives the pattern of the projections' shards, not 'no column weight_projection'."""
    rng = np.random.default_rng(1)
    shards = write_projections(tmp_path / "train/p", {"id": np.arange(4)}, rng.normal(size=(4, 3)).astype(np.float32),
                               marker=False)
    rejected = tmp_path / "train/p_rejected-00000-of-00001.parquet"
    pq.write_table(pa.table({"id": [9], "stage": ["decode"], "reason": ["column 'x' holds NaN"],
                             "source_file": ["d.parquet"]}), rejected)
    entries = shard_entries([*map(str, shards), str(rejected)])  # the marker the main job writes: both outputs
    outputs = {"--output": [os.path.basename(s) for s in shards], "--rejected": [rejected.name]}
    (tmp_path / "train/p_SUCCESS").write_text(json.dumps({"rows_in": 5, "outputs": outputs, "shards": entries}))
    pattern = tmp_path / "train/p*.parquet"
    assert influence(tmp_path, "--train", pattern, "--query", tmp_path / "train/p-*.parquet") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"beam-gradients: error: {rejected} holds the rows a job rejected (its columns stage, reason, source_file), "
        f"not projections; match only the projections' shards: {tmp_path}/train/p-*.parquet"
    ]
