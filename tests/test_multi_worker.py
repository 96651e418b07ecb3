"""Two worker processes on 127.0.0.1 train together with MultiWorkerMirroredStrategy (TF_CONFIG)."""
import json
import os
import re
import socket
import subprocess
import sys

import pytest
import tensorflow as tf

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
