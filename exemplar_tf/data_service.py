"""Serve training input on tf.data service: one dispatcher, any number of workers (exemplar_tf.data.service).

    python -m exemplar_tf.data_service --dispatcher --port=5050 [--work_dir=DIR]
    python -m exemplar_tf.data_service --worker --dispatcher_address=HOST:5050 [--port=0] [--host=localhost]
    python -m exemplar_tf.train ... --data_service=grpc://HOST:5050

Prints one line with its address once it serves, then runs until SIGTERM or SIGINT (exit 0).
"""
from __future__ import annotations

import signal
import threading

from absl import flags

from exemplar_tf import errors
from exemplar_tf.data import service
from exemplar_tf.errors import cli

flags.DEFINE_boolean("dispatcher", False, "Run the dispatcher (it hands the trainers' jobs to the workers).")
flags.DEFINE_boolean("worker", False, "Run a worker (it runs the input pipelines).")
flags.DEFINE_integer("port", 0, "Port to serve on (--dispatcher: required; --worker: 0 picks a free one).")
flags.DEFINE_string("work_dir", "", "--dispatcher: journal its state here (fault tolerant: a dispatcher restarted "
                                    "with the same --work_dir and --port recovers its jobs).")
flags.DEFINE_string("dispatcher_address", "", "--worker: the dispatcher's HOST:PORT.")
flags.DEFINE_string("host", "localhost", "--worker: the host name trainers reach this worker at.")
cli.check("port", cli.Bound(low=0, high=65535))


def _role_problem(values: flags.FlagValues) -> str | None:
    """Exactly one of --dispatcher / --worker, each with its own flags."""
    if values.dispatcher == values.worker:
        return "give exactly one of --dispatcher or --worker"
    if values.dispatcher:
        if not values.port:
            return "--dispatcher needs --port (workers and trainers connect to it there)"
        if values.dispatcher_address:
            return "--dispatcher_address is the worker's: a dispatcher takes --port (and --work_dir)"
        return None
    if values.work_dir:
        return "--work_dir is the dispatcher's: a worker keeps no state"
    if not values.dispatcher_address:
        return "--worker needs --dispatcher_address=HOST:PORT"
    return service.address_problem("dispatcher_address", values.dispatcher_address)


cli.check_flags(_role_problem)


def _wait_for_signal() -> int:
    """Blocks until SIGTERM or SIGINT; returns the signal's number."""
    received: list[int] = []
    done = threading.Event()

    def handle(number, frame):
        del frame
        received.append(number)
        done.set()

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, handle)
    while not done.wait(1.0):
        pass
    return received[0]


def main(argv):
    del argv  # errors.run refuses positional arguments
    options = flags.FLAGS
    if options.dispatcher:
        server = service.dispatcher(options.port, options.work_dir)
        journal = f", state journalled in {options.work_dir}" if options.work_dir else ""
        print(f"tf.data service dispatcher serving at {server.target}{journal}", flush=True)
    else:
        server = service.worker(options.dispatcher_address, options.port, options.host)
        print(f"tf.data service worker serving at {server._address} for the dispatcher at "  # noqa: SLF001
              f"{service.service_target(options.dispatcher_address)}", flush=True)
    number = _wait_for_signal()
    server.stop()
    print(f"stopped ({signal.Signals(number).name})", flush=True)


if __name__ == "__main__":
    errors.run(main)
