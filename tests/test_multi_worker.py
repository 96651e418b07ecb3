"""Worker processes on 127.0.0.1 train together with MultiWorkerMirroredStrategy (TF_CONFIG): two that train then
resume, and three whose chief is SIGKILLed mid-run."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from exemplar_tf.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_workers(tmp_path, steps, tag):
    """Starts two workers of one run (loopback ports), waits for both; returns (exit codes, logs)."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    command = [sys.executable, "-m", "exemplar_tf.train", f"--flagfile={REPO}/flags/demo.cfg",
               "--strategy=multi_worker", "--objective=nce", "--batch_norm", f"--run_dir={tmp_path / 'run'}",
               f"--export_base={tmp_path / 'sm'}", f"--steps={steps}", "--checkpoint_every=2", "--num_seeds=64",
               "--seeds_per_image=8", "--nce_m=32", "--batch_size=16", "--knn_source=", "--knn_every=0",
               "--noprogress", "--verbosity=0"]
    workers = []
    try:
        for index in range(2):
            env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                                      "index": index}}))
            log = open(tmp_path / f"{tag}_worker{index}.log", "w")
            workers.append((subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT),
                            log))
        codes = [process.wait(timeout=360) for process, _ in workers]
    finally:
        for process, log in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    return codes, [(tmp_path / f"{tag}_worker{i}.log").read_text() for i in range(2)]


def _fingerprints(log, step):
    """The worker's state digests at `step` without the BatchNorm moving statistics: those follow each worker's
    own batches (unsynchronised BatchNorm, as NPID's DataParallel training) and the chief's are the ones saved."""
    found = re.findall(rf"worker state at step {step}: fingerprint [0-9a-f]+ \((.*)\)", log)
    return [re.sub(r"statistics [0-9a-f]+, ", "", parts) for parts in found]


@pytest.mark.slow
@pytest.mark.timeout(840)
def test_two_workers_train_then_resume_together_with_equal_states(tmp_path):
    codes, logs = _run_workers(tmp_path, 4, "first")
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")).endswith("-4")
    assert "Export:" in logs[0] and "Export:" not in logs[1]
    assert not list((tmp_path / "run").glob("tmp_worker_*")), "non-chief checkpoints were not cleaned up"
    assert not list((tmp_path / "run").glob("*.tmp")) and not list((tmp_path / "run").glob(".*.tmp"))
    first = [_fingerprints(log, 4) for log in logs]
    assert first[0] and first[0] == first[1], "the workers' states differ after training"
    # Resume with more steps: both workers restore the chief's step-4 checkpoint and end at step 6, equal.
    codes, logs = _run_workers(tmp_path, 6, "resumed")
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    assert all("from step 4/6" in log for log in logs), "a worker did not resume from the chief's checkpoint"
    resumed = [_fingerprints(log, 6) for log in logs]
    assert resumed[0] and resumed[0] == resumed[1], "the workers' states differ after resuming"


# Three workers: the global batch split over them, equal banks at every checkpoint, a worker SIGKILLed mid-run.
WORKERS, GLOBAL_BATCH, STEPS, CHECKPOINT_EVERY = 3, 24, 20, 4
STATE_LINE = re.compile(r"^worker state at step (\d+): fingerprint ([0-9a-f]+) \((.*)\)$", re.MULTILINE)


def _start_workers(tmp_path, tag, started):
    """Starts the WORKERS processes of one run (run directory tmp_path/run, fresh loopback ports, logs
    tmp_path/<tag>_worker<i>.log); each Popen is also appended to `started` (the test kills them all at the end)."""
    tmp_path.mkdir(exist_ok=True)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(WORKERS)]}
    command = [sys.executable, "-m", "exemplar_tf.train", f"--flagfile={REPO}/flags/demo.cfg",
               "--strategy=multi_worker", "--objective=nce", "--batch_norm", f"--run_dir={tmp_path / 'run'}",
               f"--export_base={tmp_path / 'sm'}", f"--steps={STEPS}", f"--checkpoint_every={CHECKPOINT_EVERY}",
               "--log_every=4", "--num_seeds=64", "--seeds_per_image=8", "--nce_m=32",
               f"--batch_size={GLOBAL_BATCH}", "--knn_source=", "--knn_every=0", "--noprogress"]
    workers = []
    for index in range(WORKERS):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        path = tmp_path / f"{tag}_worker{index}.log"
        with open(path, "w") as log:
            process = subprocess.Popen(["nice", "-n", "5", *command], cwd=REPO, env=env, stdout=log,
                                       stderr=subprocess.STDOUT)
        started.append(process)
        workers.append((process, path))
    return workers


def _exit_codes(workers, timeout_s):
    """Each worker's exit status, None for one still running after `timeout_s` seconds (all waited together)."""
    deadline = time.monotonic() + timeout_s
    codes = []
    for process, _ in workers:
        try:
            codes.append(process.wait(timeout=max(deadline - time.monotonic(), 0.1)))
        except subprocess.TimeoutExpired:
            codes.append(None)
    return codes


def _wait_for_text(path, text, process, timeout_s):
    """Polls the log `path` until it holds `text`; fails if `process` ends first or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while text not in path.read_text():
        assert process.poll() is None, f"exited ({process.returncode}) before {text!r}:\n{path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout_s} s:\n{path.read_text()[-3000:]}"
        time.sleep(0.1)


def _states(path):
    """{step: (whole fingerprint, parts without the BatchNorm statistics)} from a worker's state lines. The
    moving statistics follow each worker's own batches (unsynchronised BatchNorm); every other part (weights,
    optimizer, head, bank, Z) must be bitwise equal on every worker."""
    return {int(step): (whole, re.sub(r"statistics [0-9a-f]+, ", "", parts))
            for step, whole, parts in STATE_LINE.findall(path.read_text())}


def _logs(workers):
    return "\n\n".join(f"{path.name}:\n{path.read_text()[-3000:]}" for _, path in workers)


def _assert_equal_shared_state(workers, steps):
    """Every worker logged its state at each of `steps`, and the shared parts (bank included) are equal."""
    states = [_states(path) for _, path in workers]
    for step in steps:
        parts = [state.get(step, (None, None))[1] for state in states]
        assert parts[0] is not None and "bank " in parts[0] and parts.count(parts[0]) == WORKERS, \
            f"step {step}: {parts}\n{_logs(workers)}"
    return states


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_three_workers_split_the_batch_keep_one_bank_and_resume_after_a_worker_is_killed(tmp_path):
    """Three workers on loopback, global batch 24: each worker's input pipeline yields per-replica batches of
    24/3 = 8 (its "input pipeline i of 3" line), and every worker logs the same shared state (weights, optimizer,
    head, memory bank, Z) at every checkpoint. Then the chief (worker 0, holder of the run-directory lock) is
    SIGKILLed right after its step-4 checkpoint: the two survivors' collectives are aborted (the dead peer's
    socket closes; a peer that stops answering is caught by the coordination service's missing heartbeats) and
    they exit by themselves with status 3 and one "a worker of the cluster is gone" line instead of hanging.
    The dead chief's flock died with it (only its stale `.lock` holder file stays), so restarting all three
    with the same command resumes from the last checkpoint to step 20.

    What is exact: the input is a pure function of (seed, input pipeline, start batch) and the collectives sum
    in a fixed ring order, so the resumed run's shared state equals the uninterrupted run's bit for bit at every
    checkpoint after the resume, on every worker, and so does the chief's whole fingerprint at step 20 (its
    BatchNorm moving statistics are the checkpointed ones). What is not: the non-chief workers' moving
    statistics. They are never all-reduced, each follows its own batches, and on resume every worker restores
    the chief's, so after a resume a non-chief worker's statistics differ from its uninterrupted twin's. They
    are neither saved nor exported, and training-mode BatchNorm uses batch statistics, so nothing else depends
    on them."""
    started = []
    try:
        whole = _start_workers(tmp_path / "whole", "whole", started)
        assert _exit_codes(whole, 900) == [0] * WORKERS, _logs(whole)
        for index, (_, path) in enumerate(whole):
            assert (f"input pipeline {index} of {WORKERS}: per-replica batch {GLOBAL_BATCH // WORKERS} of the "
                    f"global {GLOBAL_BATCH} over {WORKERS} replicas") in path.read_text()
        checkpoint_steps = list(range(CHECKPOINT_EVERY, STEPS + 1, CHECKPOINT_EVERY))
        reference = _assert_equal_shared_state(whole, checkpoint_steps)

        cut_dir = tmp_path / "cut"
        cut = _start_workers(cut_dir, "cut", started)
        chief, chief_log = cut[0]
        _wait_for_text(chief_log, f"worker state at step {CHECKPOINT_EVERY}:", chief, 900)
        chief.kill()
        assert chief.wait(timeout=60) == -signal.SIGKILL
        survivor_codes = _exit_codes(cut[1:], 240)
        assert survivor_codes == [3] * (WORKERS - 1), f"survivors: {survivor_codes}\n{_logs(cut)}"
        assert all("Training stopped: a worker of the cluster is gone" in path.read_text() for _, path in cut[1:])
        last = tf.train.latest_checkpoint(str(cut_dir / "run" / "checkpoints"))
        cut_at = int(last.rsplit("-", 1)[1])
        assert CHECKPOINT_EVERY <= cut_at < STEPS, f"killed too late: {last}"
        assert (cut_dir / "run" / ".lock").read_text().split()[0] == str(chief.pid), "expected the stale holder file"
        assert _states(chief_log)[CHECKPOINT_EVERY] == reference[0][CHECKPOINT_EVERY]

        resumed = _start_workers(cut_dir, "resumed", started)
        assert _exit_codes(resumed, 900) == [0] * WORKERS, _logs(resumed)
        assert all(f"Resuming {cut_dir / 'run'} from step {cut_at}/{STEPS}" in path.read_text()
                   for _, path in resumed)
        after = [step for step in checkpoint_steps if step > cut_at]
        states = _assert_equal_shared_state(resumed, after)
        assert all(states[0][step][1] == reference[0][step][1] for step in after), "the resumed run differs"
        assert states[0][STEPS][0] == reference[0][STEPS][0], "the chief's final state differs from the whole run's"
        assert tf.train.latest_checkpoint(str(cut_dir / "run" / "checkpoints")).endswith(f"-{STEPS}")
        assert (cut_dir / "run" / ".lock").read_text().split()[0] == str(resumed[0][0].pid)
        assert not list((cut_dir / "run").glob("tmp_worker_*")), "non-chief checkpoints were not cleaned up"
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_input_split_line_names_the_per_replica_batch_of_the_global_batch():
    context = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=1, num_replicas_in_sync=3)
    dataset = tf.data.Dataset.range(100).batch(context.get_per_replica_batch_size(24), drop_remainder=True)
    assert loop.input_split_line(context, dataset, 24) == \
        "input pipeline 1 of 3: per-replica batch 8 of the global 24 over 3 replicas"


@pytest.mark.parametrize("message, reason", [
    # TF 2.21's messages when a peer is SIGKILLed, SIGSTOPped (heartbeats stop) and when the chief is SIGSTOPped
    ("Graph execution error:\n\nDetected at node x\nCollective ops is aborted by: Socket closed\nAdditional GRPC error "
     "information from remote target /job:worker/replica:0/task:0", "Socket closed"),
    ("Collective ops is aborted by: Collective ops is aborted by: Error reported from /job:worker/task:2: The "
     "following tasks are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:2",
     "Error reported from /job:worker/task:2: The following tasks are unhealthy (stopped sending heartbeats):"),
    ("Collective ops is aborted by: Deadline Exceeded\n\nRPC: /tensorflow.CoordinationService/Heartbeat",
     "Deadline Exceeded"),
    ("Graph execution error:\nsomething else", "Graph execution error:"),
])
def test_abort_reason_is_the_innermost_reason_of_a_collective_abort(message, reason):
    assert loop._abort_reason(message) == reason
