"""The Ray executor: a stage's units run as Ray Data tasks (row batches) or on a pool of Ray actors that each hold
one model (generation, reward scoring), across every node of a cluster. (A model on vLLM runs in a `ray.data.llm`
processor instead, which its stage drives: see `xwin_data.llm.ray_llm`.)

The units go into a Ray dataset, one block each; `map_batches` runs the same batch functions the local executor
runs, and each task commits its unit to the stage's work folder (which must be on a filesystem every node can
reach) before it returns its small record. The driver streams the records back as units finish, so progress,
drops and costs are counted here, in one place. Ray retries a unit whose worker or node died; a killed driver
leaves committed units behind, and the next build skips them. Ray is imported only when this executor runs.
"""
from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Iterable

import pyarrow as pa

from xwin_data.core.executors.base import BatchFn, Executor, Model, Resources, Unit, commit_unit

TASK_RETRIES = 3  # a unit whose worker died runs again (its result is committed once: same key, same parts)


def connect(address: str | None = None):
    """The `ray` module, connected: to `address` (a cluster: "auto", "ray://…", host:port) or to a Ray started
    here for this build."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file written under the home folder
    try:
        import ray
    except ImportError:
        raise RuntimeError("the ray executor needs Ray Data: pip install 'xwin-data[ray]'") from None
    if not ray.is_initialized():
        # No address: the cluster of the job this build runs in (`ray job submit` sets RAY_ADDRESS), else a new
        # local Ray, never whichever cluster was started last on this machine.
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    quiet_console()
    data_context = ray.data.DataContext.get_current()
    data_context.enable_progress_bars = False  # the build's own progress display counts rows across the cluster
    data_context.print_on_execution_start = False
    return ray


def quiet_console() -> None:
    """Ray Data's INFO lines stay in its session log file: the build's own display reports progress."""
    import ray.data  # noqa: F401 - configures the ray.data logger, which is adjusted here

    logging.getLogger("ray").setLevel(logging.WARNING)
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
            handler.setLevel(logging.WARNING)


def _run_units(batch: pa.Table, fn: BatchFn, part_dir: str, schemas: dict[str, pa.Schema], main: str) -> pa.Table:
    """A Ray Data task: commit each unit of the batch (one, as the driver asks for batch_size=1)."""
    records = []
    for row in batch.to_pylist():
        record = commit_unit(fn, pickle.loads(row["payload"]), row["key"], part_dir, schemas, main)
        records.append(pickle.dumps(record))
    return pa.table({"index": batch.column("index"), "record": pa.array(records, pa.binary())})


class _Replica:
    """A Ray actor holding one model; commits the units it is given."""

    def __init__(self, model: Model, part_dir: str, schemas: dict[str, pa.Schema], main: str):
        self.instance = model.cls(**model.kwargs)
        self.part_dir, self.schemas, self.main = part_dir, schemas, main

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _run_units(batch, self.instance, self.part_dir, self.schemas, self.main)


class RayExecutor(Executor):
    name = "ray"
    distributes = True

    def __init__(self, address: str | None = None):
        self.address = address
        self._ray = None

    def _connect(self):
        if self._ray is None:
            self._ray = connect(self.address)
        return self._ray

    def connected(self):
        """The `ray` module, connected to this executor's cluster (for stages that run Ray Data pipelines of their
        own, such as `ray.data.llm` processors)."""
        return self._connect()

    def close(self) -> None:
        """Disconnect (a Ray started for the build stops with it; a cluster keeps running)."""
        if self._ray is not None:
            self._ray.shutdown()
            self._ray = None

    def describe(self, resources: Resources, model: bool, ray_data_llm: dict | None = None) -> str:
        where = f"ray ({self.address})" if self.address else "ray (started for the build)"
        if ray_data_llm:  # vLLM engine replicas driven by ray.data.llm (xwin_data.llm.ray_llm), tp GPUs each
            tp = int(ray_data_llm.get("tensor_parallel") or 1)
            n = resources.replicas if resources.replicas else "auto (the cluster's GPUs / tensor_parallel)"
            return (f"{where}: ray.data.llm vLLM processor ({ray_data_llm.get('task', 'generate')}), replicas {n}, "
                    f"tensor_parallel {tp}, {tp} gpu each ({tp} cpu on a cluster without GPUs)")
        kind = "actors holding one model each" if model else "Ray Data tasks"
        n = resources.replicas if resources.replicas else "auto"
        need = f"{resources.cpus:g} cpu" + (f", {resources.gpus:g} gpu" if resources.gpus else "")
        return f"{where}: {kind}, replicas {n}, {need} each"

    def replicas(self, resources: Resources, model: bool, n_units: int) -> int | None:
        """Replicas for a model stage: as set, else as many as the cluster's GPUs (or CPUs) hold."""
        if resources.replicas:
            return max(1, min(resources.replicas, max(1, n_units)))
        if not model:
            return None
        ray = self._connect()
        total = ray.cluster_resources()
        fit = total.get("GPU", 0) // resources.gpus if resources.gpus else total.get("CPU", 1) // max(resources.cpus, 1e-9)
        return int(max(1, min(fit, max(1, n_units))))

    def workers(self, resources: Resources, model: bool, n_units: int) -> int:
        n = self.replicas(resources, model, n_units)
        if n:
            return n
        ray = self._connect()
        return int(max(1, ray.cluster_resources().get("CPU", 1) // max(resources.cpus, 1e-9)))

    def _execute(self, ctx, fn: BatchFn | Model, todo: list[tuple[int, str, Unit]], part_dir: str,
                 schemas: dict[str, pa.Schema], main: str, resources: Resources,
                 options: dict) -> Iterable[tuple[int, dict]]:
        if not todo:
            return
        ray = self._connect()
        items = [{"index": i, "key": key, "payload": pickle.dumps(unit.payload)} for i, key, unit in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        args: dict[str, Any] = {"batch_size": 1, "batch_format": "pyarrow", "num_cpus": resources.cpus}
        if resources.gpus:
            args["num_gpus"] = resources.gpus
        model = isinstance(fn, Model)
        replicas = self.replicas(resources, model, len(todo))
        if model:
            ds = ds.map_batches(_Replica, fn_constructor_kwargs={"model": fn, "part_dir": part_dir,
                                                                 "schemas": schemas, "main": main},
                                compute=ray.data.ActorPoolStrategy(size=replicas), max_restarts=-1,
                                max_task_retries=TASK_RETRIES, **args)
        else:
            if replicas:
                args["compute"] = ray.data.TaskPoolStrategy(size=replicas)
            ds = ds.map_batches(_run_units, fn_kwargs={"fn": fn, "part_dir": part_dir, "schemas": schemas,
                                                       "main": main}, max_retries=TASK_RETRIES, **args)
        quiet_console()
        for row in ds.iter_rows():
            yield int(row["index"]), pickle.loads(row["record"])
