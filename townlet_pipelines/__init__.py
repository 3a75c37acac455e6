"""Townlet Pipelines: a batched town simulation and the BC/PPO/anneal training pipeline around it.

Importing the package is light (no torch, no dagster); see README.md for the layers.
"""
