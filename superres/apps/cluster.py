"""Dataset-scale upscaling on Ray: `superres upscale IN_DIR -o OUT_DIR --ray [auto|ADDRESS]`.

Ray (the `[cluster]` extra, imported only here) does the scheduling, the retries and the handling
of lost workers and nodes; this module only says what a worker is:

- A pool of actors, each holding one loaded model (`--workers N`, `--gpus-per-worker F`; on CPUs
  each actor takes one CPU and runs torch with one thread, so N actors use N cores without
  fighting over them).
- Work items are (input path, output path) strings: the driver never reads pixels. Each actor runs
  `superres.upscale.upscale_file`, the function the local loop runs, so reading, checks,
  skip-existing, atomic writes and error reports are the same as without --ray. Paths must mean
  the same file on every node (a shared file system).
- A file that fails (corrupt, too large ...) comes back as an error entry, reported once, not
  retried. An actor that dies (killed, out of memory, node lost) is restarted by Ray and its
  unfinished task re-run (`max_restarts`, `max_task_retries`); the write is atomic and idempotent,
  so a re-run cannot leave half a file.
- A driver that dies leaves finished outputs in place; rerunning the same command skips them (as
  without --ray) and does the rest. The driver writes one merged `--report`.

Multi-machine use:

    ray start --head                                   # on the first machine
    ray start --address HEAD_IP:6379                   # on each other machine
    superres upscale /shared/in -o /shared/out --ray auto --workers 16 --report report.json
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .filejob import FileJobOptions

log = logging.getLogger(__name__)

MAX_RESTARTS = 4       # an actor that dies is replaced this many times before the run gives up on it
MAX_TASK_RETRIES = 3   # a task whose actor died is re-run this many times


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run is (`--ray`, `--workers`, `--gpus-per-worker`)."""

    address: str = "auto"              # auto = the running cluster, else a new local one; or an address
    workers: int | None = None         # None: one per CPU, or per GPU share
    gpus_per_worker: float = 0.0       # 0: CPU workers (one thread each)
    no_progress: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RayOptions":
        return cls(address=args.ray, workers=args.workers, gpus_per_worker=float(args.gpus_per_worker or 0),
                   no_progress=bool(getattr(args, "no_progress", False)))


class UpscaleWorker:
    """One model on one worker; `run` does one file. A plain class, made a Ray actor by
    `run_on_ray` (so tests can subclass it)."""

    def __init__(self, options: dict[str, Any], args: dict[str, Any], fmt: str | None,
                 input_paths: list[str], threads: int | None) -> None:
        import torch

        from ..inference.upscaler import Upscaler

        if threads:
            torch.set_num_threads(threads)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        Upscaler.tune_host_allocator_before(options.get("device", "auto"), options.get("tile"))
        self.up = Upscaler.from_pretrained(**options)
        self.up.tune_host_allocator()
        from .filejob import FileJobOptions

        self.opts = FileJobOptions(**args)
        self.fmt = fmt
        self.input_paths = {Path(p) for p in input_paths}
        # the PNG writer's threads: as many as the model's, since the other workers on this
        # machine are computing on the other cores
        self.encode_threads = threads or torch.get_num_threads()

    def run(self, src: str, dst: str) -> dict[str, Any]:
        from .filejob import upscale_file

        entry = upscale_file(self.up, Path(src), Path(dst), self.opts, self.fmt, self.input_paths,
                             self.encode_threads)
        entry["worker"] = f"{os.uname().nodename}:{os.getpid()}"
        return entry


def connect(address: str, num_cpus: int | None = None) -> None:
    """`auto`: the running cluster if there is one (RAY_ADDRESS or a local `ray start`), else a new
    local one; anything else is a cluster address."""
    import ray

    if ray.is_initialized():
        return
    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address == "auto":
        try:
            ray.init(address="auto", **kwargs)
            log.info("connected to the running Ray cluster")
            return
        except (ConnectionError, RuntimeError, ValueError):
            log.info("no running Ray cluster; starting a local one")
        ray.init(num_cpus=num_cpus, **kwargs)
    else:
        ray.init(address=address, **kwargs)


def run_on_ray(ray_opts: RayOptions, model: dict[str, Any], job: "FileJobOptions",
               plan: list[tuple[Path, Path]], fmt: str | None, input_paths: set[Path], *,
               worker: type = UpscaleWorker, num_cpus: int | None = None) -> list[dict[str, Any]]:
    """Upscale every (src, dst) of `plan` on a Ray actor pool; the report entries, in plan order.

    model: `Upscaler.from_pretrained` keywords (each actor loads its own); job: the file job's
    options, as the local loop takes them."""
    import ray
    from ray.util import ActorPool
    from tqdm import tqdm

    connect(ray_opts.address, num_cpus)
    gpus = float(ray_opts.gpus_per_worker or 0)
    cpus_total = int(ray.cluster_resources().get("CPU", 1))
    workers = ray_opts.workers or (max(1, int(ray.cluster_resources().get("GPU", 0) // gpus)) if gpus
                                   else max(1, cpus_total))
    workers = max(1, min(workers, len(plan)))
    options = dict(model)
    # plain values to send to the actors; tiles of many workers would garble one terminal
    worker_args = {**dataclasses.asdict(job), "no_progress": True}
    remote = ray.remote(num_cpus=0 if gpus else 1, num_gpus=gpus, max_restarts=MAX_RESTARTS,
                        max_task_retries=MAX_TASK_RETRIES)(worker)
    actors = [remote.remote(options, worker_args, fmt, [str(p) for p in input_paths], None if gpus else 1)
              for _ in range(workers)]
    log.info("Ray: %d worker(s) (%s each) for %d file(s)", workers,
             f"{gpus:g} GPU" if gpus else "1 CPU", len(plan))
    pool = ActorPool(actors)
    todo = [(str(src), str(dst)) for src, dst in plan]
    results: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=len(todo), desc="images", unit="img", disable=ray_opts.no_progress)
    try:
        for entry in pool.map_unordered(lambda a, item: a.run.remote(*item), todo):
            results[entry["input"]] = entry
            bar.update(1)
            if entry["status"] == "error":
                log.error("%s", entry["error"])
    except ray.exceptions.RayError as e:
        # Retries are exhausted (an actor kept dying): report what is left as not done.
        log.error("Ray gave up: %s", str(e).splitlines()[0])
        for src, dst in todo:
            results.setdefault(src, {"input": src, "output": dst, "status": "error",
                                     "error": f"{src}: not done: the Ray workers failed ({type(e).__name__})"})
    finally:
        bar.close()
        for a in actors:
            ray.kill(a, no_restart=True)
    return [results[src] for src, _ in todo]


def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Ray (dataset-scale inference; the [cluster] extra)")
    g.add_argument("--ray", default=None, metavar="auto|ADDRESS",
                   help="run on Ray: auto = the running cluster, or a new local one; or a cluster address")
    g.add_argument("--workers", type=int, default=None,
                   help="actors, each with one loaded model (default: one per CPU, or per GPU share)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="F",
                   help="GPUs per actor (e.g. 0.5 = two actors per GPU; default 0: CPU workers)")
