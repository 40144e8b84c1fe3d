"""Planning: everything a worker needs, decided once from the options, the input schema and the model.

Nothing here runs per row. `JobPlan.build` checks the spec against the model
(by building and tracing the engine) and the columns against the first file's
schema, and lays out the output from what the engine declares.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pyarrow as pa

from transforms.contract import metadata_key
from transforms import __version__
from transforms.gradients.errors import SpecError
from transforms.model import Loaded, ProcessModel, redact
from transforms.io.schema import OutputLayout, rejected_schema
from transforms.feeds.row_seeds import RowSeedFeed
from transforms.feeds.columns import Feed, FeedError, check_columns, plan_feed, plan_input_feeds

def with_vocabularies(feeds: list[Feed], model: ModelFunction) -> list[Feed]:
    """Feeds of token inputs that an Embedding reads, with its vocabulary: an id outside it rejects the row.

    Why: an embedding lookup of an id outside its table fails the whole batch on a CPU (and reads zeros on a GPU).
    """
    from transforms.gradients.wrt.layer_split import embedding_consumers

    consumers = embedding_consumers(model)
    planned = []
    for feed in feeds:
        layers = consumers.get(feed.input)
        if layers and np.issubdtype(np.dtype(feed.dtype), np.integer):
            smallest = min(layers, key=lambda layer: layer.input_dim)
            feed = dataclasses.replace(feed, vocabulary=int(smallest.input_dim), embedding=smallest.name)
        planned.append(feed)
    return planned


if TYPE_CHECKING:  # the engine is built on workers and at planning, never at import: --help needs no TensorFlow
    from transforms.gradients import GradientEngine, GradientSpec, ModelFunction

class Fault:
    """A hook a test passes in to make the job misbehave; production plans have none.

    Subclasses (tests/faults.py) override what they need. They must pickle:
    multi-process runners ship the plan to their workers.
    """

    def bundle_started(self, source: str, batch) -> None:
        """Called with a bundle's first element; raise to fail the bundle."""

    def output(self, table: pa.Table) -> pa.Table | None:
        """Called with each output table, already counted, on its way to the sink; None drops it."""
        return table


@dataclasses.dataclass(frozen=True)
class EngineRecipe:
    """How to build the gradient engine on a worker: once per process, shared by its threads."""

    model: ProcessModel
    spec: GradientSpec
    batch_size: int

    def build(self, model: ModelFunction, device: str) -> GradientEngine:
        from transforms.gradients import GradientEngine

        return GradientEngine(model, self.spec, self.batch_size, device).trace()

    def acquire(self) -> Loaded[GradientEngine]:
        return self.model.acquire(self.build, tag=f"{self.spec.to_json()}|{self.batch_size}")


# The row-input columns recorded with the spec in the output's metadata (None where the job had none).
RECORDED_COLUMNS = ("class_column", "label_column")


@dataclasses.dataclass
class JobPlan:
    """Everything a worker needs, decided once before any data is read. Picklable."""

    engine: EngineRecipe
    feeds: list[Feed]
    extras: list[Feed | RowSeedFeed]  # the engine's row inputs (the label, the row's seed), in its order
    key_columns: list[str]
    layout: OutputLayout
    rejected_schema: pa.Schema
    fault: Fault | None = None
    means: list[int] = dataclasses.field(default_factory=list)  # feeds whose dataset mean the engine needs

    @property
    def batch_size(self) -> int:
        return self.engine.batch_size

    @property
    def spec(self) -> GradientSpec:
        return self.engine.spec

    @property
    def read_columns(self) -> list[str]:
        columns = [c for f in self.feeds + self.extras for c in f.columns] + list(self.key_columns)
        return list(dict.fromkeys(columns))

    @classmethod
    def build(
        cls,
        schema: pa.Schema,
        source: str,
        model: ProcessModel,
        spec: GradientSpec,
        batch_size: int,
        feature_columns: Sequence[str] = (),
        input_map: dict[str, str] | None = None,
        row_columns: dict[str, str | None] | None = None,
        key_columns: Sequence[str] = (),
    ) -> tuple["JobPlan", Loaded[GradientEngine]]:
        """Check options against the input schema and the model; return the plan and the loaded engine.

        `row_columns` names the column of each row input the engine may ask
        for, by its spec field (`{"label_column": "y"}`). The caller keeps the
        loaded engine alive while the job runs, so an in-process runner reuses
        it instead of loading the model again.
        """
        row_columns = {k: v for k, v in (row_columns or {}).items() if v}
        check_columns(schema, key_columns, "key", source)
        recipe = EngineRecipe(model, spec, batch_size)
        loaded = recipe.acquire()  # loads the model and traces: the spec is checked against it here
        engine: GradientEngine = loaded.value
        inputs = [(t.name, t.shape, t.dtype.as_numpy_dtype) for t in engine.model.inputs]
        feeds = plan_input_feeds(schema, inputs, feature_columns, input_map or {}, source)
        feeds = with_vocabularies(feeds, engine.model)
        extras = []
        for row_input in engine.row_inputs:
            if row_input.column is None:  # the row's seed: from its keys, or its position when none are kept
                extras.append(RowSeedFeed(row_input.name, tuple(key_columns)))
                continue
            column = row_columns.get(row_input.column)
            if not column:
                raise SpecError(
                    "{%s} needs {%s}: the column holding each row's {name}" % (row_input.needed_by, row_input.column),
                    name=row_input.name,
                )
            check_columns(schema, [column], row_input.name, source)
            dtype = row_input.dtype.as_numpy_dtype
            try:
                extras.append(plan_feed(schema, row_input.name, [column], row_input.shape, dtype, source, f"the {row_input.name}"))
            except FeedError as err:  # named by the setting that chose the column (a row input is no model input)
                raise FeedError("{%s} {column!r}: {reason}" % row_input.column, column=column, reason=str(err)) from None
        metadata = {
            metadata_key("version"): __version__,
            metadata_key("model_path"): redact(model.path),
            metadata_key("model_sha256"): model.sha256,
            # the spec, with the columns its row inputs are read from (a column is the job's, not the engine's)
            metadata_key("spec"): json.dumps(
                {**json.loads(spec.to_json()), **{c: row_columns.get(c) for c in RECORDED_COLUMNS}}, sort_keys=True
            ),
            metadata_key("batch_size"): str(batch_size),
        }
        weights = engine.wrt.provenance()
        if weights is not None:  # what a later job (influence) compares before it uses the weight columns
            metadata[metadata_key("weights")] = json.dumps(weights)
        key_fields = [schema.field(c) for c in key_columns]
        layout = OutputLayout(key_fields, engine.outputs, feeds, metadata=metadata)
        plan = cls(recipe, feeds, extras, list(key_columns), layout, rejected_schema(key_fields))
        plan.means = [[f.input for f in feeds].index(d.input) for d in engine.dataset_inputs]
        return plan, loaded
