"""Metrics, victims and the experiment flow."""
