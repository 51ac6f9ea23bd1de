"""Launch scripts for multi-host runs (cloud TPU pod slices, SLURM GPU clusters)."""
