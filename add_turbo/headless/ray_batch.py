"""A batch's workers on a Ray cluster: one actor per worker, each owning one ComfyUI server on its node
(add_turbo.headless.batch_worker.Renderer), fed by the elastic pool of add_turbo.headless.ray_pool.

Why not Ray Data: the driver must see each item's outcome as it finishes, to write its image and
manifest line at once (resume after Ctrl-C, exactly-once landing), and must give a lost node's item to
the workers that remain, which neither Ray Data nor ActorPool does (ActorPool waits with no timeout).

Faults: actors are created with max_restarts=-1 and max_task_retries=-1. A worker whose ComfyUI dies
exits its process (os._exit), so that Ray restarts the actor (a new ComfyUI) and retries the item it
was rendering; an actor killed outright is restarted and retried the same way. A lost node is the
pool's: its worker's item goes to the others. Work may thus run twice; the driver keeps the first
outcome of each item. A refused prompt is an outcome, not an error: never retried.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import threading
import uuid
import warnings
from pathlib import Path

import aiohttp

from .batch_worker import Renderer, WorkerStartError
from .client import ServerUnreachable
from .job import PACK_DIR, default_comfyui
from .ray_pool import WORKER_TIMEOUT, ElasticPool
from .workflow import WorkflowError

log = logging.getLogger("add_turbo.batch")
MAX_ATTEMPTS = 3  # starts of one item on one worker whose ComfyUI died each time, before it is recorded failed
NAMESPACE = "add_turbo_batch"  # the workers are named actors here: add_turbo_batch_<job key>_<run>_w<n>
INSTALL_HINT = ('--ray needs Ray, which this Python does not have: pip install "add-turbo[ray]" '
                '(or pip install "ray>=2.60"), on every node of the cluster')


class RayMissing(WorkflowError):
    """--ray without Ray installed."""


def require_ray():
    try:
        import ray
    except ImportError as error:
        raise RayMissing(INSTALL_HINT) from error
    return ray


class RenderActor:
    """A Ray actor around a Renderer. Its constructor never raises: a ComfyUI that does not start is
    reported by ready() and raised by render(), so the driver names the worker instead of waiting."""

    def __init__(self, name: str, job: str, comfyui: str | None, comfyui_args: list, threads: int | None):
        import ray

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        self.name, self.node = name, ray.util.get_node_ip_address()
        self.node_id = ray.get_runtime_context().get_node_id()
        self.rendering = threading.Lock()  # a threaded actor (probes answer while it renders): one render at a time
        with warnings.catch_warnings():  # Ray 2.60 warns about an API it uses inside this property
            warnings.simplefilter("ignore", DeprecationWarning)
            self.restarted = ray.get_runtime_context().was_current_actor_reconstructed
        # The items this worker name started on this node, across restarts: a second start is a retry.
        self.started_log = Path(tempfile.gettempdir()) / "add_turbo_batch" / job / f"{name}.started"
        self.started_log.parent.mkdir(parents=True, exist_ok=True)
        self.started = self.started_log.read_text().split() if self.started_log.exists() else []
        self.start_error, self.renderer = None, None
        try:
            self.renderer = Renderer(name, comfyui=Path(comfyui) if comfyui else default_comfyui(),
                                     comfyui_args=comfyui_args, threads=threads)
        except Exception as error:  # noqa: BLE001 (reported by ready() and raised by render(), with its type)
            detail = str(error) if isinstance(error, WorkerStartError) else f"{type(error).__name__}: {error}"
            self.start_error = f"on node {self.node}: {detail}"
            log.error("ADD Turbo batch: %s", self.start_error)
            return
        log.info("ADD Turbo batch: worker %s on node %s: ComfyUI (pid %s) ready%s", name, self.node,
                 self.renderer.server_pid, " after a restart" if self.restarted else "")

    def ready(self) -> dict:
        return {"name": self.name, "node": self.node, "node_id": self.node_id, "error": self.start_error,
                "restarted": self.restarted,
                "server_pid": self.renderer.server_pid if self.renderer else None}

    def object_info(self) -> dict:
        return self.renderer.object_info()

    def render(self, item: dict) -> dict:
        with self.rendering:
            return self._render(item)

    def _render(self, item: dict) -> dict:
        if self.start_error is not None:
            raise WorkerStartError(self.start_error)
        attempt = 1 + self._started_before(item["index"])
        if attempt > MAX_ATTEMPTS:  # its ComfyUI died on it each time (out of memory?): stop retrying it
            return {"index": item["index"], "status": "failed", "images": [], "seconds": 0.0, "worker": self.name,
                    "server_pid": self.renderer.server_pid, "node": self.node, "attempt": attempt,
                    "error": f"ComfyUI died {MAX_ATTEMPTS} times on this item (see the worker's log); not retried"}
        if attempt > 1:
            log.info("ADD Turbo batch: worker %s retries item %s (attempt %s)", self.name, item["index"], attempt)
        try:
            if not self.renderer.server_alive():
                raise ServerUnreachable(f"its ComfyUI (pid {self.renderer.server_pid}) has exited")
            outcome = self.renderer.render(item)
        except (ServerUnreachable, aiohttp.ClientError, ConnectionError, TimeoutError) as error:
            self._exit_for_restart(item, error)
        return {**outcome, "node": self.node, "attempt": attempt, "restarted": self.restarted}

    def _started_before(self, index: int) -> int:
        """How often this worker (across its restarts on this node) started the item before; records this start."""
        before = self.started.count(str(index))
        with open(self.started_log, "a") as f:
            f.write(f"{index}\n")
        self.started.append(str(index))
        return before

    def _exit_for_restart(self, item: dict, error: BaseException) -> None:
        log.warning("ADD Turbo batch: worker %s on node %s lost its ComfyUI during item %s (%s): exiting, so that "
                    "Ray restarts this worker and retries the item", self.name, self.node, item["index"], error)
        self.renderer.kill_server()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def node_fits(nodes: list[dict], cpus: float, gpus: float) -> int:
    """How many workers of `cpus` CPUs and `gpus` GPUs the nodes (ray.nodes() entries) hold, node by node."""
    total = 0
    for node in nodes:
        have = node.get("Resources", {})
        fits = [have.get("CPU", 0) // cpus] if cpus else []
        if gpus:
            fits.append(have.get("GPU", 0) // gpus)
        total += int(min(fits)) if fits else 0
    return total


class RayWorkers:
    """The batch's workers as Ray actors in an ElasticPool. `address`: None starts Ray on this machine
    (unless this process already runs it), "auto" or a cluster address joins a cluster. `workers`: a
    ceiling (None: as many as the cluster's nodes fit, growing as nodes join); rendering starts once
    `min_workers` are up (or no more can come)."""

    def __init__(self, address: str | None, job: str, workers: int | None, cpus_per_worker: float,
                 gpus_per_worker: float, comfyui: str | None, comfyui_args: list, start_timeout: float = 300,
                 worker_timeout: float | None = None, note=None, min_workers: int = 1):
        ray = self.ray = require_ray()
        if not ray.is_initialized():  # "local": a new Ray on this machine, even where RAY_ADDRESS names a cluster
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=True)
        run = f"{job}_{uuid.uuid4().hex[:6]}"  # actor names are unique per run (a killed run's names free up late)
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(PACK_DIR), os.environ.get("PYTHONPATH")]))}
        actor_class = ray.remote(RenderActor)
        threads = max(1, int(cpus_per_worker)) if not gpus_per_worker else None
        self.note = note or (lambda text: log.warning("ADD Turbo batch: %s", text))

        def spawn(name: str):
            # max_concurrency: ready() answers while render() runs (renders take a lock), so a lost worker shows
            return actor_class.options(
                num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=-1, max_task_retries=-1,
                max_concurrency=4, name=f"add_turbo_batch_{run}_{name}", namespace=NAMESPACE,
                runtime_env={"env_vars": env}).remote(name, run, comfyui, list(comfyui_args), threads)

        self.pool = ElasticPool(ray, spawn, lambda nodes: node_fits(nodes, cpus_per_worker, gpus_per_worker),
                                workers, worker_timeout or WORKER_TIMEOUT, start_timeout, lambda text: self.note(text))
        self.ceiling = workers
        try:
            self.first = self.pool.wait_first(min_workers)
        except WorkerStartError as error:
            self.close()
            raise WorkerStartError(
                f"{error}\n(each worker: {cpus_per_worker} CPU(s)" + (f", {gpus_per_worker} GPU(s)" if gpus_per_worker else "")
                + f"; the cluster has {json.dumps(ray.cluster_resources())})") from error
        except BaseException:  # Ctrl-C while the workers start
            self.close()
            raise

    def object_info(self) -> dict:
        try:
            return self.ray.get(self.first.actor.object_info.remote(), timeout=self.pool.start_timeout)
        except self.ray.exceptions.GetTimeoutError as error:
            raise WorkerStartError(f"worker {self.first.name} did not answer in {self.pool.start_timeout:.0f} s") from error

    def outcomes(self, items, note=None):
        """Outcomes of `items` (item dicts) as they finish, each once; `note(text)` hears of workers that
        come and go. Raises NoWorkerLeft."""
        if note is not None:
            self.note = note
        return self.pool.outcomes(items)

    def describe(self) -> str:
        up = self.pool.up()
        nodes = sorted({w.node for w in up})
        ceiling = f"up to {self.ceiling}" if self.ceiling else "as many as the cluster fits"
        return f"Ray workers ({ceiling}; {len(up)} up on {', '.join(nodes)}, more as they start)"

    def status(self) -> str:
        return self.pool.status()

    def summary(self) -> str:
        return self.pool.summary()

    def close(self) -> None:
        self.pool.close()
