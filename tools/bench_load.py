"""The machine a benchmark ran on, and how busy other processes kept it.

Timings on a shared VM are only comparable when nobody else used the cores, so every
benchmark in tools/ reports the CPU model and this load (the library's
visregion_jax.cpu_load.OtherLoad, which pruning's latency report uses too) beside its
ratios.
"""


from visregion_jax.cpu_load import OtherLoad
from visregion_jax.train.peak_flops import cpu_model

__all__ = ["OtherLoad", "cpu_model"]


