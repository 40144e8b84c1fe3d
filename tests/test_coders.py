"""Our Arrow coders apply to our own PCollections only: importing the package leaves pyarrow.Table's coder alone."""

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to
import pyarrow as pa

import pipeline.run  # noqa: F401  (imports everything the job does)
import transforms.compute  # noqa: F401
from transforms.coders import ArrowTable, ArrowTableCoder, SourceBatchCoder
from transforms.io.read import SourceBatch


def test_importing_us_leaves_the_coder_of_pyarrow_tables_as_beam_has_it():
    assert not isinstance(beam.coders.registry.get_coder(pa.Table), ArrowTableCoder)
    assert type(beam.coders.registry.get_coder(pa.Table)) is type(beam.coders.registry.get_coder(object))


def test_our_type_hints_select_our_coders():
    assert isinstance(beam.coders.registry.get_coder(ArrowTable), ArrowTableCoder)
    assert isinstance(beam.coders.registry.get_coder(SourceBatch), SourceBatchCoder)


def test_arrow_table_is_a_pyarrow_table_to_type_checks():
    from apache_beam.typehints import typehints

    table = pa.table({"a": [1]})
    assert isinstance(table, ArrowTable) and issubclass(ArrowTable, pa.Table)
    assert typehints.is_consistent_with(ArrowTable, pa.Table)
    typehints.check_constraint(ArrowTable, table)  # what --runtime_type_check does


def test_a_pardo_typed_arrow_table_gets_our_coder_and_round_trips():
    with beam.Pipeline("DirectRunner") as p:
        tables = p | beam.Create([1, 2]) | beam.Map(lambda n: pa.table({"n": [n] * n})).with_output_types(ArrowTable)
        proto, context = p.to_runner_api(return_context=True)
        coder = context.coders.get_by_id(proto.components.pcollections[context.pcollections.get_id(tables)].coder_id)
        assert isinstance(coder, ArrowTableCoder)
        assert_that(
            tables | beam.Map(lambda t: (type(t).__name__, t.num_rows)),
            equal_to([("Table", 1), ("Table", 2)]),
        )
    table = pa.table({"s": ["a", None], "x": [1.5, 2.0]})
    assert ArrowTableCoder().decode(ArrowTableCoder().encode(table)).equals(table)
