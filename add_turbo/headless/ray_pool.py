"""The batch's elastic pool of Ray workers: it hands items to the workers that are up, takes the items of
a lost worker back, and grows with the cluster (add_turbo.headless.ray_batch makes the workers).

Every wait is a `ray.wait` of at most TICK seconds, after which the driver looks at the cluster:
- a worker whose node is no longer alive (`ray.nodes()`), or that has not answered a probe (a call to
  its `ready()`, which a threaded actor answers while it renders) for `worker_timeout` seconds, is lost:
  its item goes back to the front of the queue, for the workers that remain, and its task is cancelled.
  Its actor stays (max_restarts=-1): when Ray restarts it somewhere (its node rejoins, another has room),
  the probe answers and it takes items again.
- while the cluster's alive nodes fit more workers than there are (`wanted`, a ceiling with --workers N)
  one more is started; a worker that fails to start is reported and its place stays empty.
- with no worker up or starting for `worker_timeout` seconds, the run stops (NoWorkerLeft).
An outcome of an item that already has one (a stale task that ran after all) is dropped: each item
comes out once. An item whose worker was lost MAX_LOSSES times is given up as failed.
"""

from __future__ import annotations

import time
from collections import deque

from .batch_worker import NoWorkerLeft, WorkerStartError

TICK = 1.0  # s: the longest the driver waits before it looks at the cluster again
PROBE_EVERY = 2.0  # s: a busy worker is probed this often
GROW_EVERY = 2.0  # s: how often the cluster's nodes are counted for new workers
WORKER_TIMEOUT = 60.0  # s: the default of --worker-timeout
MAX_LOSSES = 3  # an item on which this many workers were lost (it kills its machine?) is recorded failed


class Worker:
    """One actor and what the driver knows of it. state: starting, ready, lost or failed (for good)."""

    def __init__(self, name: str, actor, now: float):
        self.name, self.actor = name, actor
        self.state, self.since = "starting", now
        self.node, self.node_id, self.why = None, None, ""
        self.probe, self.probe_sent = actor.ready.remote(), now
        self.task = None  # the ref of the item it renders
        self.images = 0

    def label(self) -> str:
        where = f" on {self.node}" if self.node else ""
        return f"{self.name}{where}"


class ElasticPool:
    """Workers made by `spawn(name)` (an actor handle), as many as `fits(alive nodes)` allows, at most
    `ceiling` (None: no ceiling). `note(text)` reports the workers as they come and go."""

    def __init__(self, ray, spawn, fits, ceiling: int | None, worker_timeout: float, start_timeout: float, note):
        self.ray, self.spawn, self.fits, self.ceiling = ray, spawn, fits, ceiling
        self.worker_timeout, self.start_timeout, self.note = worker_timeout, start_timeout, note
        self.workers: list[Worker] = []
        self.counted_at, self.dead_nodes = -GROW_EVERY, set()
        self.queue = deque()  # items taken back from lost workers: sent before new ones
        self.in_flight = {}  # ref -> item, one per busy worker
        self.stale = {}  # ref -> worker: tasks of lost workers, cancelled; one that ran after all still counts
        self.losses, self.given_up = {}, []
        self.running = False

    # --- the cluster -------------------------------------------------------------------------------
    def look(self, now: float) -> None:
        """Count the nodes (at most every GROW_EVERY s): workers on dead nodes are lost; start new ones."""
        if now - self.counted_at < GROW_EVERY:
            return
        self.counted_at = now
        nodes = self.ray.nodes()
        alive = [n for n in nodes if n.get("Alive")]
        self.dead_nodes = {n["NodeID"] for n in nodes if not n.get("Alive")}
        for worker in self.workers:
            if worker.state == "ready" and worker.node_id in self.dead_nodes:
                self._lose(worker, f"its node {worker.node} is down", now)
        wanted = self.fits(alive)
        if self.ceiling is not None:
            wanted = min(wanted, self.ceiling)
        while len(self.workers) < max(wanted, 1):
            name = f"w{len(self.workers) + 1}"
            self.workers.append(Worker(name, self.spawn(name), now))
            if self.running:
                self.note(f"worker {name} starting (the cluster has room for {wanted})")

    def up(self) -> list[Worker]:
        return [w for w in self.workers if w.state == "ready"]

    def usable(self) -> list[Worker]:
        return [w for w in self.workers if w.state in ("ready", "starting")]

    def status(self) -> str:
        return f"{len(self.up())} worker(s) up"

    # --- probes ------------------------------------------------------------------------------------
    def _answered(self, worker: Worker, now: float) -> None:
        ref, worker.probe = worker.probe, None
        try:
            state = self.ray.get(ref)
        except self.ray.exceptions.ActorDiedError as error:  # dead for good (killed, or out of restarts)
            self._fail(worker, f"died: {_first_line(error)}")
            return
        except self.ray.exceptions.RayActorError:  # unreachable for now: probed again
            return
        if state["error"]:
            self._fail(worker, state["error"])
        elif state["node_id"] not in self.dead_nodes and (worker.state != "ready" or state["node_id"] != worker.node_id):
            # up for the first time, back after it was lost, or restarted on another node before it was seen lost
            came = "up" if worker.state == "starting" else "back"
            worker.node, worker.node_id = state["node"], state["node_id"]
            if self.running:
                self.note(f"worker {worker.name} {came} on node {worker.node}")
            worker.state, worker.since = "ready", now

    def _probe(self, now: float) -> None:
        """Probe busy and lost workers; give up on those whose probe or start takes too long."""
        for worker in self.workers:
            if worker.state == "starting" and now - worker.since > self.start_timeout:
                self._fail(worker, f"did not start in {self.start_timeout:.0f} s (no room on the cluster for it?)")
            elif worker.state == "ready" and worker.probe is not None and now - worker.probe_sent > self.worker_timeout:
                self._lose(worker, f"it did not answer for {self.worker_timeout:.0f} s", now)
            elif worker.probe is None and (worker.state == "lost" or (
                    worker.task is not None and now - worker.probe_sent > PROBE_EVERY)):
                worker.probe, worker.probe_sent = worker.actor.ready.remote(), now

    def _take_back(self, worker: Worker, cancel: bool) -> str:
        """The worker's item back to the queue (its task cancelled where it may still be queued)."""
        ref, worker.task = worker.task, None
        item = self.in_flight.pop(ref, None) if ref is not None else None
        if item is None:
            return ""
        if cancel:
            self.ray.cancel(ref)  # queued behind the actor's restart: then it never runs
            self.stale[ref] = worker
        self.losses[item["index"]] = self.losses.get(item["index"], 0) + 1
        if self.losses[item["index"]] >= MAX_LOSSES:
            self.given_up.append(item)
            return f"; item {item['index']} given up: {MAX_LOSSES} workers were lost on it"
        self.queue.appendleft(item)
        return f"; item {item['index']} goes to the others"

    def _lose(self, worker: Worker, why: str, now: float) -> None:
        worker.state, worker.since, worker.why = "lost", now, why
        self.note(f"worker {worker.label()} lost ({why})" + self._take_back(worker, cancel=True))

    def _fail(self, worker: Worker, why: str) -> None:
        worker.state, worker.why = "failed", why
        self.note(f"worker {worker.name} {why}" + self._take_back(worker, cancel=False))
        self.ray.kill(worker.actor, no_restart=True)

    # --- the loop ----------------------------------------------------------------------------------
    def wait_first(self, min_up: int = 1) -> Worker:
        """Start the workers the cluster fits; return the first that is up, once `min_up` are up or no
        more can come (the others failed, or start_timeout passed with at least one up).

        Raises:
            WorkerStartError: every worker failed to start, or none started in start_timeout.
        """
        start = time.monotonic()
        self.look(start)
        while len(self.up()) < min_up:
            waited = time.monotonic() - start > self.start_timeout
            if self.up() and (waited or len(self.usable()) < min_up):
                self.note(f"{len(self.up())} of the {min_up} workers asked for are up: rendering on those")
                break
            if not self.usable():
                raise WorkerStartError("no worker could start:\n" + "\n".join(
                    f"worker {w.name} {w.why}" for w in self.workers))
            if waited:
                raise WorkerStartError(f"no worker started in {self.start_timeout:.0f} s")
            self._wait_probes()
        self.running = True
        return self.up()[0]

    def _wait_probes(self) -> None:
        probes = [w.probe for w in self.workers if w.probe is not None]
        done, _ = self.ray.wait(probes, num_returns=len(probes), timeout=TICK) if probes else (time.sleep(TICK), [])
        now = time.monotonic()
        for worker in self.workers:
            if worker.probe is not None and worker.probe in done:
                self._answered(worker, now)
        self._probe(now)
        self.look(now)

    def outcomes(self, requests):
        """Outcomes of `requests` (item dicts), each once, as they finish.

        Raises:
            NoWorkerLeft: no worker up or starting for worker_timeout seconds.
        """
        source, finished, none_since = iter(requests), set(), None
        ahead = next(source, None)  # the next new item (None: no more), so that the end is known at once
        while True:
            for worker in self.up():  # an idle worker takes the next item
                if worker.task is None and (self.queue or ahead is not None):
                    if self.queue:
                        item = self.queue.popleft()
                    else:
                        item, ahead = ahead, next(source, None)
                    worker.task = worker.actor.render.remote(item)
                    self.in_flight[worker.task] = item
            while self.given_up:
                item = self.given_up.pop()
                finished.add(item["index"])
                yield {"index": item["index"], "status": "failed", "images": [], "seconds": 0.0, "worker": None,
                       "error": f"{MAX_LOSSES} workers were lost while they rendered it; not retried"}
            if ahead is None and not self.queue and not self.in_flight:
                return
            now = time.monotonic()
            if self.usable():
                none_since = None
            elif none_since is None:
                none_since = now
                self.note(f"no worker left: waiting up to {self.worker_timeout:.0f} s for one to come back")
            elif now - none_since > self.worker_timeout:
                raise NoWorkerLeft("no worker left: " + "; ".join(f"{w.label()} {w.state} ({w.why})"
                                                                  for w in self.workers))
            yield from self._collect(finished)

    def _collect(self, finished: set):
        """Wait up to TICK for outcomes and probes; yield the outcomes of items not finished before."""
        refs = [*self.in_flight, *self.stale, *(w.probe for w in self.workers if w.probe is not None)]
        done, _ = self.ray.wait(refs, num_returns=min(1, len(refs)), timeout=TICK) if refs else ([], [])
        if not refs:
            time.sleep(TICK)
        elif done:
            done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        now = time.monotonic()
        for ref in done:
            prober = next((w for w in self.workers if w.probe == ref), None)
            if prober is not None:
                self._answered(prober, now)
                continue
            stale = self.stale.pop(ref, None)
            owner = stale or next(w for w in self.workers if w.task == ref)
            try:
                outcome = self.ray.get(ref)
            except self.ray.exceptions.TaskCancelledError:
                continue
            except (WorkerStartError, self.ray.exceptions.ActorDiedError) as error:  # gone for good
                if stale is None:
                    self._fail(owner, _first_line(error))
                continue
            except self.ray.exceptions.RayActorError as error:  # unavailable: Ray may restart it
                if stale is None:
                    self._lose(owner, _first_line(error), now)
                continue
            if stale is None:
                self.in_flight.pop(ref)
                owner.task = None
            if outcome["index"] in finished:
                continue  # a stale task ran after all: the item has its outcome already
            finished.add(outcome["index"])
            self.queue = deque(i for i in self.queue if i["index"] != outcome["index"])
            owner.images += 1
            yield outcome
        self._probe(now)
        self.look(now)

    def summary(self) -> str:
        parts = [f"{w.label()} {w.images} image(s)" + ("" if w.state == "ready" else f", {w.state}") for w in self.workers]
        return f"{len(self.workers)} worker(s): " + "; ".join(parts)

    def close(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker.actor, no_restart=True)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
