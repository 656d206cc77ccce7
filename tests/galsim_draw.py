"""Drawing GalSim profiles the way the suite centres stamps (shared by the metacal tests)."""

from __future__ import annotations

import galsim
import numpy as np

PIXEL = 0.2


def draw(profile: galsim.GSObject, n: int, method: str = "auto", pixel_scale: float = PIXEL) -> np.ndarray:
    """Draw centred on pixel (n//2, n//2) (GalSim's nominal centre), float64."""
    image = profile.drawImage(nx=n, ny=n, scale=pixel_scale, method=method, use_true_center=False)
    return image.array.astype(np.float64)
