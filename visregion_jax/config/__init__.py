"""Training configs: the defaults every config starts from and the `--config` loader."""

from visregion_jax.config.defaults import base_config, describe_keys
from visregion_jax.config.loading import load_config, load_config_file

__all__ = ["base_config", "describe_keys", "load_config", "load_config_file"]
