"""Linear probes of frozen features (the search over C lives in exemplar_tf.evaluation.probe)."""
