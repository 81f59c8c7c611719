"""ddss_lite: fast samplers for pre-trained diffusion models, in small pure JAX.

Modules are imported on demand (``from ddss_lite import samplers``); this file keeps import time
low and holds no state. ``ddss_lite.Model``, the model type every sampler and method takes
(:mod:`ddss_lite.models`), is the one name imported here on first use.
"""
__version__ = "0.1.0"


def __getattr__(name):
    if name == "Model":
        from ddss_lite.models import Model
        return Model
    raise AttributeError(f"module 'ddss_lite' has no attribute {name!r}")
