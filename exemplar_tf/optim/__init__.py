"""Optimisation pieces shared by training and fine-tuning: `schedules` (the learning-rate schedules) and `drops`
(where a step decay drops, without TensorFlow)."""
