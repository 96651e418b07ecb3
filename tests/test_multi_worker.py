"""Two worker processes on 127.0.0.1 train together with MultiWorkerMirroredStrategy (TF_CONFIG)."""
import json
import os
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


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_two_workers_train_a_few_steps(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    command = [sys.executable, "-m", "exemplar_tf.train", f"--flagfile={REPO}/flags/demo.cfg",
               "--strategy=multi_worker", "--objective=nce", f"--run_dir={tmp_path / 'run'}",
               f"--export_base={tmp_path / 'sm'}",
               "--steps=4", "--checkpoint_every=2", "--num_seeds=64", "--seeds_per_image=8", "--nce_m=32",
               "--batch_size=16", "--knn_source=", "--knn_every=0", "--noprogress"]
    workers = []
    try:
        for index in range(2):
            env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                                      "index": index}}))
            log = open(tmp_path / f"worker{index}.log", "w")
            workers.append((subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT),
                            log))
        codes = [process.wait(timeout=360) for process, _ in workers]
    finally:
        for process, log in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(logs[i][-3000:] for i in range(2))
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")).endswith("-4")
    assert "Export:" in logs[0] and "Export:" not in logs[1]
    assert not list((tmp_path / "run").glob("tmp_worker_*")), "non-chief checkpoints were not cleaned up"
