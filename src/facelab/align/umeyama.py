"""Least-squares similarity transform between point sets (Umeyama 1991, "Least-squares estimation
of transformation parameters between two point patterns", IEEE TPAMI 13(4), eq. 40-43)."""

import numpy as np


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2×3 matrix M of the similarity (rotation, uniform scale, translation; no reflection)
    minimising sum_i |M·[src_i, 1] - dst_i|².

    src, dst: [N, 2] with N >= 2. Umeyama: with centred points and covariance S = dst_c^T src_c / N,
    SVD S = U D V^T; d = diag(1, sign(det U V^T)) forbids a reflection; R = U d V^T,
    c = trace(D d) / var(src), t = mean(dst) - c R mean(src).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_s, dst - mu_d
    var_s = (src_c**2).sum() / n
    cov = dst_c.T @ src_c / n  # [2, 2]
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    scale = (d * sign).sum() / var_s
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])
