"""Registers ti-sweeper's typed config schema (sweeper/config/schema.py) in Hydra's ConfigStore.

Hydra imports every module under `hydra_plugins` when it starts, before it composes a config, so
conf/config.yaml's `defaults: [schema, ...]` resolves in any Hydra entry point (`python -m sweeper`,
the compose API in tests and notebooks, `python -m sweeper.evaluation`) without importing sweeper first.
"""

import sweeper.config.schema  # noqa: F401 - registers the `schema` node on import
