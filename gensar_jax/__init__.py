"""gensar_jax: joint generative search and recommendation (GenSAR) in JAX/Flax."""
