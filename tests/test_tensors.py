"""Arrow -> numpy decoding: every column layout, sliced arrays, and each kind of bad row."""

import numpy as np
import pyarrow as pa
import pytest

from transforms.feeds.columns import FeedError, decode, plan_feed
from transforms.io.arrow import to_tensor_array


def _decode(array, shape, dtype=np.float32):
    batch = pa.record_batch({"c": array})
    feed = plan_feed(batch.schema, "in", ["c"], shape, dtype, "test.parquet")
    return feed, decode(feed, batch)


def test_fixed_shape_tensor_is_viewed_without_a_copy():
    values = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    array = to_tensor_array(values)
    feed, decoded = _decode(array, (2, 3))
    assert feed.kind == "tensor"
    np.testing.assert_array_equal(decoded.values, values)
    assert not decoded.reasons.bad.any()
    buffer_address = array.storage.values.buffers()[1].address
    assert decoded.values.__array_interface__["data"][0] == buffer_address


def test_sliced_fixed_size_list_with_a_null_row_and_a_null_value():
    rows = [[1.0, 2.0], None, [3.0, None], [5.0, 6.0], [7.0, 8.0]]
    array = pa.array(rows, pa.list_(pa.float64(), 2)).slice(1, 4)
    _, decoded = _decode(array, (2,))
    assert decoded.reasons.bad.tolist() == [True, True, False, False]
    assert "is null" in decoded.reasons.text[0] and "null value" in decoded.reasons.text[1]
    np.testing.assert_array_equal(decoded.values[2:], [[5, 6], [7, 8]])
    assert decoded.values.dtype == np.float32


def test_variable_lists_with_null_backed_entries_and_slices():
    values = pa.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], pa.float32())
    offsets = pa.array([0, 2, 4, 6, 7, 10])
    array = pa.ListArray.from_arrays(offsets, values, mask=pa.array([False, True, False, False, False]))
    _, decoded = _decode(array.slice(1), (2,))  # rows: null (backed by [3, 4]), [5, 6], [7], [8, 9, 10]
    assert decoded.reasons.bad.tolist() == [True, False, True, True]
    assert "is null" in decoded.reasons.text[0]
    assert "has 1 values" in decoded.reasons.text[2] and "has 3 values" in decoded.reasons.text[3]
    np.testing.assert_array_equal(decoded.values[1], [5, 6])


def test_nested_lists_reshape_to_the_input_and_check_every_level():
    rows = [[[1, 2], [3, 4]], [[5, 6], [7]], [[float("nan"), 1], [2, 3]], [[9, 8], [7, 6]]]
    _, decoded = _decode(pa.array(rows, pa.list_(pa.list_(pa.float64()))), (2, 2))
    assert decoded.reasons.bad.tolist() == [False, True, True, False]
    assert decoded.reasons.stage[1] == "decode" and decoded.reasons.stage[2] == "validate"
    np.testing.assert_array_equal(decoded.values[[0, 3]], [[[1, 2], [3, 4]], [[9, 8], [7, 6]]])


def test_stacked_scalars_cast_and_reject_per_row():
    batch = pa.record_batch(
        {
            "a": pa.array([1, 2, None, 4], pa.int64()),
            "b": pa.array([0.5, float("inf"), 1.0, 1e300], pa.float64()),
        }
    )
    feed = plan_feed(batch.schema, "in", ["a", "b"], (2,), np.float32, "t.parquet")
    decoded = decode(feed, batch)
    assert decoded.reasons.bad.tolist() == [False, True, True, True]
    assert "'b' holds NaN or infinity" in decoded.reasons.text[1]
    assert "'a' is null" in decoded.reasons.text[2]
    assert "'b' holds a value too large for float32" in decoded.reasons.text[3]
    np.testing.assert_array_equal(decoded.values[0], [1.0, 0.5])


def test_integer_model_inputs_take_only_whole_numbers():
    _, decoded = _decode(pa.array([[1.0, 2.0], [1.5, 2.0], [3.0, 4.0]], pa.list_(pa.float64(), 2)), (2,), np.int32)
    assert decoded.reasons.bad.tolist() == [False, True, False]
    assert decoded.values.dtype == np.int32 and decoded.values[2].tolist() == [3, 4]


@pytest.mark.parametrize(
    "array, shape, message",
    [
        (pa.array(["a", "b"]), (1,), "type string, which cannot feed model input 'in'"),
        (pa.array([[1.0, 2.0, 3.0]], pa.list_(pa.float32(), 3)), (2,), "holds 3 values per row"),
        (to_tensor_array(np.zeros((1, 3, 2), np.float32)), (2, 3), r"holds shape \(3, 2\) per row"),
    ],
)
def test_columns_that_cannot_feed_the_input_fail_at_planning(array, shape, message):
    with pytest.raises(FeedError, match=message):
        _decode(array, shape)


def test_integers_outside_an_integer_input_are_rejected_not_wrapped():
    _, decoded = _decode(pa.array([[1, 2], [2**32 + 1, 0], [3, 4]], pa.list_(pa.int64(), 2)), (2,), np.int32)
    assert decoded.reasons.bad.tolist() == [False, True, False]
    assert "outside int32" in decoded.reasons.text[1]


def test_boolean_columns_with_nulls_reject_the_null_row():
    batch = pa.record_batch({"flag": pa.array([True, None, False])})
    feed = plan_feed(batch.schema, "in", ["flag"], (1,), np.float32, "t.parquet")
    decoded = decode(feed, batch)
    assert decoded.reasons.bad.tolist() == [False, True, False]
    assert decoded.values[[0, 2], 0].tolist() == [1.0, 0.0]


def test_ragged_nested_lists_are_rejected_even_when_the_total_count_fits():
    rows = [[[1, 2, 3], [4, 5, 6]], [[1, 2, 3, 4], [5, 6]], [[1, 2, 3], None]]
    _, decoded = _decode(pa.array(rows, pa.list_(pa.list_(pa.float32()))), (2, 3))
    assert decoded.reasons.bad.tolist() == [False, True, True]
    assert "ragged" in decoded.reasons.text[1] and "null list" in decoded.reasons.text[2]
    np.testing.assert_array_equal(decoded.values[0], [[1, 2, 3], [4, 5, 6]])


def test_permuted_tensors_are_refused_at_planning():
    storage = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.float32)), 6)
    array = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.float32(), [2, 3], permutation=[1, 0]), storage)
    with pytest.raises(FeedError, match=r"permutation \[1, 0\]"):
        _decode(array, (2, 3))


def test_planning_errors_name_the_setting_and_the_cli_shows_it_as_a_flag():
    """Below pipeline/ an error names `input_map` (an API keyword); the CLI phrases the same error as `--input_map`."""
    import pickle

    from pipeline.options import flag_error
    from transforms.feeds.columns import plan_input_feeds

    schema = pa.schema([("img", pa.float32())])
    with pytest.raises(FeedError) as caught:
        plan_input_feeds(schema, [("x", (1,), "float32")], None, {"picture": "img"}, "f.parquet")
    assert str(caught.value) == "input_map names 'picture', which the model does not have; its inputs are: x"
    flagged = flag_error(caught.value)
    assert isinstance(flagged, FeedError)
    assert str(flagged) == "--input_map names 'picture', which the model does not have; its inputs are: x"
    assert str(pickle.loads(pickle.dumps(flagged))) == str(flagged)  # a worker's error keeps its words
    assert str(FeedError("a {literal} column")) == "a {literal} column"  # plain text is never a template


def test_token_ids_in_stacked_scalar_columns_are_checked_against_the_vocabulary():
    """Planning gives an embedding's token input its vocabulary (feeds/plan.py): stacked scalar columns obey it too."""
    import dataclasses

    batch = pa.record_batch(
        {
            "a": pa.array([1, 2, 3, 4], pa.int64()),
            "b": pa.array([5, 50, 6, -1], pa.int64()),
            "c": pa.array([7, 8, 9, 0], pa.int64()),
        }
    )
    feed = plan_feed(batch.schema, "tokens", ["a", "b", "c"], (3,), np.int32, "t.parquet")
    feed = dataclasses.replace(feed, vocabulary=10, embedding="emb")
    decoded = decode(feed, batch)
    assert decoded.reasons.bad.tolist() == [False, True, False, True]
    assert decoded.reasons.text[1] == "column 'b' holds token id 50, outside the vocabulary 0..9 of embedding 'emb'"
    assert decoded.reasons.text[3] == "column 'b' holds token id -1, outside the vocabulary 0..9 of embedding 'emb'"
    assert decoded.reasons.stage[1] == "decode"
    assert decoded.values.dtype == np.int32 and decoded.values[[0, 2]].tolist() == [[1, 5, 7], [3, 6, 9]]


def test_a_nullable_bool8_scalar_column_rejects_the_null_row():
    """arrow.bool8 is an extension type: its nulls are filled on its int8 storage, as a list's leaf is."""
    flag = pa.ExtensionArray.from_storage(pa.bool8(), pa.array([1, None, 0, 1], pa.int8()))
    table = pa.table({"flag": flag, "v": pa.array([0.5, 1.5, 2.5, 3.5], pa.float32())})
    table = pa.concat_tables([table.slice(0, 2), table.slice(2)])  # as a reader's table: two chunks per column
    feed = plan_feed(table.schema, "in", ["flag", "v"], (2,), np.float32, "t.parquet")
    decoded = decode(feed, table)
    assert decoded.reasons.bad.tolist() == [False, True, False, False]
    assert decoded.reasons.text[1] == "column 'flag' is null"
    assert decoded.values[[0, 2, 3]].tolist() == [[1.0, 0.5], [0.0, 2.5], [1.0, 3.5]]
