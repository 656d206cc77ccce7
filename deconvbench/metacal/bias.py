"""Multiplicative / additive shear bias from per-stamp metacal measurements.

Data layout (metacal cards, see :mod:`deconvbench.sim.sampling`): stamps come in groups
of 4 sharing galaxy and PSF, slots ``(+g, 0°), (−g, 0°), (+g, 90°), (−g, 90°)``; the
true shear is ``(±g, 0)``, and the +g and −g stamps of the same rotation share their
noise. A *pair* is one +g and one −g stamp of the same group: here the k-th +g stamp of a
group is paired with its k-th −g stamp, in index order (slots 0↔1, 2↔3).

With ``<·>±`` the mean over the retained +g / −g stamps and ``<R_ii>`` the mean response
over all retained stamps:

* ``m  = (<e1>+ − <e1>−) / (2 g <R11>) − 1``
* ``c1 = (<e1>+ + <e1>−) / (2 <R11>)``   (additive bias along the shear)
* ``c  = c2 = (<e2>+ + <e2>−) / (2 <R22>)``   (additive bias on the other component)

Differences of ±g pairs cancel shape noise and, for pairs sharing noise, most of the
noise. A stamp that is invalid (``valid`` False, or non-finite e or R) is never averaged:
by default (``exclude="group"``) its whole group of 4 is dropped, with
``exclude="pair"`` only its ±g pair; the removed stamps are counted. Dropping the group
is the default because the two halves of the estimator cancel shape noise differently:
``m`` uses ±g pairs (same intrinsic shape, opposite shear), but ``c``, ``c1`` sum the
±g stamps, and there the intrinsic shape cancels only against the 90°-rotated pair of the
same group. Dropping a single pair therefore leaves ~σ_e/N_pairs of shape noise in c
(≈1e-4 for one lost pair among 2500, the size of the c requirement), while dropping the
group keeps both cancellations exact.
Errors are bootstrap standard deviations over *groups* (groups resampled with
replacement, vectorised through per-group sums).
"""

from __future__ import annotations

import math

import numpy as np


def _pair_ids(group: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """Rank of each stamp among the stamps of the same group and sign (index order)."""
    n = group.size
    order = np.lexsort((np.arange(n), sign, group))
    g, s = group[order], sign[order]
    start = np.ones(n, dtype=bool)
    start[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    run_start = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - run_start
    return rank


def _ratio_stats(sums: np.ndarray, g_true: float) -> dict[str, np.ndarray]:
    """Bias statistics from summed columns (…, 8):
    [Σe1+, Σe1−, Σe2+, Σe2−, n+, n−, ΣR11, ΣR22] (n+ = n− = number of pairs)."""
    e1p, e1m, e2p, e2m, npos, nneg, r11, r22 = np.moveaxis(sums, -1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_r11 = r11 / (npos + nneg)
        mean_r22 = r22 / (npos + nneg)
        e1p, e1m, e2p, e2m = e1p / npos, e1m / nneg, e2p / npos, e2m / nneg
        return {
            "m": (e1p - e1m) / (2.0 * g_true * mean_r11) - 1.0,
            "c1": (e1p + e1m) / (2.0 * mean_r11),
            "c": (e2p + e2m) / (2.0 * mean_r22),
            "R11": mean_r11,
            "R22": mean_r22,
        }


def estimate_bias(
    e_noshear,
    R,
    shear_sign,
    group,
    g_true: float,
    psf_e1=None,
    valid=None,
    n_boot: int = 500,
    rng: np.random.Generator | int | None = None,
    exclude: str = "group",
) -> dict[str, float]:
    """Shear bias m, c (and c1) with bootstrap errors (see module docstring).

    Parameters
    ----------
    e_noshear : (N, 2)
        e1, e2 measured on the "noshear" metacal images.
    R : (N, 2, 2)
        Metacal responses (:func:`deconvbench.metacal.estimators.response`).
    shear_sign : (N,)
        +1 / −1: sign of the applied true shear.
    group : (N,)
        Group id (stamps of a group share galaxy and PSF).
    g_true : float
        Magnitude of the true shear along component 1 (e.g. 0.01).
    psf_e1 : (N,), optional
        PSF ellipticity component 1 per stamp; if given, its mean over retained stamps is
        reported with ``alpha = c1 / psf_e1`` (see :func:`leakage_alpha`).
    valid : (N,) bool, optional
        Stamps to use (default all); non-finite e or R also make a stamp invalid.
    n_boot : int
        Bootstrap realisations (resampling groups with replacement).
    rng : numpy Generator or seed
    exclude : "group" or "pair"
        What an invalid stamp removes (see module docstring).

    Returns
    -------
    dict with m, m_err, c, c_err (component 2), c1, c1_err, R11, R22 (means), n_pairs,
    n_groups, n_excluded (stamps dropped: invalid ones, their pair partners and unpaired
    stamps, and with ``exclude="group"`` the rest of their group), n_invalid, and
    psf_e1, alpha, alpha_err when ``psf_e1`` is given.
    """
    e = np.asarray(e_noshear, dtype=np.float64).reshape(-1, 2)
    r = np.asarray(R, dtype=np.float64).reshape(-1, 2, 2)
    sign = np.sign(np.asarray(shear_sign, dtype=np.float64)).astype(np.int64)
    group = np.asarray(group).astype(np.int64)
    n = e.shape[0]
    ok = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool).copy()
    ok &= np.all(np.isfinite(e), axis=1) & np.isfinite(r[:, 0, 0]) & np.isfinite(r[:, 1, 1]) & (sign != 0)
    n_invalid = int(n - ok.sum())

    # pairs: (group, rank among same-sign stamps); a pair is kept iff both stamps are ok
    if n == 0:
        raise ValueError("estimate_bias needs at least one stamp")
    rank = _pair_ids(group, sign)
    _, pair = np.unique(np.stack([group, rank]), axis=1, return_inverse=True)
    pair = pair.ravel()
    n_pair_ids = int(pair.max()) + 1
    has_pos = np.bincount(pair, weights=(sign > 0) & ok, minlength=n_pair_ids) == 1
    has_neg = np.bincount(pair, weights=(sign < 0) & ok, minlength=n_pair_ids) == 1
    size = np.bincount(pair, minlength=n_pair_ids) == 2
    keep = (has_pos & has_neg & size)[pair] & ok
    if exclude == "group":
        _, gid = np.unique(group, return_inverse=True)
        keep &= (np.bincount(gid.ravel(), weights=~keep) == 0)[gid.ravel()]
    elif exclude != "pair":
        raise ValueError(f"exclude must be 'group' or 'pair', got {exclude!r}")
    n_excluded = int(n - keep.sum())

    # per-group sums of the kept stamps
    groups, gidx = np.unique(group[keep], return_inverse=True)
    pos, neg = sign[keep] > 0, sign[keep] < 0
    ek, rk = e[keep], r[keep]
    columns = np.stack(
        [ek[:, 0] * pos, ek[:, 0] * neg, ek[:, 1] * pos, ek[:, 1] * neg, pos, neg, rk[:, 0, 0], rk[:, 1, 1]], axis=1
    ).astype(np.float64)
    per_group = np.zeros((groups.size, columns.shape[1]))
    np.add.at(per_group, gidx, columns)

    result: dict[str, float] = {}
    stats = _ratio_stats(per_group.sum(axis=0), g_true)
    result.update({k: float(v) for k, v in stats.items()})

    # bootstrap over groups: multiplicities (n_boot, G) @ per-group sums, in chunks
    rng = np.random.default_rng(rng)
    n_groups = groups.size
    boot = {k: [] for k in ("m", "c1", "c")}
    if n_groups > 1 and n_boot > 0:
        chunk = max(1, int(2e7 // n_groups))
        for start in range(0, n_boot, chunk):
            size_b = min(chunk, n_boot - start)
            counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=size_b)
            bstats = _ratio_stats(counts @ per_group, g_true)
            for k in boot:
                boot[k].append(bstats[k])
    for k in boot:
        values = np.concatenate(boot[k]) if boot[k] else np.array([])
        result[f"{k}_err"] = float(np.nanstd(values, ddof=1)) if values.size > 1 else math.nan

    result.update(
        n_pairs=int(keep.sum() // 2), n_groups=int(n_groups), n_excluded=n_excluded, n_invalid=n_invalid
    )
    if psf_e1 is not None:
        mean_psf = float(np.mean(np.asarray(psf_e1, dtype=np.float64)[keep])) if keep.any() else math.nan
        alpha, alpha_err = leakage_alpha(result["c1"], result["c1_err"], mean_psf)
        result.update(psf_e1=mean_psf, alpha=alpha, alpha_err=alpha_err)
    return result


def leakage_alpha(c1: float, c1_err: float, psf_e1: float) -> tuple[float, float]:
    """PSF leakage for a set whose PSF ellipticity is fixed: ``α = c1 / e_psf1`` and
    ``σ_α = σ_c1 / |e_psf1|`` (model ``c1 = α · e_psf1``, component 1 only).

    ``psf_e1`` is in whatever convention α should be normalised to; the metacal-v1
    "leakage" split shears every PSF by the reduced shear (0.05, 0), and its card defines
    ``α = c1 / 0.05`` (PSF reduced shear g, not distortion e ≈ 2g)."""
    if psf_e1 == 0 or not math.isfinite(psf_e1):
        return math.nan, math.nan
    return c1 / psf_e1, abs(c1_err / psf_e1)
