"""Speed benchmarks: the project against the diffusers-example reference loop (`make bench`)."""
