"""Feature visualisation with lucent (torch-lucent), precomputed into the store."""
