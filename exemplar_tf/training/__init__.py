"""Training: the run's configuration (`config`, `settings`), its data (`inputs`, `views`), the model state and
generic step (`step`), the loop with checkpoints and TensorBoard (`loop`, `summaries`), the run directory
(`rundir`) and tf.distribute strategies (`distribute`)."""
