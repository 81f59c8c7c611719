"""ddss_lite: fast samplers for pre-trained diffusion models, in small pure JAX.

Modules are imported on demand (``from ddss_lite import samplers``); this file
keeps import time low and holds no state.
"""
__version__ = "0.1.0"
