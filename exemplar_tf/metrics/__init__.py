"""Measures of learned features that every layer may use (no project imports): weighted kNN."""
