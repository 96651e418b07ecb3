"""Training input on tf.data service: the dispatcher and worker servers, and the trainer's side of a job.

    python -m exemplar_tf.data_service --dispatcher --port=5050 --work_dir=/shared/dispatcher
    python -m exemplar_tf.data_service --worker --dispatcher_address=HOST:5050      # one per machine or core group
    python -m exemplar_tf.train ... --data_service=grpc://HOST:5050

Processing mode: dynamic sharding ("distributed_epoch", `ShardingPolicy.DYNAMIC`) over *batch numbers*. The served
dataset is `range(start, ...)` mapped to "batch b of this input pipeline" (`training.inputs`: every pipeline
computes batch b from b alone, stateless), so the dispatcher hands each batch number to one worker: every batch
is made once whatever the number of workers, its content does not depend on which worker made it, and an epoch
(the batches that cover the instances once) is seen once. With OFF (every worker runs the whole dataset) our
seeded pipelines would give every batch once per worker. Batches arrive roughly, not exactly, in number order
(workers race); a worker that dies loses the batches it had made but not delivered (at most once).

Jobs: one per input pipeline (`job_name`): a pipeline's dataset differs from the others' (its shard of every
epoch, its own seed), so the pipelines of a multi-worker run cannot share one dataset (coordinated reads,
consumer_index/num_consumers, serve one dataset to lockstep consumers). Replicas of one pipeline take
consecutive batches of it, as they do in-process. The name holds the run, the pipeline, the start batch and the
process, so a resumed or restarted trainer starts a fresh job instead of joining the half-read job of the
process before it.

Resume: a job cannot restart at an exact element, so a resumed run starts a new job at the checkpoint's input
position P (batch numbers P, P+1, ...). Batches the stopped run had consumed out of order around P are repeated
or skipped: at most the ones in flight when the checkpoint was written (the workers' buffers).

No TensorFlow at import: the program checks its command line before TensorFlow loads.
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import time

PROTOCOL = "grpc"
CONNECT_TIMEOUT_S = 15.0  # how long a trainer tries to reach the dispatcher before giving up
HEARTBEAT_MS = 1000  # worker -> dispatcher heartbeats: a new worker gets its tasks within a second
WORKER_TIMEOUT_MS = 10_000  # the dispatcher drops a worker silent this long (a killed one)
_ADDRESS = re.compile(r"^(?:grpc://)?(?P<host>[^:/\s]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


def parse_address(address: str) -> tuple[str, int] | None:
    """(host, port) of "grpc://HOST:PORT" or "HOST:PORT", or None if `address` is neither (or the port is not in
    1..65535)."""
    found = _ADDRESS.match(address)
    if not found or not 0 < int(found["port"]) < 65536:
        return None
    return found["host"].strip("[]"), int(found["port"])


def address_problem(flag: str, address: str) -> str | None:
    """The one-line problem of --flag=address, or None when it is HOST:PORT (with or without grpc://)."""
    if parse_address(address) is None:
        return f"--{flag} must be grpc://HOST:PORT or HOST:PORT (a port in 1..65535), got {address!r}"
    return None


def service_target(address: str) -> str:
    """"grpc://HOST:PORT" for an address `parse_address` accepts."""
    host, port = parse_address(address)
    return f"{PROTOCOL}://{host}:{port}"


def wait_for_dispatcher(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Returns once the dispatcher's port accepts connections; raises InputError naming the address after
    `timeout_s` (the tf.data service client itself would retry for ever)."""
    from exemplar_tf.errors import InputError

    host, port = parse_address(address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout_s)):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise InputError(f"--data_service={address}: no tf.data service dispatcher answers there (tried for "
                                 f"{timeout_s:.0f} s); start one with python -m exemplar_tf.data_service "
                                 f"--dispatcher --port={port}") from None
            time.sleep(0.5)


def job_name(run_dir: str, pipeline: int, num_pipelines: int, start: int) -> str:
    """The job of one input pipeline of one trainer process: run (a digest of the run directory), pipeline, first
    batch number and the process (pid + start time), so no two trainers, and no restart of one, share a job."""
    run = hashlib.sha256(os.path.abspath(run_dir).encode()).hexdigest()[:12]
    return (f"exemplar_tf-{os.path.basename(os.path.normpath(run_dir))}-{run}-pipeline{pipeline}of{num_pipelines}"
            f"-from{start}-{os.getpid()}-{time.time_ns() // 1_000_000}")


def served(dataset, address: str, name: str):
    """`dataset` (an endless stream whose source is a range of batch numbers) read from the tf.data service at
    `address` in job `name`, dynamically sharded (each batch number to one worker)."""
    import tensorflow as tf

    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC, service=service_target(address),
        job_name=name))


def start_line(address: str, name: str, start: int) -> str:
    """What a trainer prints when it starts reading a job: where, which job, and what a resumed run does."""
    line = f"Input from the tf.data service at {service_target(address)} (job {name}, batches from {start} on"
    if start:
        return (f"{line}): resumed at the checkpoint's input position {start} in a new job; batches the stopped "
                f"run had in flight around it may repeat or be skipped")
    return f"{line})"


def dispatcher(port: int, work_dir: str = ""):
    """A started dispatcher on `port`; with `work_dir`, fault tolerant: it journals its state there and a
    dispatcher restarted with the same work_dir (and port) recovers its jobs."""
    import tensorflow as tf

    service = tf.data.experimental.service
    return service.DispatchServer(service.DispatcherConfig(
        port=port, protocol=PROTOCOL, work_dir=work_dir or None, fault_tolerant_mode=bool(work_dir),
        worker_timeout_ms=WORKER_TIMEOUT_MS))


def worker(dispatcher_address: str, port: int = 0, host: str = "localhost"):
    """A started worker registered with the dispatcher at `dispatcher_address`, serving on `port` (0: any free
    one); trainers reach it at `host`:port."""
    import tensorflow as tf

    service = tf.data.experimental.service
    dispatcher_host, dispatcher_port = parse_address(dispatcher_address)
    return service.WorkerServer(service.WorkerConfig(
        dispatcher_address=f"{dispatcher_host}:{dispatcher_port}", worker_address=f"{host}:%port%", port=port,
        protocol=PROTOCOL, heartbeat_interval_ms=HEARTBEAT_MS))
