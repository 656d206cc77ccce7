"""Rendering of stamps: fast and exact, in Fourier space, one PSF group at a time.

For each stamp (n×n, pixel scale from the card, centred on pixel (n//2, n//2)):

* ``noiseless`` = galaxy ⊗ PSF ⊗ pixel;
* ``observed``  = noiseless + noise (see :mod:`deconvbench.sim.noise`);
* ``truth``     = galaxy ⊗ Gaussian(target FWHM) ⊗ pixel;
* ``psf``       = PSF ⊗ pixel (the effective PSF), normalised to sum 1.

PSFEx models drawn at their own pixel scale include the pixel already (no second pixel
in ``noiseless`` and ``psf``); ``truth`` always has the pixel.

How (see :mod:`deconvbench.sim.kspace`): each galaxy's Fourier transform is drawn once,
by GalSim (``drawKImage``: every profile, truncation, shear and shift exactly as GalSim
defines it; ``RandomKnots`` point sources as an exact separable sum at GalSim's own
positions), on a padded grid out to the fold factor of the PSF and of the target; it is
multiplied by the PSF's and by the target's transforms (each drawn once per PSF group),
folded to the pixel grid, inverse-FFT'd and cropped. ``noiseless`` and ``truth`` share the
galaxy's transform; stamps of one PSF are processed as a batch. The same images from
GalSim's ``drawImage`` are :mod:`deconvbench.sim.reference`; ``deconvbench
validate-render`` measures the difference.
"""

from __future__ import annotations

import functools
import math

import galsim
import numpy as np

from ..cards import KERNEL_WRAPS, PSF_STAMPS, DatasetCard
from ..errors import DeconvbenchError
from . import kspace
from .galaxies import galaxy_jacobian, galaxy_parts, intrinsic_galaxy
from .noise import noise_field, poisson_noise, sigma_for_snr
from .psfs import build_psf, includes_pixel
from .reference import MAX_FFT_SIZE, draw_reference, reference_gsparams

MAX_FOLD = 4  # kernels are drawn out to 4× the pixel Nyquist frequency
KERNEL_THRESHOLD = 1e-5  # k-modes where |PSF ⊗ pixel| < 1e-5 of its flux are dropped
PAD_FACTOR = 1.5  # padded grid N ≥ 1.5 n unless the card says (wrap-around of PSF wings corrected, see Kernel)
BATCH = 16  # stamps per vectorised batch (memory: a few × BATCH·M² complex128)
WRAP_HLR = 10.0  # padded grids reach 10 major-axis half-light radii beyond the stamp edge
MAX_PAD_SIZE = 1024  # largest padded grid (pixels) for one galaxy


def gsparams() -> galsim.GSParams:
    """GalSim accuracy settings of every profile (maxk at 1e-5 of the flux)."""
    return galsim.GSParams(maximum_fft_size=MAX_FFT_SIZE, maxk_threshold=1e-5)


def kgrid(card: DatasetCard, pad_factor: float | None = None) -> kspace.KGrid:
    """The card's padded drawing grid: N ≥ ``pad_factor`` × n (default: the card's
    ``stamp.pad_factor``, else :data:`PAD_FACTOR`)."""
    n = card.stamp.size
    if pad_factor is None:
        pad_factor = card.stamp.pad_factor or PAD_FACTOR
    return kspace.KGrid(n, card.stamp.pixel_scale_arcsec, kspace.padded_size(n, pad_factor))


def target_psf(card: DatasetCard, gsp: galsim.GSParams) -> galsim.GSObject:
    return galsim.Gaussian(fwhm=card.stamp.target_psf_fwhm_arcsec, gsparams=gsp)


class Kernel:
    """A PSF (or target) transform, times the pixel's, on the part of k-space that matters.

    Drawn by GalSim out to ``MAX_FOLD`` × the pixel Nyquist frequency, then cut to the
    smallest centred square holding every |K(k)| > ``KERNEL_THRESHOLD``·K(0) (``support``
    wide; a truncated kernel's is widened to a fast FFT length); a product with a galaxy's
    transform on that square is folded onto the padded N-grid (zeros beyond the support).

    ``wrap``: how the profile's light beyond the periodic N-grid is kept out of the stamp.
    ``"point-corrected"`` (the v2 cards): the kernel is the profile's transform, and the light
    that wraps round for a point source at the centre is subtracted (flux × wrap); exact for
    point sources only, so a galaxy that smooths wings with structure (Airy rings of an
    optical PSF whose image outreaches the grid, PSFEx interpolants) keeps up to ~1e-4 of its
    peak. ``"truncated"``: the kernel is the transform of the profile cut to one grid period
    (:func:`~deconvbench.sim.kspace.truncated_half`), so nothing wraps.

    ``base``: a truncated kernel of the same profile on a grid 2 or 4 times smaller (the
    card's). This kernel is then cut from the real-space samples that ``base`` drew (4× its
    period: the same samples, a wider cut), without drawing the profile again; its light
    beyond 4 base periods wraps, as for ``base``."""

    def __init__(
        self,
        profile: galsim.GSObject,
        grid: kspace.KGrid,
        with_pixel: bool,
        wrap: str = KERNEL_WRAPS[0],
        base: Kernel | None = None,
    ):
        if wrap not in KERNEL_WRAPS:
            raise DeconvbenchError(f"kernel wrap must be one of {', '.join(KERNEL_WRAPS)}, got {wrap!r}")
        self.pad_size, self.stamp_size = grid.pad_size, grid.stamp_size
        self.samples = None  # a truncated kernel's real-space samples (4 periods)
        if base is not None:
            ratio = grid.pad_size // base.pad_size
            if wrap != "truncated" or base.samples is None or ratio * base.pad_size != grid.pad_size or ratio > 4:
                raise DeconvbenchError("a kernel is cut from a truncated base kernel on a grid 1, 2 or 4 times smaller")
            self.support = ratio * base.support  # the same reach in k, a ratio × finer step
            self.half = self._masked(kspace.cut_half(base.samples, self.support), grid.dk, profile.maxk)
            self.wrap = None
            return
        # GalSim's drawImage keeps k-modes up to the profile's maxk (|K| > maxk_threshold);
        # the kernel keeps the same square, and nothing where |K| < KERNEL_THRESHOLD.
        maxk_support = 2 * (int(math.ceil(profile.maxk / grid.dk)) + 1)
        for fold in (2, MAX_FOLD):  # most kernels fit in 2× Nyquist; redraw wider if not
            big = fold * grid.pad_size
            half = kspace.half_kimage(profile, min(big, maxk_support + 2), grid.dk)
            if with_pixel:
                half = half * kspace.pixel_half_kimage(half.shape[-2], grid.dk, grid.pixel_scale)
            self.support = min(kspace.support_size(half, grid.dk, KERNEL_THRESHOLD), maxk_support)
            if self.support < big:
                break
        else:
            raise DeconvbenchError(
                f"a PSF reaches beyond {MAX_FOLD}× the pixel Nyquist frequency in k-space (no FFT grid of "
                "this card's stamp samples it); check the card's PSF ranges and pixel scale"
            )
        if wrap == "truncated":  # its FFTs run on 4× and 1× this: a fast length (zeros beyond maxk)
            self.support = kspace.fast_even_length(self.support)
        else:
            self.half = self._masked(kspace.crop_half(half, self.support).copy(), grid.dk, profile.maxk)
        # Wrap-around: the periodic N-grid brings PSF wings from beyond it back into the
        # stamp (Airy wings fall as r⁻³: up to ~1e-3 of the flux). The same kernel on a
        # 4× larger grid (same k-range, 4× finer dk) has 1/16 of it; the difference is the
        # wrapped light per unit flux, which :meth:`stamps` removes (flux × wrap) from
        # every galaxy ⊗ kernel.
        fine = 4 * self.support
        fine_half = kspace.half_kimage(profile, fine, grid.dk / 4)
        if with_pixel:
            fine_half = fine_half * kspace.pixel_half_kimage(fine, grid.dk / 4, grid.pixel_scale)
        fine_half = self._masked(fine_half, grid.dk / 4, profile.maxk)
        if wrap == "truncated":  # kspace.truncated_half, keeping the samples for wider grids
            self.samples = kspace.profile_samples(fine_half)
            self.half = self._masked(kspace.cut_half(self.samples, self.support), grid.dk, profile.maxk)
            self.wrap = None  # nothing wraps in: no correction
            return
        unwrapped = kspace.to_stamps(
            kspace.fold_to_rfft(fine_half, 4 * grid.pad_size), 4 * grid.pad_size, grid.stamp_size
        )
        self.wrap = self._stamps(self.half[None])[0] - unwrapped

    @staticmethod
    def _masked(half: np.ndarray, dk: float, maxk: float) -> np.ndarray:
        """Zero the modes with |kx| or |ky| > maxk (GalSim's drawImage keeps the same square)."""
        size = half.shape[-2]
        ky = np.abs(np.arange(size) - size // 2) * dk
        kx = np.arange(size // 2 + 1) * dk
        half[(ky[:, None] > maxk) | (kx[None, :] > maxk)] = 0.0
        return half

    def _stamps(self, product_half: np.ndarray) -> np.ndarray:
        folded = kspace.fold_to_rfft(product_half, self.pad_size)
        return kspace.to_stamps(folded, self.pad_size, self.stamp_size)

    def point_stamp(self) -> np.ndarray:
        """The stamp (n, n) of a point source of unit flux on pixel (n//2, n//2): the PSF image
        (⊗ pixel) that every ``noiseless`` stamp of this kernel is drawn with."""
        stamp = self._stamps(self.half[None])[0]
        return stamp if self.wrap is None else stamp - self.wrap

    def stamps(self, galaxy_half: np.ndarray) -> np.ndarray:
        """Stamps (B, n, n) of galaxy ⊗ kernel from galaxy half k-images (B, M, M//2+1)."""
        product = kspace.crop_half(galaxy_half, self.support) * self.half
        if self.wrap is None:
            return self._stamps(product)
        flux = galaxy_half[:, galaxy_half.shape[-2] // 2, 0].real
        return self._stamps(product) - flux[:, None, None] * self.wrap


@functools.lru_cache(maxsize=16)
def _target_kernel(fwhm: float, stamp_size: int, pixel_scale: float, pad_size: int, wrap: str) -> Kernel:
    """The target PSF's kernel (one per card geometry, padded grid and wrap mode, cached)."""
    target = galsim.Gaussian(fwhm=fwhm, gsparams=gsparams())
    return Kernel(target, kspace.KGrid(stamp_size, pixel_scale, pad_size), with_pixel=True, wrap=wrap)


def kernel_wrap(card: DatasetCard) -> str:
    """The card's ``stamp.kernel_wrap`` (default ``"point-corrected"``, as every v2 card)."""
    return card.stamp.kernel_wrap or KERNEL_WRAPS[0]


def psf_stamp(card: DatasetCard) -> str:
    """The card's ``stamp.psf_stamp`` (default ``"drawimage"``, as every v2 card)."""
    return card.stamp.psf_stamp or PSF_STAMPS[0]


def pad_sizes(rows: np.ndarray, grid: kspace.KGrid) -> np.ndarray:
    """Padded grid N of each stamp: the card's, doubled until it reaches ``WRAP_HLR``
    major-axis half-light radii beyond the stamp edge (an exponential disk has < 1e-6 of
    its flux beyond 10 half-light radii), so that the galaxy's own light does not wrap."""
    sizes = np.empty(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        major = float(row["gal_hlr_arcsec"]) * np.linalg.norm(galaxy_jacobian(row), 2) / grid.pixel_scale
        offset = math.hypot(float(row["offset_x_pix"]), float(row["offset_y_pix"]))
        need = grid.stamp_size / 2 + WRAP_HLR * major + offset
        size = grid.pad_size
        while size < need:
            size *= 2
        if size > MAX_PAD_SIZE:
            raise DeconvbenchError(
                f"group {int(row['group'])}: a galaxy of major-axis half-light radius {major:.0f} px needs a padded "
                f"FFT grid of {size} px > {MAX_PAD_SIZE}; check the card's size range against stamp size and "
                "pixel scale"
            )
        sizes[i] = size
    return sizes


def galaxy_half_kimages(rows: np.ndarray, grid: kspace.KGrid, size: int, gsp: galsim.GSParams) -> np.ndarray:
    """Half k-images (B, size, size//2+1) of the galaxies of ``rows``."""
    out = np.empty((len(rows), size, size // 2 + 1), dtype=np.complex128)
    intrinsic: dict[int, galsim.GSObject] = {}  # the stamps of one galaxy (metacal slots) share it
    for i, row in enumerate(rows):
        galaxy = int(row["group"])
        if galaxy not in intrinsic:
            intrinsic[galaxy] = intrinsic_galaxy(row, gsp)
        smooth, xy, flux = galaxy_parts(row, grid.pixel_scale, gsp, intrinsic=intrinsic[galaxy])
        out[i] = kspace.points_half_kimage(xy, flux, size, grid.dk)
        if smooth is not None:
            out[i] += kspace.half_kimage(smooth, size, grid.dk)
    return out


def psf_kernels_by_pad(
    card: DatasetCard, psf_profile: galsim.GSObject, grid: kspace.KGrid, with_pixel: bool, pads: list[int]
) -> dict[int, Kernel]:
    """The PSF's kernel on each padded grid of ``pads`` (the card's ``grid`` and multiples).

    Truncated kernels of the 2× and 4× grids are cut from the samples of the card grid's
    (drawn once, also when no stamp of the group uses that grid, and then returned too), so
    that every stamp's kernel depends on its PSF and its grid alone; a wider grid draws its
    own."""
    wrap = kernel_wrap(card)

    def own(pad: int) -> Kernel:
        return Kernel(psf_profile, kspace.KGrid(grid.stamp_size, grid.pixel_scale, pad), with_pixel, wrap=wrap)

    if wrap != "truncated" or pads == [grid.pad_size] or all(pad > 4 * grid.pad_size for pad in pads):
        return {pad: own(pad) for pad in pads}
    base = own(grid.pad_size)
    kernels = {grid.pad_size: base}
    for pad in pads:
        if pad == grid.pad_size:
            continue
        if pad <= 4 * grid.pad_size:
            sub_grid = kspace.KGrid(grid.stamp_size, grid.pixel_scale, pad)
            kernels[pad] = Kernel(psf_profile, sub_grid, with_pixel, wrap=wrap, base=base)
        else:
            kernels[pad] = own(pad)
    return kernels


def psf_stamp_image(
    card: DatasetCard,
    psf_profile: galsim.GSObject,
    grid: kspace.KGrid,
    with_pixel: bool,
    pads: list[int],
    psf_kernels: dict[int, Kernel] | None = None,
) -> np.ndarray:
    """The ``psf`` stamp (n, n) float64, normalised to sum 1, of a PSF group whose stamps use
    the padded grids ``pads``: with ``psf_stamp = "kernel"`` a point source on pixel
    (n//2, n//2) through the card grid's kernel (taken from ``psf_kernels`` when there),
    else GalSim's drawImage of the PSF (⊗ pixel), its FFT grid set by the smallest padded
    grid. drawImage draws a PSF without the pixel whose real-space profile is known (a PSFEx
    model at its own pixel scale) directly, without an FFT, by its x-interpolant: that
    stays, as no kernel (a band-limited transform) equals it. The generator and the model
    PSFs of :mod:`deconvbench.psf_error` both draw it here."""
    if psf_stamp(card) == "kernel" and (with_pixel or not psf_profile.is_analytic_x):
        if not psf_kernels or grid.pad_size not in psf_kernels:
            psf_kernels = psf_kernels_by_pad(card, psf_profile, grid, with_pixel, [grid.pad_size])
        image = psf_kernels[grid.pad_size].point_stamp()
    else:
        image = draw_reference(
            psf_profile,
            grid.stamp_size,
            grid.pixel_scale,
            "auto" if with_pixel else "no_pixel",
            reference_gsparams(min(pads)),
        )
    return image / image.sum()


def render_noiseless(card: DatasetCard, rows: np.ndarray, grid: kspace.KGrid | None = None) -> dict[str, np.ndarray]:
    """``noiseless``, ``truth`` and ``psf`` (float64) of stamps sharing one PSF (``rows[0]``'s)."""
    grid = grid or kgrid(card)
    gsp = gsparams()
    n = grid.stamp_size
    psf_profile = build_psf(rows[0], gsp)
    with_pixel = not includes_pixel(rows[0], grid.pixel_scale)
    sizes = pad_sizes(rows, grid)
    fwhm = card.stamp.target_psf_fwhm_arcsec
    out = {"noiseless": np.empty((len(rows), n, n)), "truth": np.empty((len(rows), n, n))}
    pads = sorted(set(sizes.tolist()))  # the card's grid, and larger ones for large galaxies
    psf_kernels = psf_kernels_by_pad(card, psf_profile, grid, with_pixel, pads)
    psf_image = psf_stamp_image(card, psf_profile, grid, with_pixel, pads, psf_kernels)
    for pad in pads:
        sub_grid = kspace.KGrid(n, grid.pixel_scale, pad)
        psf = psf_kernels[pad]
        target = _target_kernel(fwhm, n, grid.pixel_scale, pad, kernel_wrap(card))
        size = max(psf.support, target.support)
        index = np.flatnonzero(sizes == pad)
        for start in range(0, len(index), BATCH):
            sel = index[start : start + BATCH]
            gal = galaxy_half_kimages(rows[sel], sub_grid, size, gsp)
            out["noiseless"][sel] = psf.stamps(gal)
            out["truth"][sel] = target.stamps(gal)
    out["psf"] = np.broadcast_to(psf_image, (len(rows), n, n))
    return out


def add_noise(card: DatasetCard, rows: np.ndarray, noiseless: np.ndarray) -> np.ndarray:
    """``observed`` stamps; fills ``noise_sigma`` and ``snr`` of ``rows`` in place.

    ±g stamps sharing a noise field (same ``noise_seed``) share its sigma too, set by the
    first of them."""
    n = noiseless.shape[-1]
    observed = np.empty_like(noiseless)
    sigma_by_seed: dict[int, float] = {}
    for i, row in enumerate(rows):
        seed = int(row["noise_seed"])
        if seed not in sigma_by_seed:
            sigma_by_seed[seed] = sigma_for_snr(noiseless[i], float(row["snr_level"]))
        sigma = sigma_by_seed[seed]
        observed[i] = noiseless[i] + sigma * noise_field(seed, (n, n)) if sigma else noiseless[i]
        if card.noise.poisson_source:
            observed[i] += poisson_noise(noiseless[i], card.noise.gain, seed ^ int(row["index"]))
        stored = noiseless[i].astype(np.float32).astype(np.float64)
        rows["noise_sigma"][i] = sigma
        rows["snr"][i] = math.inf if sigma == 0 else float(np.sqrt(np.sum(stored**2)) / sigma)
    return observed


def render_group(card: DatasetCard, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Render ``rows`` (any consecutive stamps): float32 ``observed``, ``noiseless``, ``truth``,
    ``psf``; fills ``noise_sigma`` and ``snr`` in place."""
    grid = kgrid(card)
    n = card.stamp.size
    out = {key: np.empty((len(rows), n, n), dtype=np.float32) for key in ("observed", "noiseless", "truth", "psf")}
    bounds = np.flatnonzero(np.diff(rows["psf_index"])) + 1
    for sl in (slice(a, b) for a, b in zip([0, *bounds], [*bounds, len(rows)], strict=True)):
        images = render_noiseless(card, rows[sl], grid)
        out["observed"][sl] = add_noise(card, rows[sl], images["noiseless"])
        for key in ("noiseless", "truth", "psf"):
            out[key][sl] = images[key]
    return out
