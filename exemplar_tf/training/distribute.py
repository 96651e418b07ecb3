"""Creating the tf.distribute strategy named by `--strategy`."""
from __future__ import annotations

import tensorflow as tf


def make_strategy(name: str, *, tpu: str = "", devices: list[str] | None = None) -> tf.distribute.Strategy:
    """Returns the strategy for `name` in {default, mirrored, multi_worker, tpu}.

    `mirrored` uses every local GPU, or `devices` when given (tests pass two logical CPUs).
    `multi_worker` reads the cluster from the TF_CONFIG environment variable.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}; use default, mirrored, multi_worker or tpu")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes summaries, exports and the resolved flagfile."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


def barrier(strategy: tf.distribute.Strategy) -> None:
    """Returns once every worker has reached it (a one-element all-reduce); immediate without several workers."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.ones([])), axis=None).numpy()
