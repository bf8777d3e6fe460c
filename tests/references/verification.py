"""insightface's eval/verification.py (calculate_roc + calculate_val), transcribed as plain loops.

The yardstick that tests/eval/test_verification.py and bench/bench_verification.py hold the
vectorised `facelab.eval.protocols.verification.verify_pairs` to.
"""

import numpy as np

from facelab.eval.protocols.verification import _splits, interp1d_slinear, pair_distances


def _ref_accuracy(threshold, dist, actual_issame):
    """insightface calculate_accuracy, transcribed."""
    predict_issame = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict_issame, actual_issame))
    fp = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    fn = np.sum(np.logical_and(np.logical_not(predict_issame), actual_issame))
    tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    acc = float(tp + tn) / dist.size
    return tpr, fpr, acc


def _ref_val_far(threshold, dist, actual_issame):
    """insightface calculate_val_far, transcribed."""
    predict_issame = np.less(dist, threshold)
    true_accept = np.sum(np.logical_and(predict_issame, actual_issame))
    false_accept = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    n_same = np.sum(actual_issame)
    n_diff = np.sum(np.logical_not(actual_issame))
    return float(true_accept) / float(n_same), float(false_accept) / float(n_diff)


def verify_pairs_reference(
    emb1: np.ndarray, emb2: np.ndarray, same: np.ndarray, folds: int = 10, far_target: float = 1e-3
) -> dict:
    """Plain loop transcription of insightface eval/verification.py (calculate_roc + calculate_val).

    Deliberately simple and slow (one pass over the pairs per threshold). No input validation.
    Same keys as verify_pairs except `convention`.
    """
    actual_issame = np.asarray(same, dtype=bool)
    dist = pair_distances(emb1, emb2)
    splits = _splits(len(dist), folds)
    thresholds = np.arange(0, 4, 0.01)
    tprs = np.zeros((folds, len(thresholds)))
    fprs = np.zeros((folds, len(thresholds)))
    accuracy, best = np.zeros(folds), np.zeros(folds)
    for fold_idx, (train_set, test_set) in enumerate(splits):
        acc_train = np.zeros(len(thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            _, _, acc_train[threshold_idx] = _ref_accuracy(
                threshold, dist[train_set], actual_issame[train_set]
            )
        best_threshold_index = np.argmax(acc_train)
        for threshold_idx, threshold in enumerate(thresholds):
            tprs[fold_idx, threshold_idx], fprs[fold_idx, threshold_idx], _ = _ref_accuracy(
                threshold, dist[test_set], actual_issame[test_set]
            )
        best[fold_idx] = thresholds[best_threshold_index]
        _, _, accuracy[fold_idx] = _ref_accuracy(
            best[fold_idx], dist[test_set], actual_issame[test_set]
        )

    thresholds = np.arange(0, 4, 0.001)
    val, far = np.zeros(folds), np.zeros(folds)
    for fold_idx, (train_set, test_set) in enumerate(splits):
        far_train = np.zeros(len(thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            _, far_train[threshold_idx] = _ref_val_far(
                threshold, dist[train_set], actual_issame[train_set]
            )
        if np.max(far_train) >= far_target:
            threshold = interp1d_slinear(
                far_train, thresholds, far_target
            )  # interp1d(kind="slinear")
        else:
            threshold = 0.0
        val[fold_idx], far[fold_idx] = _ref_val_far(
            threshold, dist[test_set], actual_issame[test_set]
        )
    return {
        "accuracy": float(np.mean(accuracy)),
        "accuracy_std": float(np.std(accuracy)),
        "fold_accuracies": accuracy.tolist(),
        "thresholds": best.tolist(),
        "val": float(np.mean(val)),
        "val_std": float(np.std(val)),
        "far": float(np.mean(far)),
        "tpr": np.mean(tprs, 0).tolist(),
        "fpr": np.mean(fprs, 0).tolist(),
        "pairs": int(len(dist)),
    }
