"""deconvbench: benchmark and dataset suite for PSF deconvolution of galaxy images.

Conventions used throughout (see README, "Conventions"):

* sizes and angles in arcsec, ``pixel_scale_arcsec`` in arcsec/pixel;
* shear is GalSim's reduced shear g = (g1, g2); g1 > 0 stretches along x (columns);
* stamps are square (n, n) arrays indexed (row=y, col=x); every profile is centred
  on pixel (n//2, n//2), the FFT origin after ``numpy.fft.ifftshift``.
"""

__version__ = "0.1.0"
