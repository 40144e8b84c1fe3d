"""Beam's DaskRunner, with the three translations that lose this job's rows put right.

Beam 2.77's DaskRunner (`apache_beam.runners.dask`) turns each transform into a
`dask.bag` step. Three of its translations lose data silently, and each one
alone empties the job's output (tests/test_dask.py shows all three):

- A ParDo's outputs all go into one bag that every consumer reads, so the
  `rejected` output of a multi-output ParDo got every row, results included.
- Outputs yielded in `finish_bundle` are dropped: the bag keeps only what
  `process` yielded. The job's DoFn emits a bundle's last batch there, and
  Beam's own file sinks emit the files they wrote there, so nothing was written.
- Only the last transform's bag is computed; every other branch of the graph
  (the job has two sinks) never runs.

And a Reshuffle is a no-op there, so every row group of the input was read and
computed in one task on one worker; here it spreads them over the cluster's threads.

Side inputs are also read by computing their bag again inside each task that
uses them, which reruns everything upstream of them (for a file sink: the
whole job, once more per side input). Here a side input is a task dependency:
computed once, handed to each bundle.

The job's graph is the same on every runner; only this translation differs.
Everything else (options, Create, Flatten, GroupByKey, the result) is Beam's.
"""

from __future__ import annotations

import itertools
import socket

import dask
import dask.distributed as ddist
from apache_beam import pvalue
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.runner import PipelineState
from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, Receiver, _OutputHandler
from apache_beam.runners.dask import dask_runner
from apache_beam.runners.dask.overrides import _Reshuffle, dask_overrides
from apache_beam.runners.dask.transform_evaluator import TRANSLATIONS, Flatten, NoOp, ParDo, get_windowed_value
from apache_beam.transforms.core import DoFn
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.transforms.window import GlobalWindow

from pipeline.options import OptionsError
from apache_beam.utils.windowed_value import WindowedValue

DaskOptions = dask_runner.DaskOptions  # --dask_client_address and friends: Beam declares them
# A Reshuffle spreads its elements (the input's row groups) over this many partitions per worker
# thread (or --dask_npartitions): more than one, so a slow or lost worker's share is small.
SPREAD_PER_THREAD = 2


class _Collect(Receiver):
    """Receives one output of a DoFn as (tag, value); None is the main output."""

    def __init__(self, tag, out: list):
        self._tag, self._out = tag, out

    def receive(self, windowed_value):
        self._out.append((self._tag, windowed_value.value))


class _Receivers(dict):
    def __init__(self, out: list):
        super().__init__()
        self._out = out

    def __missing__(self, tag):
        self[tag] = receiver = _Collect(tag, out=self._out)
        return receiver


def _windowed(values) -> list[WindowedValue]:
    return [v if isinstance(v, WindowedValue) else WindowedValue(v, 0, (GlobalWindow(),)) for v in values]


def _concat(partitions) -> list:
    return list(itertools.chain.from_iterable(partitions))


def _run_bundle(items, transform, label, window_fn, side_specs, *side_values) -> list:
    """One dask partition is one bundle: setup, process each item, finish (its outputs kept), teardown."""
    out: list = []
    receivers = _Receivers(out)
    handler = _OutputHandler(window_fn, receivers[None], receivers, None, None, False, False)
    side_inputs = [
        SideInputMap(view, options, _windowed(values)) for (view, options), values in zip(side_specs, side_values)
    ]
    args, kwargs = transform.raw_side_inputs
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(transform.fn),
        handler,
        context=DoFnContext(label, state=None),
        side_inputs=side_inputs,
        input_args=list(args),
        input_kwargs=kwargs,
        user_state_context=None,
        bundle_finalizer_param=DoFn.BundleFinalizerParam(),
    )
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(get_windowed_value(item, window_fn))
    invoker.invoke_finish_bundle()
    invoker.invoke_teardown()
    return out


def _is_pardo(node: AppliedPTransform) -> bool:
    """The transforms Beam translates as a ParDo (exactly; its own ParDo subclasses it leaves as no-ops)."""
    return TRANSLATIONS.get(type(node.transform)) is ParDo


def _has_tag(tag):
    return lambda pair: pair[0] == tag


def _value(pair):
    return pair[1]


class _BagVisitor(PipelineVisitor):
    """Every leaf transform -> a dask bag; a ParDo's bag holds (tag, value) pairs."""

    def __init__(self, bag_kwargs: dict, spread: int):
        self.bag_kwargs = bag_kwargs
        self.spread = spread  # partitions a Reshuffle spreads its elements over
        self.bags: dict[AppliedPTransform, object] = {}
        self.consumed: set[AppliedPTransform] = set()

    def bag_of(self, pcoll):
        """The bag of exactly this PCollection's elements."""
        producer = pcoll.producer
        self.consumed.add(producer)
        bag = self.bags[producer]
        if _is_pardo(producer):
            bag = bag.filter(_has_tag(pcoll.tag)).map(_value)
        return bag

    def visit_transform(self, node: AppliedPTransform) -> None:
        transform = node.transform
        inputs = [i for i in node.inputs if not isinstance(i, pvalue.PBegin)]
        bags = [self.bag_of(i) for i in inputs]
        if _is_pardo(node):
            self.bags[node] = self._pardo(node, bags[0])
            return
        if isinstance(transform, _Reshuffle):  # Beam's Dask translation makes it a no-op: no spread at all
            self.bags[node] = bags[0].repartition(npartitions=self.spread)
            return
        op = TRANSLATIONS.get(type(transform), NoOp)(node, bag_kwargs=self.bag_kwargs)
        if not bags:
            self.bags[node] = op.apply(None)
        else:
            self.bags[node] = op.apply(bags if isinstance(op, Flatten) else bags[0])

    def _pardo(self, node: AppliedPTransform, bag):
        transform = node.transform
        main = next(iter(node.main_inputs.values()))
        window_fn = main.windowing.windowfn if hasattr(main, "windowing") else None
        specs, items = [], []
        for side in node.side_inputs:
            # computed once as a dependency of every bundle, not recomputed inside each task
            # (a Delayed of its unfused partitions: a Bag or Item argument is fused afresh, and so rerun, per use)
            parts = self.bag_of(side.pvalue).to_delayed(optimize_graph=False)
            items.append(dask.delayed(_concat)(parts))
            specs.append((type(side), side._view_options()))
        return bag.map_partitions(_run_bundle, transform, node.full_label, window_fn, specs, *items)

    def sinks(self) -> list:
        """The bags nothing consumes: computing these runs every branch of the graph."""
        return [bag for node, bag in self.bags.items() if node not in self.consumed]


class DaskResult(dask_runner.DaskRunnerResult):
    """Beam's result, waiting on the job's own client, which it closes (and a local cluster it started) at the end.

    Beam's waits with `as_completed` on whichever client is the process's default when the wait starts. Where
    that is another client (a notebook's, or a second job's in the same process) that is closed before the job
    ends, it never hears of the job's tasks again and waits forever: the worker-kill test hung so one run in three.
    """

    def wait_until_finish(self, duration=None) -> str:
        """Beam's wait (apache-beam 2.77's loop) on the job's client: the final state; RUNNING after `duration` ms.

        A second wait returns the state the first ended in: the client, and its loop, are closed by then.
        """
        if PipelineState.is_terminal(self._state):
            return self._state
        try:
            timeout = duration / 1000 if duration is not None else None
            for _ in ddist.as_completed(self.futures, loop=self.client.loop, timeout=timeout, with_results=True):
                pass  # gathering each result is what raises a task's error here
            self._state = PipelineState.DONE
        except TimeoutError:
            return self._state  # still running: the job goes on, its client open
        except BaseException:
            self._state = PipelineState.FAILED
            raise
        finally:
            if PipelineState.is_terminal(self._state):
                self.client.close()
        return self._state

    def cancel(self) -> str:
        try:
            return super().cancel()
        finally:
            self.client.close()


def check_scheduler(address: str | None, timeout: float = 5.0) -> None:
    """A --dask_client_address where nothing answers is one line within seconds, not Dask's 30 s connect timeout.

    Only a plain TCP connect is tried (Dask's own handshake follows in the job); no address: a local cluster.
    """
    if not address:
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit():
        raise OptionsError(f"--dask_client_address {address!r}: expected HOST:PORT (e.g. tcp://10.0.0.5:8786)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        why = "connection refused" if isinstance(err, ConnectionRefusedError) else (err.strerror or type(err).__name__)
        raise OptionsError(
            f"--dask_client_address {address}: no Dask scheduler answers at that address ({why}); start one "
            "(`dask scheduler`) or leave the option out to run on a local cluster"
        ) from None


class DaskRunner(dask_runner.DaskRunner):
    """Runs the job on a Dask cluster: `--dask_client_address HOST:PORT`, or a local cluster without it."""

    def run_pipeline(self, pipeline, options):
        dask_options = options.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)
        bag_kwargs = DaskOptions._extract_bag_kwargs(dask_options)
        client = ddist.Client(**dask_options)
        pipeline.replace_all(dask_overrides())
        threads = sum(client.nthreads().values())
        visitor = _BagVisitor(bag_kwargs, bag_kwargs.get("npartitions") or SPREAD_PER_THREAD * max(1, threads))
        pipeline.visit(visitor)
        # One graph, not optimised: dask's fusing renames shared tasks per collection, which reran the
        # file sinks' InitializeWrite once per side input that reads it (three temp folders, lost shards).
        futures = client.compute(visitor.sinks(), optimize_graph=False)
        return DaskResult(client, futures)
