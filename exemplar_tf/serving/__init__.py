"""Exports for TF Serving: `export` (the SavedModel writer: signatures, export_info.json, versions) and `runs` (a
training run's exports). The reader is `exemplar_tf.evaluation.savedmodel`; the program is `exemplar_tf.export`."""
