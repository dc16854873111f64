"""What ``tools/`` call: the Hydra launcher, the composition root and the jobs."""
