"""The Ray executor: a stage's units run as Ray tasks (row batches) or as calls on a pool of Ray actors that each
hold one model (generation, reward scoring), across every node of a cluster. (A model on vLLM runs in a
`ray.data.llm` processor instead, which its stage drives: see `xwin_data.llm.ray_llm`.)

Each task commits its unit to the stage's work folder (which must be on a filesystem every node can reach) before
it returns its small record, so the executor needs no more of Ray than tasks, actors and `ray.wait`: the driver
keeps two units per worker submitted and takes the records back as units finish, so progress, drops and costs are
counted here, in one place. Ray retries a unit whose worker or node died; a killed driver leaves committed units
behind, and the next build skips them. Stages that run a Ray Data pipeline of their own (the `ray.data.llm`
processors) ask for it through `connected(data=True)`. Ray is imported only when this executor runs.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterable

import pyarrow as pa

from xwin_data.core.executors.base import BatchFn, Executor, Model, Resources, Unit, commit_unit
from xwin_data.core.workers import start_warm_ups

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
    return ray


def quiet_data():
    """Ray Data set up for a build: no progress bars or INFO lines of its own (the build's display reports
    progress across the cluster)."""
    import ray.data

    quiet_console()
    data_context = ray.data.DataContext.get_current()
    data_context.enable_progress_bars = False
    data_context.print_on_execution_start = False
    return ray.data


def quiet_console() -> None:
    """Ray Data's INFO lines stay in its session log file: the build's own display reports progress."""
    import ray.data  # noqa: F401 - configures the ray.data logger, which is adjusted here

    logging.getLogger("ray").setLevel(logging.WARNING)
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
            handler.setLevel(logging.WARNING)


def _commit(fn: BatchFn, payload: Any, key: str, part_dir: str, schemas: dict[str, pa.Schema], main: str) -> dict:
    """A Ray task: run one unit and commit it where every node can reach (the stage's work folder)."""
    return commit_unit(fn, payload, key, part_dir, schemas, main)


class ModelReplica:
    """A Ray actor holding one model; commits the units it is given, one call each."""

    def __init__(self, model: Model, part_dir: str, schemas: dict[str, pa.Schema], main: str):
        self.part_dir, self.schemas, self.main = part_dir, schemas, main
        # A model that does not load is reported by the first unit, as that unit's error: an exception raised
        # here would only say that the actor died.
        self.instance, self.error = None, None
        try:
            self.instance = model.cls(**model.kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised by run()
            self.error = err

    def run(self, payload: Any, key: str) -> dict:
        if self.error is not None:
            raise self.error
        return commit_unit(self.instance, payload, key, self.part_dir, self.schemas, self.main)


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

    def connected(self, data: bool = True):
        """The `ray` module, connected to this executor's cluster, with Ray Data set up (for stages that run Ray
        Data pipelines of their own, such as `ray.data.llm` processors)."""
        ray = self._connect()
        if data:
            quiet_data()
        return ray

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
        kind = "actors holding one model each" if model else "Ray tasks"
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
        """Each unit is one Ray task (or one call on a model replica). At most two units per worker are submitted
        at a time, so a worker finds its next unit queued when it finishes one, and a killed driver leaves at most
        that many units unfinished."""
        if not todo:
            return
        ray = self._connect()
        model = isinstance(fn, Model)
        placement: dict[str, Any] = {"num_cpus": resources.cpus}
        if resources.gpus:
            placement["num_gpus"] = resources.gpus
        workers = self.workers(resources, model, len(todo))
        queue = list(reversed(todo))
        if model:
            replica = ray.remote(ModelReplica).options(max_restarts=-1, max_task_retries=TASK_RETRIES, **placement)
            actors = [replica.remote(fn, part_dir, schemas, main) for _ in range(workers)]
            load = {i: 0 for i in range(len(actors))}

            def submit(slot: int | None = None) -> tuple[Any, tuple[int, int]]:
                slot = min(load, key=load.get) if slot is None else slot
                index, key, unit = queue.pop()
                load[slot] += 1
                return actors[slot].run.remote(unit.payload, key), (index, slot)
        else:
            task = ray.remote(_commit).options(max_retries=TASK_RETRIES, **placement)
            shared = ray.put(fn), ray.put(schemas)  # sent to the cluster once, not with every unit

            def submit(slot: int | None = None) -> tuple[Any, tuple[int, int]]:
                index, key, unit = queue.pop()
                return task.remote(shared[0], unit.payload, key, part_dir, shared[1], main), (index, -1)

        pending: dict[Any, tuple[int, int]] = {}
        start_warm_ups()  # no pool forks here: the validation library loads while the cluster works
        try:
            while queue and len(pending) < 2 * workers:
                ref, where = submit()
                pending[ref] = where
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                index, slot = pending.pop(ready[0])
                try:
                    record = ray.get(ready[0])
                except ray.exceptions.RayTaskError as err:
                    # the unit's own error (a bad record, a model that would not load), not Ray's wrapper with its
                    # remote traceback: the build reports it in one line as it would locally
                    cause = getattr(err, "cause", None)
                    raise (cause if isinstance(cause, Exception) else err) from None
                if model:
                    load[slot] -= 1
                if queue:
                    ref, where = submit(slot if model else None)
                    pending[ref] = where
                yield index, record
        finally:
            # A failed or abandoned stage: what is still running or queued stops, and its outcome is collected here
            # (Ray would log an uncollected failure as an error of its own).
            for ref in pending:
                ray.cancel(ref, force=not model)
            for ref in pending:
                try:
                    ray.get(ref, timeout=10)
                except Exception:  # noqa: BLE001 - cancelled, or failed after the error being raised
                    pass
            if model:  # the replicas' models are released with their processes
                for actor in actors:
                    ray.kill(actor)
