"""Training strategies (BC, PPO, Anneal): the only part of the package that imports torch.

Importing this package stays light; torch is imported by the modules that need it, and a strategy
run without torch raises `TorchNotAvailableError` (see `torch_support`).
"""
