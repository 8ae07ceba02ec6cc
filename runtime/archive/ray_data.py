"""Archives scored on Ray (`--ray`): the rows go through Ray Data's `map_batches` over a pool of
actors, each opening its own detector once (CPU, or a fraction of a GPU), and come back in input
order (`preserve_order`), so the command writes exactly what a local run writes.

Where it runs:
- `local`: a private Ray instance on this machine for this run (`--ray-cpus`), listening on the
  loopback interface only (Ray's single-machine mode), shut down at the end;
- `auto` or HOST:PORT: an existing cluster (`ray start --head` on the head node); the command
  connects as a driver and disconnects at the end. The bundle path (and trusted keys, passed to
  the workers) must be readable at the same path on every node.
An actor that dies is restarted by Ray and its batch retried, so results stay complete. A stop
request ends the run after the row in hand: what came back is written, the rest is not.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from ..detector import DetectorSpec
from ..errors import ZsadEdgeError
from ..signing import TRUSTED_KEYS_ENV
from ..stopping import StopRequest
from .rows import Outcome, Read, Row, Work, score_rows

RAY_EXTRA = "pip install 'zsad-edge[ray]'"
LOCAL = "local"
# Ray's single-machine mode: node address 127.0.0.1, every listener on loopback (off by default on Linux).
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
BLOCKS_PER_ACTOR = 4  # input blocks per actor: enough to keep every actor busy, few enough to stay cheap


@dataclass(frozen=True)
class RayOptions:
    """address: `local`, `auto` or HOST:PORT; cpus: the local instance's CPUs (default: all);
    actors: the pool's size (default: CPUs / cpus_per_actor, at least 1); object_store_mb: the
    local instance's object store (default: Ray's)."""

    address: str = LOCAL
    cpus: int | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    object_store_mb: int | None = None
    batch_size: int = 1

    def record(self) -> dict:
        """For the run record: where and how the images were scored."""
        return {"address": self.address, "cpus_per_actor": self.cpus_per_actor, "gpus_per_actor": self.gpus_per_actor}

    def check(self) -> None:
        if self.cpus is not None and self.cpus < 1 or self.actors is not None and self.actors < 1:
            raise ZsadEdgeError("--ray-cpus and --ray-actors must be at least 1")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0 or self.batch_size < 1:
            raise ZsadEdgeError("--ray-cpus-per-actor must be > 0, --ray-gpus-per-actor >= 0, --batch-size >= 1")
        if self.address not in (LOCAL, "auto"):
            _check_reachable(self.address)


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data comes with the [data] extra of ray)
    except ImportError:
        raise ZsadEdgeError(f"--ray needs Ray Data: {RAY_EXTRA}") from None
    return ray


class ScoringActor:
    """One pool member: its own detector, scoring the batches Ray Data hands it."""

    def __init__(self, spec: DetectorSpec, work: Work, context: Any, read: Read | None) -> None:
        self.detector = spec.open()
        self.work, self.context, self.read = work, context, read

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns = zip(batch["index"], batch["path"], batch["tag"])
        rows = [{"index": int(i), "path": str(p), "tag": str(t)} for i, p, t in columns]
        outcomes = score_rows(self.detector, rows, self.work, self.context, self.read)
        # pickled: payloads (files, arrays, dicts) cross Ray Data's Arrow blocks as opaque bytes
        pickled = [pickle.dumps((ok, value)) for _, ok, value in outcomes]
        return {"index": batch["index"], "outcome": np.array(pickled, dtype=object)}


def _worker_environment() -> dict[str, str]:
    """What the workers must see of this process: the trusted keys, where set."""
    return {TRUSTED_KEYS_ENV: os.environ[TRUSTED_KEYS_ENV]} if os.environ.get(TRUSTED_KEYS_ENV) else {}


def _check_reachable(address: str) -> None:
    """An explicit HOST:PORT that nobody listens on is one clear line now, not minutes of Ray retries."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ZsadEdgeError(f"--ray wants local, auto or HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ZsadEdgeError(
            f"no Ray cluster at {address} ({exc.strerror or exc}): start one with `ray start --head`, "
            "or use --ray local"
        ) from None


def connect(ray, options: RayOptions) -> None:
    """Start the private local instance, or join the cluster at the address."""
    runtime_env = {"env_vars": _worker_environment()} if _worker_environment() else None
    quiet = {"log_to_driver": False, "configure_logging": False, "runtime_env": runtime_env}
    if options.address == LOCAL:
        if ray._private.services.get_node_ip_address() != "127.0.0.1":
            raise ZsadEdgeError(
                f"Ray was imported in this process before {SINGLE_MACHINE_ENV}=0 was set: a local instance would "
                "listen on every interface; set it before importing ray"
            )
        store = options.object_store_mb * 2**20 if options.object_store_mb else None
        ray.init(num_cpus=options.cpus or os.cpu_count(), include_dashboard=False, object_store_memory=store, **quiet)
        return
    try:
        ray.init(address=options.address, **quiet)
    except ConnectionError as exc:
        raise ZsadEdgeError(f"cannot join the Ray cluster at {options.address}: {str(exc).splitlines()[0]}") from None


def _pool_size(ray, options: RayOptions) -> int:
    """The actors asked for, or as many as the cluster's CPUs (GPUs) hold; an actor that no node
    could ever hold is refused now (Ray would wait for it forever)."""
    total = ray.cluster_resources()
    for resource, each in (("CPU", options.cpus_per_actor), ("GPU", options.gpus_per_actor)):
        if each and total.get(resource, 0) < each:
            raise ZsadEdgeError(
                f"each actor asks for {each:g} {resource}, and the Ray cluster has {total.get(resource, 0):g} in all"
            )
    if options.actors:
        return options.actors
    if options.gpus_per_actor:
        return max(1, int(total["GPU"] // options.gpus_per_actor))
    return max(1, int(total["CPU"] // options.cpus_per_actor))


def ray_outcomes(
    rows: Sequence[Row],
    spec: DetectorSpec,
    work: Work,
    context: Any,
    options: RayOptions,
    stop: StopRequest,
    read: Read | None = None,
) -> Iterator[Outcome]:
    """The rows scored by an actor pool, in input order, until a stop request."""
    if not rows:
        return
    if options.address == LOCAL:
        os.environ[SINGLE_MACHINE_ENV] = "0"  # read when ray is imported
    ray = import_ray()
    connect(ray, options)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its progress notes: the command shows its own bar
    try:
        context_options = ray.data.DataContext.get_current()
        context_options.execution_options.preserve_order = True
        context_options.enable_progress_bars = False  # the command shows its own bar
        actors = _pool_size(ray, options)
        dataset = ray.data.from_items(list(rows), override_num_blocks=min(len(rows), BLOCKS_PER_ACTOR * actors))
        scored = dataset.map_batches(
            ScoringActor,
            fn_constructor_kwargs={"spec": spec, "work": work, "context": context, "read": read},
            batch_size=options.batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=options.cpus_per_actor,
            num_gpus=options.gpus_per_actor,
        )  # Ray Data's actor pools replace a dead actor and run its batch again (max_restarts=-1 by default)
        for record in scored.iter_rows():
            ok, value = pickle.loads(record["outcome"])
            yield rows[int(record["index"])], ok, value
            if stop.requested:
                return
    except Exception:
        if stop.requested:  # a terminal's Ctrl-C reaches the local instance's workers too: a stop, not a failure
            return
        raise
    finally:
        ray.shutdown()
