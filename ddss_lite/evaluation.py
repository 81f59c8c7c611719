"""Sample quality in one call: features -> KID (cubic, block estimator) and FID against a reference set."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ddss_lite import metrics
from ddss_lite.features import FeatureMap, batched

NUM_BLOCKS = 10  # KID blocks: mean and standard error over 10 disjoint blocks (tf-gan's estimator)


def sample_quality(x, phi: FeatureMap, ref_feats, *, num_blocks: int = NUM_BLOCKS) -> dict:
    """``{"kid", "kid_se", "fid"}`` of samples ``x`` against reference features ``ref_feats`` in ``phi``.

    KID: unbiased MMD^2 with the cubic kernel, mean and standard error over ``num_blocks``
    blocks (Binkowski et al. 2018; tf-gan's estimator). FID: Frechet distance of Gaussians
    fitted to the features (Heusel et al. 2017).
    """
    f = batched(phi, jnp.asarray(x))
    ref = np.asarray(ref_feats)
    kid, se = metrics.kid_blocks(f, ref, kernel="cubic", num_blocks=num_blocks)
    return {"kid": float(kid), "kid_se": float(se), "fid": float(metrics.fid(f, ref))}
