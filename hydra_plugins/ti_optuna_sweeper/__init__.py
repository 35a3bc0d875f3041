"""Hydra sweeper plugin on Optuna >= 4's ask-and-tell API (`hydra/sweeper=optuna`).

Keeps the released hydra-optuna-sweeper's config keys (sampler, direction, study_name, storage,
n_trials, n_jobs, max_failure_rate, params, custom_search_space, pruner) and its override grammar.
"""
