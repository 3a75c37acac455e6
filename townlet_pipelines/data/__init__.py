"""Torch-free data services: rollout capture, replay manifests, the replay dataset, promotion state."""
