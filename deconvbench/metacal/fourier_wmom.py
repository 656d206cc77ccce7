"""Metacal + wmom measured in Fourier space: one forward FFT per stamp, no metacal image.

The wmom sums of a metacal image are linear functionals of the deconvolved galaxy, so
they can be taken directly from its spectrum. For a deconvolved stamp ``D ≈ galaxy ⊗ T``
(T = target Gaussian ⊗ pixel) the metacal image of shear ``S`` is the point sampling of
``o_S`` with ``õ_S(k) = G̃(Sᵀk) Γ̃(k)``, ``G̃ = D̃/T̃`` (see
:mod:`deconvbench.metacal.shear_ops`). A weighted sum over its pixels,
``Σ_x w(x − c) q(x − c) o_S(x)`` with the round wmom weight ``w`` and
``q ∈ {1, dx, dy, dx², dy², dx·dy}``, is by Parseval and ``u = Sᵀk``

    (1/4π²) ∫_band G̃(u) · Γ̃(S⁻ᵀu) · conj((w q)~(S⁻ᵀu)) · exp(i u·S⁻¹c) du,

where ``(w q)~`` is a Gaussian times a polynomial of degree ≤ 2 (``w̃ = 2πσ_w²
exp(−σ_w²|k|²/2)``, ``(w dx)~ = −iσ_w² k_x w̃``, ``(w dx²)~ = σ_w²(1 − σ_w² k_x²) w̃``,
``(w dx dy)~ = −σ_w⁴ k_x k_y w̃``). The integral is evaluated as the sum over the DFT grid
of the padded stamp (``du = (2π/N)²``, pixel units), with the phase ``exp(i u·c')``
separable in ``(u_x, u_y)``: each centring iteration is two small batched matrix products
per stamp and shear (:func:`fourier_round_weight_sums`). No shear is applied to any
image and no inverse FFT is taken. The sums run over the rows and columns where the
kernel's Gaussian exceeds 1e-12 of its peak (:func:`kernel_band`), and the types that can
iterate together do (noshear; then 1m and 2m; then 1p and 2p, each seeded as below). The
fixnoise term (ngmix's order) enters as a second spectrum whose sums, about the rotated
centre, are rotated and added (:func:`metacal_wmom`).

Where it differs from the image route (``metacal_images`` + ``wmom``), measured: the
sum over pixel centres equals the integral up to aliasing terms of relative size
``exp(−π²(σ_Γ² + σ_w²)/2)`` (below 1e-20 here), the weight is not cut at the stamp edge
(``w < 1e-19`` there for the 1.2″ weight on 48-pixel stamps at 0.2″), and the DFT sum
periodises the kernel with period N (its copies stay ≥ N − n/2 − |c| pixels from the
stamp). The tests compare both routes stamp by stamp and through m.

Conventions: stamps ``(B, n, n)`` (row = y, col = x) centred on pixel ``(n//2, n//2)``;
shear is GalSim's reduced shear g with matrix ``S`` (:func:`shear_ops.shear_matrix`);
positions and moments in pixels, FWHMs in arcsec, pixel scale in arcsec/pixel. The
results are those of :func:`deconvbench.metacal.estimators.wmom` on each metacal image
(same flags, same iteration: :func:`deconvbench.moments.recentred_round_weight`).

Everything is written for an array module ``xp`` (numpy or jax.numpy) where the maths is;
:mod:`deconvbench.metacal.jax_wmom` jits the same functions.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import scipy.fft as sfft

from .. import fourier as F
from ..fourier import FWHM_PER_SIGMA
from ..moments import recentred_round_weight
from .estimators import WMOM_WEIGHT_FWHM_ARCSEC, _to_estimate
from .shear_ops import METACAL_TYPES, metacal_shear, shear_matrix

#: smallest grid pad: the kernel's periodic copies must stay clear of the stamp
MIN_PAD_FACTOR = 1.0


def galaxy_spectrum(
    deconvolved, pixel_scale: float, target_fwhm_arcsec: float, pad_factor: float = 1.0, workers=None, dtype=np.float64
) -> np.ndarray:
    """``G̃ = D̃/T̃``: the ``rfft2`` ``(B, N, N//2+1)`` of the deconvolved stamps zero-padded
    to ``N = padded_size(n, pad_factor)`` (pixel (n//2, n//2) on (N//2, N//2)), divided by
    the target's transfer function (analytic Gaussian × pixel, > 0 on the whole band).
    ``dtype`` float32 gives a complex64 spectrum."""
    images = F.as_stack(deconvolved, "deconvolved")
    n = images.shape[-1]
    size = F.padded_size(n, pad_factor)
    padded = images if size == n else F.pad_centered(images, size)  # rfft2 leaves its input as it is
    spec = sfft.rfft2(padded.astype(dtype, copy=False), workers=F.fft_threads(workers))
    transfer = F.target_transfer(size, target_fwhm_arcsec, pixel_scale)
    spec *= (1.0 / transfer).astype(dtype)  # in place: no second (B, N, N//2+1) array
    return spec


@lru_cache(maxsize=16)
def _wavenumbers(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    uy = 2.0 * np.pi * np.fft.fftfreq(size)
    ux = 2.0 * np.pi * np.fft.rfftfreq(size)
    hermitian = np.full(ux.shape, 2.0)
    hermitian[0] = 1.0
    if size % 2 == 0:
        hermitian[-1] = 1.0
    for arr in (uy, ux, hermitian):
        arr.setflags(write=False)
    return uy, ux, hermitian


def wavenumbers(size: int, xp=np, dtype=np.float64, band=None):
    """``(uy (N,), ux (N//2+1,))`` in rad/pixel and the Hermitian weights ``(N//2+1,)`` of the
    rfft columns (1 for k_x = 0 and Nyquist, 2 otherwise); with ``band`` (row and column
    indices, :func:`kernel_band`) only those rows and columns."""
    uy, ux, hermitian = _wavenumbers(int(size))
    if band is not None:
        uy, ux, hermitian = uy[band[0]], ux[band[1]], hermitian[band[1]]
    if xp is np:
        return uy.astype(dtype, copy=False), ux.astype(dtype, copy=False), hermitian.astype(dtype, copy=False)
    return xp.asarray(uy, dtype=dtype), xp.asarray(ux, dtype=dtype), xp.asarray(hermitian, dtype=dtype)


#: modes whose Gaussian factor exp(−(σ_Γ² + σ_w²)|L u|²/2) is below this are left out
#: of the sums (:func:`kernel_band`)
BAND_EPSILON = 1e-12


def kernel_band(size: int, gauss_variance_pixels: float, matrices, epsilon: float = BAND_EPSILON):
    """Rows and columns ``(rows, cols)`` of the rfft grid that hold every mode where the
    integrand's Gaussian factor ``exp(−a|L u|²/2)`` (``a = σ_Γ² + σ_w²``, the smallest of
    the batch, pixels²; ``matrices`` L (T, 2, 2)) is at least ``epsilon``: the square
    ``|u_x|, |u_y| ≤ k_max`` with ``a·s²·k_max²/2 = −ln ε`` (s the smallest singular value
    of the L). With ε = 1e-12, measured against ε = 1e-16 on 512 fft-deconvolved SNR 50
    stamps of metacal-offsets (the deconvolved noise makes |G̃| up to 8.5e3× the flux at
    high k): |Δe| ≤ 1.6e-10, |Δx| ≤ 1.7e-10 pixel, same flags (truth images: |Δe| ≤
    1.7e-12); the band keeps 39 × 20 of the 48 × 25 modes (45 × 23 at 1e-16) and the five
    measurements take 11% less time."""
    uy, ux, _ = _wavenumbers(int(size))
    s_min = min(float(np.linalg.svd(np.asarray(m, dtype=np.float64), compute_uv=False)[-1]) for m in matrices)
    if not (gauss_variance_pixels > 0 and math.isfinite(gauss_variance_pixels)):
        return np.arange(len(uy)), np.arange(len(ux))
    k_max = math.sqrt(-2.0 * math.log(epsilon) / gauss_variance_pixels) / s_min
    return np.flatnonzero(np.abs(uy) <= k_max), np.flatnonzero(ux <= k_max)


def batch_band(size: int, sigma_g, weight_sigma_pixels: float, matrices, finite):
    """:func:`kernel_band` for a batch: the narrowest Γ (σ_Γ (B,), pixels) among the usable
    stamps (``finite`` (B,)) sets it; the whole grid when none is usable."""
    narrowest = float(np.min(np.asarray(sigma_g)[finite], initial=np.inf))
    return kernel_band(size, narrowest**2 + weight_sigma_pixels**2, matrices)


def band_of(spectra, band):
    """The rows and columns ``band`` (:func:`kernel_band`) of spectra ``(B, N, N//2+1)``, as
    a C-contiguous ``(B, rows, cols)`` array (two chained fancy indices give a strided view
    order, on which the kernel bases take 1.4× longer)."""
    return np.take(np.take(spectra, band[1], axis=2), band[0], axis=1)


def inverse_transpose(g1: float, g2: float) -> np.ndarray:
    """``L = S⁻ᵀ`` of GalSim's shear matrix: ``k = L u`` for ``u = Sᵀk``."""
    return np.linalg.inv(shear_matrix(g1, g2)).T


def metacal_kernel_bases(
    spectrum, size: int, reconv_sigma_pixels, weight_sigma_pixels: float, matrices, xp=np, band=None
):
    """The stamp-dependent part of every integrand, ``(T, B, N, N//2+1)`` for ``T`` shears:
    ``G̃(u) · exp(−(σ_Γ² + σ_w²)|L u|²/2)`` with ``L = S⁻ᵀ`` (``matrices`` (T, 2, 2)) and
    σ_Γ per stamp (``reconv_sigma_pixels`` (B,), pixels). The Gaussian of each distinct
    σ_Γ is evaluated once (stamps of a group share their PSF). With ``band`` the spectrum
    holds only those rows and columns (:func:`kernel_band`)."""
    uy, ux, _ = wavenumbers(size, xp, dtype=spectrum.real.dtype, band=band)
    mats = xp.asarray(matrices, dtype=spectrum.real.dtype)
    kx = mats[:, 0, 0, None, None] * ux[None, None, :] + mats[:, 0, 1, None, None] * uy[None, :, None]
    ky = mats[:, 1, 0, None, None] * ux[None, None, :] + mats[:, 1, 1, None, None] * uy[None, :, None]
    ksq = kx * kx + ky * ky  # (T, N, Nh)
    if xp is np:
        sig, inverse = np.unique(np.asarray(reconv_sigma_pixels, dtype=np.float64), return_inverse=True)
        a = (sig**2 + weight_sigma_pixels**2).astype(spectrum.real.dtype)
        gauss = np.exp(-0.5 * a[None, :, None, None] * ksq[:, None])  # (T, U, rows, cols)
        inverse = inverse.reshape(-1)
        if 8 * len(sig) > len(inverse):  # mostly distinct PSFs: one broadcast product
            return spectrum[None] * gauss[:, inverse]
        out = np.empty((len(mats),) + spectrum.shape, dtype=np.result_type(spectrum, gauss))
        for u in range(len(sig)):  # few distinct PSFs: no (T, B, ...) copy of the Gaussians
            members = np.flatnonzero(inverse == u)
            if members[-1] - members[0] + 1 == len(members):  # one run (a metacal group): in place
                run = slice(members[0], members[-1] + 1)
                np.multiply(spectrum[None, run], gauss[:, u, None], out=out[:, run])
            else:
                out[:, members] = spectrum[members][None] * gauss[:, u, None]
        return out
    else:
        a = xp.asarray(reconv_sigma_pixels, dtype=spectrum.real.dtype) ** 2 + weight_sigma_pixels**2
        gauss = xp.exp(-0.5 * a[None, :, None, None] * ksq[:, None])
    return spectrum[None] * gauss


@lru_cache(maxsize=32)
def _phase_grid(size: int, rows: bytes, cols: bytes):
    """Constants of the sums on the band ``(rows, cols)`` (int64 index bytes) of an N = ``size`` grid (numpy,
    read-only): the x and y polynomial factors ``(cols, 3)``, ``(3, rows)`` (the Hermitian
    weights in x) and the integer frequencies k_x, k_y as complex numbers (:func:`phase_table`)."""
    band = (np.frombuffer(rows, dtype=np.int64), np.frombuffer(cols, dtype=np.int64))
    uy, ux, hermitian = wavenumbers(size, band=band)
    ky, kx = frequency_indices(size, band)
    x_powers = np.stack([hermitian, hermitian * ux, hermitian * ux * ux], axis=-1)
    y_powers = np.stack([np.ones_like(uy), uy, uy * uy], axis=0)
    out = (x_powers, y_powers, kx.astype(np.complex128), ky.astype(np.complex128))
    for arr in out:
        arr.setflags(write=False)
    return out


def frequency_indices(size: int, band=None) -> tuple[np.ndarray, np.ndarray]:
    """The integer DFT frequencies ``(k_y (N,), k_x (N//2+1,))`` of the rfft grid
    (``u = 2πk/N``), or only the rows and columns of ``band``."""
    ky = np.rint(np.fft.fftfreq(int(size)) * size).astype(np.int64)
    kx = np.arange(int(size) // 2 + 1)
    if band is not None:
        ky, kx = ky[np.asarray(band[0])], kx[np.asarray(band[1])]
    return ky, kx


def phase_table(shift, frequencies, size: int, xp=np):
    """``exp(2πi·k·s/N)`` ``(A, K)`` for shifts ``s`` (A,) (pixels) and the integer
    frequencies ``k`` (K,) of an N-point DFT: the integer powers ``z^k`` of
    ``z = exp(2πi s/N)`` (numpy raises a complex number to an integral power by repeated
    multiplication: relative error ≈ 1e-14 for |k| ≤ 24, as a direct ``exp(i u s)`` has
    through its argument's rounding; one complex exponential per shift instead of one per
    mode, which was the sums' largest cost)."""
    base = xp.exp((2j * math.pi / size) * shift)  # (A,)
    return xp.power(base[:, None], xp.asarray(frequencies)[None, :])


def _band_key(size: int, band) -> tuple:
    if band is None:
        band = (np.arange(size), np.arange(size // 2 + 1))
    return tuple(np.asarray(index, dtype=np.int64).tobytes() for index in band)


def fourier_round_weight_sums(bases, matrices, centres, size: int, weight_sigma_pixels: float, xp=np, band=None):
    """The six wmom sums ``Σ_x w I (1, dx, dy, dx², dy², dx·dy)`` (``d = x − c``, pixels) of
    the metacal images whose integrands' stamp parts are ``bases`` ``(A, N, N//2+1)``, for
    shears with ``L = S⁻ᵀ`` ``matrices`` (A, 2, 2) and weight centres ``centres`` (A, 2)
    (x, y in pixels from the stamp centre). Pure function of its arguments (see module
    docstring for the formula); the phase ``exp(i u·(S⁻¹c + N//2))`` (:func:`phase_table`)
    also moves the spectrum's origin from grid pixel N//2 to the stamp centre. ``band``:
    the rows and columns ``bases`` holds (:func:`kernel_band`; None: all).

    The moments of order one and two in ``k = L u`` come from those in ``u`` as ``L m₁`` and
    ``L M₂ Lᵀ``; the contraction runs over rows first (``(3, rows) @ (rows, cols)``, then
    ``@ (cols, 3)``: 20 % faster than columns first with numpy's batched products)."""
    real = bases.real.dtype
    x_powers, y_powers, freq_x, freq_y = _phase_grid(int(size), *_band_key(int(size), band))
    mats = xp.asarray(matrices, dtype=real)
    c = xp.asarray(centres, dtype=real)
    shifted = xp.matmul(c[:, None, :], mats)[:, 0, :] + size // 2  # c' = S⁻¹ c = Lᵀ c, on the grid
    px = phase_table(shifted[:, 0], freq_x, size, xp)  # (A, cols)
    py = phase_table(shifted[:, 1], freq_y, size, xp)  # (A, rows)
    y_basis = py[:, None, :] * xp.asarray(y_powers, dtype=real)[None]  # (A, 3 [u_y power], rows)
    x_basis = px[:, :, None] * xp.asarray(x_powers, dtype=real)[None]  # (A, cols, 3 [u_x power])
    u = xp.matmul(xp.matmul(y_basis, bases), x_basis)  # (A, 3 [u_y power], 3 [u_x power])
    # L m₁ and L M₂ Lᵀ written out per stamp (the 2 × 2 batched products cost more than
    # the sums' second contraction); only the parts the sums use: m₁ is imaginary-valued
    # in the sums, M₂ real-valued
    l00, l01, l10, l11 = mats[:, 0, 0], mats[:, 0, 1], mats[:, 1, 0], mats[:, 1, 1]
    m_x, m_y = u[:, 0, 1].imag, u[:, 1, 0].imag
    m_xx, m_xy, m_yy = u[:, 0, 2].real, u[:, 1, 1].real, u[:, 2, 0].real
    first_x, first_y = l00 * m_x + l01 * m_y, l10 * m_x + l11 * m_y
    # rows of L M₂: (a, b) = (l00 m_xx + l01 m_xy, l00 m_xy + l01 m_yy), (c, d) likewise
    row_a, row_b = l00 * m_xx + l01 * m_xy, l00 * m_xy + l01 * m_yy
    row_c, row_d = l10 * m_xx + l11 * m_xy, l10 * m_xy + l11 * m_yy
    second_xx, second_yy, second_xy = row_a * l00 + row_b * l01, row_c * l10 + row_d * l11, row_a * l10 + row_b * l11
    s2 = weight_sigma_pixels**2
    norm = 2.0 * math.pi * s2 / size**2
    flux = norm * u[:, 0, 0].real
    return (
        flux,
        -norm * s2 * first_x,
        -norm * s2 * first_y,
        s2 * flux - norm * s2 * s2 * second_xx,
        s2 * flux - norm * s2 * s2 * second_yy,
        -norm * s2 * s2 * second_xy,
    )


def _waves(types: tuple, step: float) -> list[list[int]]:
    """Indices of ``types`` in the order they are measured: noshear alone; then the sheared
    types whose opposite shear comes later (sorted by name); then those opposites, which
    start from the first ones' residuals. Without noshear: one wave, no seeding."""
    shears = [metacal_shear(t, step) for t in types]
    if "noshear" not in types:
        return [sorted(range(len(types)), key=lambda i: types[i])]
    first = types.index("noshear")
    rest = sorted((i for i in range(len(types)) if i != first), key=lambda i: types[i])
    leading = [i for n, i in enumerate(rest) if (-shears[i][0], -shears[i][1]) not in {shears[j] for j in rest[:n]}]
    return [w for w in ([first], leading, [i for i in rest if i not in leading]) if w]


def type_matrices(types, step: float) -> np.ndarray:
    """``L = S⁻ᵀ`` (T, 2, 2) of the metacal types."""
    return np.stack([inverse_transpose(*metacal_shear(t, step)) for t in types])


def rotated_quarter_turn_centres(centres, stamp_size: int, xp=np):
    """Weight centres ``(A, 2)`` (x, y, pixels from the stamp centre n//2) on an image
    ``np.rot90(a, -1)`` → the same weight's centres on ``a`` (``out[i, j] = a[n−1−j, i]``:
    ``x_a = y``, ``y_a = n − 1 − x``)."""
    centre = stamp_size // 2
    return xp.stack([centres[:, 1], (stamp_size - 1 - 2 * centre) - centres[:, 0]], axis=-1)


def rotated_quarter_turn_sums(sums):
    """The six weighted sums ``(1, dx, dy, dx², dy², dx·dy)`` of ``a`` about a centre →
    those of ``np.rot90(a, -1)`` about the rotated centre (``dx = −dy_a``, ``dy = dx_a``)."""
    f, sx, sy, sxx, syy, sxy = sums
    return f, -sy, sx, syy, sxx, -sxy


def metacal_wmom(
    spectrum,
    stamp_size: int,
    pixel_scale: float,
    reconv_fwhm_arcsec,
    step: float = 0.01,
    weight_fwhm_arcsec: float = WMOM_WEIGHT_FWHM_ARCSEC,
    types=METACAL_TYPES,
    max_iter: int = 30,
    tol: float = 1e-9,
    max_shift: float = 4.0,
    noise_spectrum=None,
    centring: str = "newton",
) -> dict[str, dict[str, np.ndarray]]:
    """wmom of the metacal images of every type, from the galaxy spectra (numpy).

    ``spectrum``: ``G̃`` (B, N, N//2+1) from :func:`galaxy_spectrum`; ``stamp_size``: n
    (positions are returned in its pixels); ``reconv_fwhm_arcsec``: Γ's FWHM, scalar or
    (B,). Returns dict type → the dict of :func:`deconvbench.metacal.estimators.wmom`
    (e1, e2, T arcsec², flux, flags, x, y).

    ``noise_spectrum`` (fixnoise, ngmix's order): ``G̃`` of the deconvolved 90°-rotated
    noise fields (:func:`deconvbench.metacal.measure.fixnoise_fields`, rotated by
    ``np.rot90(·, 1)`` before deconvolution). Their metacal images, rotated back by
    ``np.rot90(·, −1)``, are added to those of ``spectrum``: by linearity the sums of the
    sum are the data's sums plus the noise images' sums about the rotated centre, rotated
    (:func:`rotated_quarter_turn_centres`, :func:`rotated_quarter_turn_sums`); equal to
    wmom on the image route's fixnoise images (tested). ``centring``: the centring step
    for galaxies as large as the weight (:func:`deconvbench.moments.newton_recentre_step`)."""
    spectrum = np.asarray(spectrum)
    b, size = spectrum.shape[0], spectrum.shape[-2]
    if spectrum.shape[-1] != size // 2 + 1:
        raise ValueError(f"expected an rfft2 spectrum (B, N, N//2+1), got {spectrum.shape}")
    if noise_spectrum is not None and np.shape(noise_spectrum) != spectrum.shape:
        raise ValueError(f"noise_spectrum has shape {np.shape(noise_spectrum)}, expected {spectrum.shape}")
    types = tuple(types)
    sigma_w = weight_fwhm_arcsec / FWHM_PER_SIGMA / pixel_scale
    reconv = np.broadcast_to(np.asarray(reconv_fwhm_arcsec, dtype=np.float64), (b,))
    sigma_g = reconv / FWHM_PER_SIGMA / pixel_scale
    mats = type_matrices(types, step)
    finite = np.isfinite(spectrum).all(axis=(1, 2)) & np.isfinite(sigma_g)
    if noise_spectrum is not None:
        finite &= np.isfinite(noise_spectrum).all(axis=(1, 2))
    band = batch_band(size, sigma_g, sigma_w, mats, finite)
    spectrum = band_of(spectrum, band)
    centre = float(stamp_size // 2)
    waves = _waves(types, step)
    perm = [i for wave in waves for i in wave]
    mats = mats[perm]  # bases in wave order: each wave is one contiguous (k·B, rows, cols) view
    bases = metacal_kernel_bases(spectrum, size, sigma_g, sigma_w, mats, band=band)  # (T, B, rows, cols)
    noise_bases = None
    if noise_spectrum is not None:
        noise = band_of(np.asarray(noise_spectrum), band)
        noise_bases = metacal_kernel_bases(noise, size, sigma_g, sigma_w, mats, band=band)
    out: dict[str, dict[str, np.ndarray]] = {}
    seed = None
    residual: dict[tuple[float, float], tuple[np.ndarray, np.ndarray]] = {}
    # noshear first; each sheared image starts from the noshear centre moved by its shear
    # (S c about the stamp centre), and a −step image also from the +step image's residual
    # (c₊ − S₊c₀ is odd in the step to first order): the same fixed point in fewer
    # iterations. The types of a wave iterate together (one batched product per iteration).
    lo = 0
    for wave in waves:
        k, hi = len(wave), lo + len(wave)
        starts = []
        for j, i in enumerate(wave):
            if seed is None:
                starts = None
                break
            g = metacal_shear(types[i], step)
            shear = np.linalg.inv(mats[lo + j].T)  # S = (Lᵀ)⁻¹
            moved = (shear[0, 0] * seed[0] + shear[0, 1] * seed[1], shear[1, 0] * seed[0] + shear[1, 1] * seed[1])
            dx, dy = residual.get((-g[0], -g[1]), (0.0, 0.0))
            starts.append((centre + moved[0] - np.nan_to_num(dx), centre + moved[1] - np.nan_to_num(dy)))
        start = (
            None
            if starts is None
            else tuple(np.concatenate([np.broadcast_to(s[c], (b,)) for s in starts]) for c in (0, 1))
        )
        wave_bases = bases[lo:hi].reshape((k * b,) + bases.shape[2:])
        wave_noise = None if noise_bases is None else noise_bases[lo:hi].reshape(wave_bases.shape)
        matrix = np.repeat(mats[lo:hi], b, axis=0)

        def sums_fn(active, cx, cy, wave_bases=wave_bases, wave_noise=wave_noise, matrix=matrix):
            # Mostly active: every stamp is summed (the centres of the others are kept where
            # they are) and the active ones picked out, which costs less than gathering
            # their bases; each stamp's sums do not depend on the others (same values).
            every = 2 * len(active) >= len(matrix)
            if every:
                cx_all = np.full(len(matrix), centre)
                cy_all = np.full(len(matrix), centre)
                cx_all[active], cy_all[active] = cx, cy
                centres = np.stack([cx_all - centre, cy_all - centre], axis=-1)
                part, mat = wave_bases, matrix
            else:
                centres = np.stack([cx - centre, cy - centre], axis=-1)
                part, mat = wave_bases[active], matrix[active]
            sums = fourier_round_weight_sums(part, mat, centres, size, sigma_w, band=band)
            if wave_noise is not None:
                part = wave_noise if every else wave_noise[active]
                noise_centres = rotated_quarter_turn_centres(centres, stamp_size)
                noise = fourier_round_weight_sums(part, mat, noise_centres, size, sigma_w, band=band)
                sums = tuple(d + r for d, r in zip(sums, rotated_quarter_turn_sums(noise), strict=True))
            if every and len(active) < len(matrix):
                sums = tuple(s[active] for s in sums)
            return sums

        both = recentred_round_weight(
            sums_fn,
            np.tile(finite, k),
            centre,
            centre,
            sigma_w,
            max_iter=max_iter,
            tol=tol,
            max_shift=max_shift,
            start=start,
            centring=centring,
        )
        for j, i in enumerate(wave):
            res = {key: value[j * b : (j + 1) * b] for key, value in both.items()}
            g = metacal_shear(types[i], step)
            if types[i] == "noshear":
                seed = (res["x"] - centre, res["y"] - centre)
            elif starts is not None:
                prior = residual.get((-g[0], -g[1]), (0.0, 0.0))
                residual[g] = (
                    res["x"] - starts[j][0] + np.nan_to_num(prior[0]),
                    res["y"] - starts[j][1] + np.nan_to_num(prior[1]),
                )
            out[types[i]] = _to_estimate(res, pixel_scale, res["flux"])
        lo = hi
    return {mtype: out[mtype] for mtype in types}
