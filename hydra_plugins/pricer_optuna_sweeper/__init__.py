"""pricer's Optuna sweeper: `hydra/sweeper=pricer_optuna` (config keys in config.py).

It keeps hydra-optuna-sweeper's keys and search-space grammar, on current Optuna, and
adds pruning, asynchronous GPU-pinned workers, failure tolerance and resume
(docs/sweeps.md). Modules whose name starts with "_" import Optuna; Hydra's plugin
scan skips them, so starting any Hydra app stays fast.
"""
