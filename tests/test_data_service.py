"""Training input on tf.data service (--data_service): the program's command line, batches found by number (what
the service shards), a served pipeline in-process, and (slow) a dispatcher and two workers as processes that a
training run reads from, one of them SIGKILLed mid-run and replaced."""
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.data import service
from exemplar_tf.errors import InputError
from exemplar_tf.training import inputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    ([], "give exactly one of --dispatcher or --worker"),
    (["--dispatcher", "--worker"], "give exactly one of --dispatcher or --worker"),
    (["--dispatcher"], "--dispatcher needs --port"),
    (["--dispatcher", "--port=70000"], "--port must be in [0, 65535], got 70000"),
    (["--dispatcher", "--port=5050", "--dispatcher_address=h:1"], "--dispatcher_address is the worker's"),
    (["--worker"], "--worker needs --dispatcher_address=HOST:PORT"),
    (["--worker", "--dispatcher_address=localhost"], "--dispatcher_address must be grpc://HOST:PORT or HOST:PORT"),
    (["--worker", "--dispatcher_address=h:1", "--work_dir=/tmp/x"], "--work_dir is the dispatcher's"),
])
def test_the_program_refuses_a_bad_command_line_in_one_line(args, message):
    done = subprocess.run([sys.executable, "-m", "exemplar_tf.data_service", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip() == f"Error: {done.stderr.strip()[7:]}"
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_addresses_and_an_unreachable_dispatcher(tiny_config, tmp_path):
    assert service.parse_address("grpc://10.0.0.2:5050") == ("10.0.0.2", 5050)
    assert service.parse_address("host:5050") == ("host", 5050) and service.parse_address("host") is None
    with pytest.raises(InputError, match="--data_service must be grpc://HOST:PORT"):
        from exemplar_tf.training.config import validate
        validate(tiny_config(tmp_path / "run", data_service="grpc://host"))
    port = _free_port()
    started = time.monotonic()
    with pytest.raises(InputError, match=rf"--data_service=127.0.0.1:{port}: no tf.data service dispatcher answers"):
        service.wait_for_dispatcher(f"127.0.0.1:{port}", timeout_s=1.0)
    assert time.monotonic() - started < 10


def _batches(dataset, count):
    return list(dataset.take(count).as_numpy_iterator())


def _one_size_folder(path, count=24, side=40):
    rng = np.random.default_rng(0)
    for i in range(count):
        (path / "train" / "a").mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        tf.io.write_file(str(path / "train" / "a" / f"{i:03d}.png"), tf.io.encode_png(image))
    return f"folder:{path}"


@pytest.mark.parametrize("settings", [
    dict(seed_sampling="online", objective="nonparametric", batch_norm=True),
    dict(method="npid", objective="nonparametric", image_size=32),
], ids=["online", "npid"])
def test_a_batch_found_by_its_number_is_the_in_process_batch(tiny_config, tmp_path, settings):
    """The service shards batch numbers; batch b of pipeline 1 of 2 is the in-process stream's batch b (online
    Exemplar-CNN patches bitwise; NPID the same images, its host augmentation seeded per element instead)."""
    config = tiny_config(tmp_path / "run", source=_one_size_folder(tmp_path / "images"), **settings)
    ctx = tf.distribute.InputContext(2, 1, 2)
    local = inputs.training_data(config).dataset_fn(ctx, 7)
    served = dataclasses.replace(config, data_service="localhost:1")  # by number, built without a dispatcher
    data = inputs.exemplar_data(served) if served.method == "exemplar" else inputs.npid_data(served)
    want, got = _batches(local, 3), _batches(data.dataset_fn(ctx, 7), 3)
    for one, other in zip(want, got):
        np.testing.assert_array_equal(one["label"], other["label"])
        if config.method == "exemplar":
            np.testing.assert_array_equal(one["image"], other["image"])


def test_fixed_seeds_by_number_visit_every_seed_once_per_epoch(tiny_config, tmp_path):
    config = tiny_config(tmp_path / "run", data_service="localhost:1", fixed_copies=2)
    os.makedirs(config.run_dir)
    data = inputs.exemplar_data(config)
    ctx = tf.distribute.InputContext(1, 0, 1)
    labels = np.concatenate([b["label"] for b in _batches(data.dataset_fn(ctx, 0), 2 * 64 * 2 // 16)])
    assert np.bincount(labels[:128], minlength=64).tolist() == [2] * 64  # epoch 1: both copies of every seed
    assert np.bincount(labels[128:], minlength=64).tolist() == [2] * 64  # epoch 2


def test_a_pipeline_served_by_two_in_process_workers(tiny_config, tmp_path):
    """Fixed seeds with device augmentation (raw windows and the seed (pipeline seed, batch number)) through a
    dispatcher and two workers in this process: both workers registered, and every batch served is the batch its
    number gives without the service, none twice."""
    dispatcher = service.dispatcher(_free_port())
    address = dispatcher.target.split("://")[1]
    workers = [service.worker(address) for _ in range(2)]
    try:
        config = tiny_config(tmp_path / "run", augment_on="device", data_service=address)
        os.makedirs(config.run_dir)
        ctx = tf.distribute.InputContext(1, 0, 1)
        got = _batches(inputs.training_data(config).dataset_fn(ctx, 0), 6)
        assert dispatcher._num_workers() == 2  # noqa: SLF001
        numbers = [int(batch["aug_seed"][1]) for batch in got]
        assert len(set(numbers)) == len(numbers), numbers
        want = _batches(inputs.exemplar_data(config).dataset_fn(ctx, 0), max(numbers) + 1)  # by number, no service
        for number, batch in zip(numbers, got):
            for key in ("window", "label", "aug_seed"):
                np.testing.assert_array_equal(want[number][key], batch[key])
    finally:
        for server in [*workers, dispatcher]:
            server.stop()


# --- processes ------------------------------------------------------------------------------------------------

SERVICE_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="dispatcher_impl=3")  # splits + tasks


class Processes:
    """Started processes with their logs; `stop_all` kills what is still running (tests call it in `finally`)."""

    def __init__(self, folder):
        self.folder = folder
        self.started = []

    def start(self, name, args, env=None):
        log = self.folder / f"{name}.log"
        with open(log, "w") as out:
            process = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdout=out,
                                       stderr=subprocess.STDOUT)
        self.started.append(process)
        return process, log

    def stop_all(self):
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


def _wait_for(log, pattern, process, timeout=180):
    """The first match of `pattern` in the log; fails when the process exits or `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text())
        if found:
            return found
        assert process.poll() is None, f"{log.name} exited ({process.returncode}):\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"no {pattern!r} in {log.name} within {timeout} s:\n{log.read_text()[-3000:]}")


def _start_worker(processes, name, port):
    process, log = processes.start(name, ["exemplar_tf.data_service", "--worker",
                                          f"--dispatcher_address=127.0.0.1:{port}"])
    return process, _wait_for(log, r"worker serving at (localhost:\d+)", process).group(1)


def _train_command(tmp_path, port, steps):
    return ["exemplar_tf.train", f"--flagfile={REPO}/flags/demo.cfg", f"--run_dir={tmp_path / 'run'}",
            f"--export_base={tmp_path / 'sm'}", f"--steps={steps}", "--checkpoint_every=5", "--log_every=5",
            "--num_seeds=64", "--seeds_per_image=8", "--batch_size=16", "--knn_source=", "--knn_every=0", "--noprogress",
            "--lr_decay_at=0.99",  # step 39 of 40, 44 of 45: the rerun to 45 steps moves no drop the run trained past
            f"--data_service=grpc://127.0.0.1:{port}"]


def _handed_out(dispatcher_log):
    """(batch numbers the dispatcher handed out as splits, worker addresses it gave tasks to)."""
    text = dispatcher_log.read_text()
    splits = [int(n) for n in re.findall(r"Returning from GetSplit, split=Tensor<type: int64 shape: \[\] values: "
                                         r"(\d+)>", text)]
    tasked = re.findall(r"Started assigning task \d+ to worker (\S+)", text)  # workers there when the job began
    tasked += re.findall(r"from task id \d+ in worker with address (\S+)\.", text)  # and the ones that joined it
    return splits, set(tasked)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_training_reads_from_two_worker_processes_and_survives_a_killed_worker(tmp_path):
    """A dispatcher (fault tolerant, --work_dir) and two workers on loopback ports; a 40-step training run reads
    its batches from them: the dispatcher gives both workers a task of the run's job and hands out the batch
    numbers (splits), each once. After the first checkpoint worker 0 is SIGKILLed and worker 1 stopped (SIGSTOP):
    the trainer cannot reach step 40 without a serving worker (35 steps take well under a second here). A new
    worker is started: it gets a task and training goes on to step 40. Rerun with --steps=45, the run resumes
    from step 40 in a new job that starts at batch 40 and says so."""
    processes = Processes(tmp_path)
    port = _free_port()
    try:
        dispatcher, dispatcher_log = processes.start(
            "dispatcher", ["exemplar_tf.data_service", "--dispatcher", f"--port={port}",
                           f"--work_dir={tmp_path / 'journal'}"], env=SERVICE_ENV)
        _wait_for(dispatcher_log, rf"dispatcher serving at grpc://localhost:{port}", dispatcher)
        workers = [_start_worker(processes, f"worker{i}", port) for i in range(2)]
        trainer, trainer_log = processes.start("trainer", _train_command(tmp_path, port, 40))
        job = _wait_for(trainer_log, r"Input from the tf.data service at grpc://127.0.0.1:\d+ \(job (\S+),",
                        trainer).group(1)
        assert job.startswith("exemplar_tf-run-") and "-pipeline0of1-from0-" in job
        checkpoints = tmp_path / "run" / "checkpoints"
        deadline = time.monotonic() + 300
        while not list(checkpoints.glob("ckpt-5.index")):
            assert trainer.poll() is None and time.monotonic() < deadline, trainer_log.read_text()[-3000:]
            time.sleep(0.1)
        workers[0][0].send_signal(signal.SIGKILL)
        workers[1][0].send_signal(signal.SIGSTOP)
        workers[0][0].wait(timeout=30)
        splits, tasked = _handed_out(dispatcher_log)
        assert {address for _, address in workers} <= tasked, (tasked, workers)
        assert len(set(splits)) == len(splits) >= 5, splits  # each batch number handed out once
        time.sleep(10)
        assert trainer.poll() is None and not list(checkpoints.glob("ckpt-40.index")), "trained without workers"
        _, new_address = _start_worker(processes, "worker2", port)
        assert trainer.wait(timeout=420) == 0, trainer_log.read_text()[-3000:]
        assert "Finished 40 steps" in trainer_log.read_text()
        splits, tasked = _handed_out(dispatcher_log)
        assert new_address in tasked, (new_address, tasked)
        assert len(set(splits)) == len(splits) >= 40, splits
        assert os.listdir(tmp_path / "journal")  # the dispatcher's journal (fault-tolerant mode)
        # Resumed with more steps: a new job from the checkpoint's input position, and the line that says so. The
        # stopped worker is killed first: a worker that hangs (not dead) stalls the dispatcher's next task
        # assignment (README).
        workers[1][0].send_signal(signal.SIGKILL)
        workers[1][0].wait(timeout=30)
        trainer, trainer_log = processes.start("resumed", _train_command(tmp_path, port, 45))
        assert trainer.wait(timeout=300) == 0, trainer_log.read_text()[-3000:]
        log = trainer_log.read_text()
        assert re.search(r"\(job \S+-pipeline0of1-from40-\S+, batches from 40 on\): resumed at the checkpoint's "
                         r"input position 40 in a new job; batches the stopped run had in flight around it may "
                         r"repeat or be skipped", log), log[-3000:]
        assert "Finished 45 steps" in log
    finally:
        processes.stop_all()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_trainer_workers_read_one_job_each_and_stay_equal(tmp_path):
    """--strategy=multi_worker on two processes with --data_service: each trainer worker's input pipeline is its
    own job (pipeline 0 of 2, 1 of 2) on the same dispatcher and workers, and the workers' states after 10 steps
    are equal but for the BatchNorm statistics (each worker's own batches, as in-process: test_multi_worker.py)."""
    import json

    processes = Processes(tmp_path)
    port = _free_port()
    try:
        dispatcher, dispatcher_log = processes.start(
            "dispatcher", ["exemplar_tf.data_service", "--dispatcher", f"--port={port}"], env=SERVICE_ENV)
        _wait_for(dispatcher_log, rf"dispatcher serving at grpc://localhost:{port}", dispatcher)
        for i in range(2):
            _start_worker(processes, f"worker{i}", port)
        cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
        command = _train_command(tmp_path, port, 10) + ["--strategy=multi_worker", "--objective=nce",
                                                        "--batch_norm", "--nce_m=32"]
        trainers = [processes.start(f"trainer{i}", command, env=dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": i}}))) for i in range(2)]
        for trainer, log in trainers:
            assert trainer.wait(timeout=480) == 0, log.read_text()[-3000:]
        logs = [log.read_text() for _, log in trainers]
        for index, log in enumerate(logs):
            assert re.search(rf"\(job exemplar_tf-run-\S+-pipeline{index}of2-from0-\S+, batches from 0 on\)", log)
        states = [re.findall(r"worker state at step 10: fingerprint [0-9a-f]+ \((.*)\)", log) for log in logs]
        states = [[re.sub(r"statistics [0-9a-f]+, ", "", state) for state in found] for found in states]
        assert states[0] and states[0] == states[1], states
        assert len(set(_handed_out(dispatcher_log)[0])) >= 10
    finally:
        processes.stop_all()
