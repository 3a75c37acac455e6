"""The batched simulation (numpy only): state, rules, observations, the scripted expert, adapters."""
