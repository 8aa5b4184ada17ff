"""LVIS box evaluation in vectorised numpy: lvis-api's protocol (``lvis==0.5.3``,
``LVISResults`` + ``LVISEval``), same numbers, in whole-array passes.

The protocol, as lvis-api implements it (each step is one numpy pass here):

1. at most ``max_dets`` detections per image, the highest-scoring (``-1``: no cap);
2. detections and ground truth of the evaluated categories with area in (0, inf) only
   (detection area = box width x height, ground-truth area = the file's ``area``);
3. federated filter: a detection of class c on image i counts only if c is annotated on i
   or listed in i's ``neg_category_ids``;
4. per (image, class, area range, IoU threshold in 0.50:0.05:0.95): greedy matching in
   score order, each detection taking the unmatched ground truth of highest IoU >= the
   threshold (non-ignored first; ties to the later one); ground truth outside the area
   range is ignored; an unmatched detection is ignored if its area is outside the range or
   its class is in the image's ``not_exhaustive_category_ids``;
5. per (class, area range, threshold): detections over all images in score order,
   precision made monotone, sampled at 101 recall points (0 beyond the last recall);
6. AP = mean over the defined entries (classes with ground truth in the range); APr/APc/APf
   over the classes of each ``frequency`` group.

Sizes: N detections, G ground-truth boxes, K classes; memory O(N) plus O(N x 40) bits for
the detections that share an (image, class) with ground truth.
"""

import itertools
from typing import Dict, List, Sequence

import numpy as np

__all__ = ["evaluate_lvis_fast", "lvis_summary", "IOU_THRESHOLDS", "RECALL_THRESHOLDS",
           "AREA_RANGES"]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES = ((0 ** 2, 1e5 ** 2), (0 ** 2, 32 ** 2), (32 ** 2, 96 ** 2), (96 ** 2, 1e5 ** 2))
AREA_LABELS = ("all", "small", "medium", "large")
FREQUENCIES = ("r", "c", "f")
_CHUNK = 4_000_000  # padded (group x detection x ground truth) entries matched at once


def _index(ids: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` in ``sorted_ids``; -1 where absent."""
    pos = np.searchsorted(sorted_ids, ids)
    pos = np.minimum(pos, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, -1)


def _id_pairs(images: List[dict], field: str, image_index: np.ndarray, cat_ids: np.ndarray):
    """(image index, class index) keys of a per-image id list (``neg_category_ids``...)."""
    lengths = np.fromiter((len(im.get(field) or ()) for im in images), np.int64, len(images))
    cats = np.fromiter(itertools.chain.from_iterable(im.get(field) or () for im in images),
                       np.int64, int(lengths.sum()))
    imgs = np.repeat(image_index, lengths)
    cidx = _index(cats, cat_ids)
    return imgs[cidx >= 0] * len(cat_ids) + cidx[cidx >= 0]


def _detection_arrays(results: Sequence[dict]):
    """image_id (N,), category_id (N,), score (N,), xywh box (N, 4) as arrays."""
    n = len(results)
    img = np.fromiter((r["image_id"] for r in results), np.int64, n)
    cat = np.fromiter((r["category_id"] for r in results), np.int64, n)
    score = np.fromiter((r["score"] for r in results), np.float64, n)
    box = np.fromiter(itertools.chain.from_iterable(r["bbox"] for r in results), np.float64, 4 * n)
    return img, cat, score, box.reshape(n, 4)


def _first_per_group(sorted_keys: np.ndarray, k: int) -> np.ndarray:
    """Mask of the first ``k`` entries of each run of equal keys in ``sorted_keys``."""
    n = len(sorted_keys)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]) if n else np.zeros(0, int)
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    return rank < k


def _segments(sorted_keys: np.ndarray):
    """(unique keys, start, count) of the runs of a sorted key array."""
    n = len(sorted_keys)
    if n == 0:
        return sorted_keys[:0], np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return sorted_keys[starts], starts, np.diff(np.r_[starts, n])


def _box_iou(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """pycocotools' box IoU (same float64 operations) of xywh boxes ``d`` (..., 4) and
    ``g`` (..., 4), broadcast."""
    w = np.minimum(d[..., 0] + d[..., 2], g[..., 0] + g[..., 2]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 1] + d[..., 3], g[..., 1] + g[..., 3]) - np.maximum(d[..., 1], g[..., 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    union = d[..., 2] * d[..., 3] + g[..., 2] * g[..., 3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def _match(dbox, dstart, dcount, gbox, gign, gstart, gcount):
    """Greedy matching of the groups (image, class) that have both detections and ground
    truth. Detections of a group are ``dstart + arange(dcount)`` in score order, ground
    truth ``gstart + arange(gcount)`` in file order; ``gign`` (G, A) is the per-area-range
    ignore flag. Returns, per detection slot (len(dbox), T, A): matched, matched-to-ignored."""
    T, A = len(IOU_THRESHOLDS), gign.shape[1]
    matched = np.zeros((len(dbox), T, A), bool)
    matched_ign = np.zeros((len(dbox), T, A), bool)
    thr = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[None, :, None, None]
    # buckets of similar (detections, ground truth) counts bound the padding to 4x
    bucket = np.ceil(np.log2(dcount)).astype(int) * 64 + np.ceil(np.log2(gcount)).astype(int)
    for b in np.unique(bucket):
        sel = np.flatnonzero(bucket == b)
        D, M = int(dcount[sel].max()), int(gcount[sel].max())
        per = max(1, _CHUNK // (D * M * T * A // 8 + D * M))
        for lo in range(0, len(sel), per):
            s = sel[lo:lo + per]
            di = dstart[s, None] + np.arange(D)  # (S, D)
            dvalid = np.arange(D) < dcount[s, None]
            gi = gstart[s, None] + np.arange(M)
            gvalid = np.arange(M) < gcount[s, None]
            di, gi = np.where(dvalid, di, dstart[s, None]), np.where(gvalid, gi, gstart[s, None])
            iou = _box_iou(dbox[di][:, :, None, :], gbox[gi][:, None, :, :])  # (S, D, M)
            ign = gign[gi].transpose(0, 2, 1)[:, None, :, :]  # (S, 1, A, M)
            taken = np.zeros((len(s), T, A, M), bool)
            last = np.arange(M)[None, None, None, :]
            for r in range(D):
                ok = dvalid[:, r]
                cand = (~taken) & (iou[:, r, None, None, :] >= thr) & gvalid[:, None, None, :]
                choice = np.full(cand.shape[:3], -1)
                for want_ign in (True, False):  # the non-ignored choice (second) wins
                    c = cand & (ign == want_ign)
                    val = np.where(c, iou[:, r, None, None, :], -1.0)
                    best = val.max(-1, keepdims=True)
                    pick = np.where(c & (val == best), last, -1).max(-1)  # ties: the later
                    choice = np.where(pick >= 0, pick, choice)
                choice = np.where(ok[:, None, None], choice, -1)
                hit = choice >= 0
                si, ti, ai = np.nonzero(hit)
                taken[si, ti, ai, choice[hit]] = True
                slot = di[:, r]
                matched[slot[si], ti, ai] = True
                matched_ign[slot[si], ti, ai] = ign[si, 0, ai, choice[hit]]
    return matched, matched_ign


def evaluate_lvis_fast(gt: dict, results: Sequence[dict], max_dets: int = 300) -> Dict[str, float]:
    """lvis-api's box evaluation of ``results`` (COCO-format detection dicts) against the
    LVIS-format ``gt`` dict. Returns lvis-api's fractions (not percent): AP, AP50, AP75,
    APs, APm, APl, APr, APc, APf (-1 where undefined, as lvis-api)."""
    return lvis_summary(*_precision(gt, results, max_dets))


def _precision(gt: dict, results: Sequence[dict], max_dets: int):
    """The (T, R, K, A) interpolated precision (-1: no ground truth) and the class frequencies."""
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    cat_ids = np.array([c["id"] for c in cats], np.int64)
    K, A, T, R = len(cat_ids), len(AREA_RANGES), len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    images = gt["images"]
    img_ids = np.unique(np.array([im["id"] for im in images], np.int64))
    img_of = _index(np.array([im["id"] for im in images], np.int64), img_ids)

    # ground truth: evaluated classes, area in (0, inf), file order
    anns = gt["annotations"]
    g_img = _index(np.fromiter((a["image_id"] for a in anns), np.int64, len(anns)), img_ids)
    g_cat = _index(np.fromiter((a["category_id"] for a in anns), np.int64, len(anns)), cat_ids)
    g_area = np.fromiter((a["area"] for a in anns), np.float64, len(anns))
    g_ign = np.fromiter((bool(a.get("ignore", 0)) for a in anns), bool, len(anns))
    g_box = np.fromiter(itertools.chain.from_iterable(a["bbox"] for a in anns), np.float64,
                        4 * len(anns)).reshape(-1, 4)
    keep = (g_img >= 0) & (g_cat >= 0) & (g_area > 0) & (g_area < np.inf)
    g_key = g_img[keep] * K + g_cat[keep]
    order = np.argsort(g_key, kind="stable")
    g_key, g_cat, g_area, g_box = g_key[order], g_cat[keep][order], g_area[keep][order], g_box[keep][order]
    lo, hi = np.array(AREA_RANGES).T
    g_ignA = g_ign[keep][order][:, None] | (g_area[:, None] < lo) | (g_area[:, None] > hi)  # (G, A)
    num_gt = np.zeros((K, A), np.int64)
    for a in range(A):
        num_gt[:, a] = np.bincount(g_cat[~g_ignA[:, a]], minlength=K)

    # detections: per-image cap, evaluated classes, area in (0, inf), federated filter
    d_img, d_cat, d_score, d_box = _detection_arrays(results)
    d_imgi = _index(d_img, img_ids)
    if (d_imgi < 0).any():
        raise ValueError(f"results hold image_id {d_img[d_imgi < 0][0]}, which is not in the "
                         "ground truth's images (lvis-api refuses such results too)")
    if max_dets >= 0:
        order = np.lexsort((-d_score, d_imgi))
        keep = np.zeros(len(d_img), bool)
        keep[order[_first_per_group(d_imgi[order], max_dets)]] = True
    else:
        keep = np.ones(len(d_img), bool)
    d_cati = _index(d_cat, cat_ids)
    d_area = d_box[:, 2] * d_box[:, 3]
    keep &= (d_cati >= 0) & (d_area > 0) & (d_area < np.inf)
    d_key = d_imgi * K + d_cati
    neg = _id_pairs(images, "neg_category_ids", img_of, cat_ids)
    keep &= np.isin(d_key, g_key) | np.isin(d_key, neg)
    idx = np.flatnonzero(keep)
    # (image, class) groups, score order, original order on ties
    idx = idx[np.lexsort((-d_score[idx], d_key[idx]))]
    d_key, d_cati, d_imgi, d_score = d_key[idx], d_cati[idx], d_imgi[idx], d_score[idx]
    d_box, d_area = d_box[idx], d_area[idx]
    nel = _id_pairs(images, "not_exhaustive_category_ids", img_of, cat_ids)
    d_nel = np.isin(d_key, nel)

    # matching, only where an (image, class) has both
    dk, ds, dc = _segments(d_key)
    gk, gs, gc = _segments(g_key)
    both_d = np.isin(dk, gk)
    both_g = _index(dk[both_d], gk)
    in_both = np.repeat(both_d, dc)
    slots = np.flatnonzero(in_both)  # detections that can match, in d order
    slot_start = np.cumsum(np.r_[0, dc[both_d]])[:-1]
    matched, matched_ign = _match(d_box[slots], slot_start, dc[both_d],
                                  g_box, g_ignA, gs[both_g], gc[both_g])

    # accumulation per class: all images, score order, ties by image then original order
    acc = np.lexsort((np.arange(len(d_key)), d_imgi, -d_score, d_cati))
    c_sorted = d_cati[acc]
    ck, cs, cc = _segments(c_sorted)
    seg_of = np.repeat(np.arange(len(ck)), cc)
    slot_of = np.full(len(d_key), -1)
    slot_of[slots] = np.arange(len(slots))
    slot_of = slot_of[acc]
    has = slot_of >= 0
    out_of_range = (d_area[acc][:, None] < lo) | (d_area[acc][:, None] > hi)  # (N, A)
    nel_sorted = d_nel[acc]
    precision = -np.ones((T, R, K, A))
    offset = 2.0 * (len(ck) - seg_of)[::-1]  # reversed running max restarts at each class
    for t in range(T):
        for a in range(A):
            m = np.zeros(len(acc), bool)
            mi = np.zeros(len(acc), bool)
            m[has] = matched[slot_of[has], t, a]
            mi[has] = matched_ign[slot_of[has], t, a]
            ign = mi | (~m & (out_of_range[:, a] | nel_sorted))
            tp = np.cumsum(m & ~ign)
            fp = np.cumsum(~m & ~ign)
            base = np.r_[0, tp][cs]
            tp = (tp - np.repeat(base, cc)).astype(np.float64)
            fp = (fp - np.repeat(np.r_[0, fp][cs], cc)).astype(np.float64)
            ngt = num_gt[ck, a]
            with np.errstate(invalid="ignore", divide="ignore"):
                rc = tp / ngt[seg_of]
            pr = tp / (fp + tp + np.spacing(1))
            env = (np.maximum.accumulate((pr[::-1] + offset)) - offset)[::-1]
            pos = np.searchsorted(RECALL_THRESHOLDS, np.nan_to_num(rc, nan=2.0), side="right")
            cnt = np.bincount(seg_of * (R + 1) + pos, minlength=len(ck) * (R + 1))
            cnt = cnt.reshape(len(ck), R + 1).cumsum(1)[:, :R]  # entries with rc < threshold
            inside = cnt < cc[:, None]
            val = np.where(inside, env[np.minimum(cs[:, None] + cnt, len(env) - 1)], 0.0)
            p = np.zeros((R, K))  # classes with ground truth but no detection: 0
            p[:, ck] = val.T
            p[:, num_gt[:, a] == 0] = -1
            precision[t, :, :, a] = p
    freq = np.array([c.get("frequency", "") for c in cats])
    return precision, freq


def lvis_summary(precision: np.ndarray, freq: np.ndarray) -> Dict[str, float]:
    """lvis-api's ``LVISEval.summarize`` box keys from the (T, R, K, A) precision."""

    def mean(s):
        s = s[s > -1]
        return float(np.mean(s)) if len(s) else -1.0

    all_ = AREA_LABELS.index("all")
    out = {
        "AP": mean(precision[..., all_]),
        "AP50": mean(precision[np.where(0.50 == IOU_THRESHOLDS)[0]][..., all_]),
        "AP75": mean(precision[np.where(0.75 == IOU_THRESHOLDS)[0]][..., all_]),
        "APs": mean(precision[..., AREA_LABELS.index("small")]),
        "APm": mean(precision[..., AREA_LABELS.index("medium")]),
        "APl": mean(precision[..., AREA_LABELS.index("large")]),
    }
    for f in FREQUENCIES:
        out[f"AP{f}"] = mean(precision[:, :, freq == f, all_])
    return out
