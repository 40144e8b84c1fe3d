"""Dask benchmark (issue 14): the MLP workload of bench/speed.py on two local Dask workers,
against the in-process DirectRunner and the 2-worker multi-process DirectRunner.

Every variant is a whole `beam-gradients` process timed by bench/measure.py's launcher.
Dask's scheduler and two workers (`dask worker --nthreads 1`) are started once, on
loopback, before the runs; their peak RSS (VmHWM) is read from /proc when they stop.
Peak RSS of the DirectRunner variants is the largest process of the job: the launcher
or, multi-process, its largest worker.

    .venv/bin/python bench/on_dask.py                     # 300,000 rows, 3 repeats
    .venv/bin/python bench/on_dask.py --scale 0.1 --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time

from measure import CLI, DEFAULT_WORK, Stats, machine, make_mlp, markdown, run_process, summary_rows, tensor_chunk
from measure import write_parquet

ROWS = 300_000
ROW_GROUPS = 12  # the unit of parallelism: enough for two workers to share


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def dask_cluster(logs: str, workers: int = 2):
    """A scheduler and `workers` one-thread workers on loopback; yields (address, {name: pid}), then their peak RSS."""
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes = {}
    os.makedirs(logs, exist_ok=True)
    peaks: dict[str, float] = {}
    try:
        command = [os.path.join(bin_dir, "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port)]
        processes["scheduler"] = subprocess.Popen(
            command + ["--dashboard-address", ":0"], env=env, stdout=open(f"{logs}/scheduler.log", "w"),
            stderr=subprocess.STDOUT,
        )
        for i in range(workers):
            processes[f"worker {i}"] = subprocess.Popen(
                [os.path.join(bin_dir, "dask"), "worker", address, "--nthreads", "1", "--no-nanny"]
                + ["--dashboard-address", ":0"],
                env=env,
                stdout=open(f"{logs}/worker-{i}.log", "w"),
                stderr=subprocess.STDOUT,
            )
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=60)
        yield address, processes, peaks
    finally:
        for name, process in processes.items():
            if process.poll() is None:
                peaks[name] = _peak_rss_mib(process.pid)
                process.kill()
            process.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=DEFAULT_WORK)
    args = parser.parse_args(argv)
    rows = max(1, round(ROWS * args.scale))
    work = args.work
    model = make_mlp(os.path.join(work, "mlp.keras"), 128, (256, 256), 10)
    data = write_parquet(
        os.path.join(work, f"dask-mlp-{rows}.parquet"), rows, -(-rows // ROW_GROUPS), tensor_chunk((128,))
    )
    logs = os.path.join(work, "logs", "dask")

    def job(name: str, *runner: str) -> list[str]:
        return [CLI, *runner, f"--input={data}", f"--output={work}/out/dask/{name}", f"--model={model}"]

    variants = {
        "DirectRunner, in-process": job("direct", "--runner=DirectRunner"),
        "DirectRunner, 2 processes": job(
            "multi", "--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"
        ),
    }
    results: dict[str, list] = {name: [] for name in [*variants, "Dask, 2 workers"]}
    with dask_cluster(logs) as (address, processes, peaks):
        variants["Dask, 2 workers"] = job("dask", "--runner=DaskRunner", f"--dask_client_address={address}")
        for i in range(args.repeats):  # in turns, so drifting load hits all alike
            for name, argv in variants.items():
                run = run_process(argv, f"{logs}/{name.split(',')[0].lower()}-{len(results[name])}-{i}.log")
                if summary_rows(run.text())[0] != rows:
                    raise SystemExit(f"{name}: the job did not read {rows} rows")
                results[name].append(run)
    table = []
    direct = Stats(results["DirectRunner, in-process"]).wall
    for name, runs in results.items():
        stats = Stats(runs)
        rss = f"{stats.rss_mib:,.0f}"
        if name.startswith("Dask"):
            rss = f"{stats.rss_mib:,.0f} (client); scheduler {peaks['scheduler']:,.0f}, workers " + ", ".join(
                f"{peaks[k]:,.0f}" for k in sorted(peaks) if k.startswith("worker")
            )
        table.append([name, f"{rows:,}", f"{stats.wall:.1f}", f"{stats.wall / direct:.2f}", rss, f"{rows / stats.wall:,.0f}"])
    print(f"Medians of {args.repeats} run(s), mlp workload, {machine()}.\n")
    print(markdown(["runner", "rows", "wall s", "wall / in-process", "peak RSS MiB per process", "rows/s"], table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
