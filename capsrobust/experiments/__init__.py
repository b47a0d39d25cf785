"""Orchestration above training and evaluation: probes and studies that train, reuse and compare models."""
