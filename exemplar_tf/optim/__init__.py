"""Optimisation pieces shared by training and fine-tuning: `schedules` (the step-decay learning rate)."""
