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

Speed: matching runs only for detections whose IoU with a ground-truth box of their
(image, class) reaches 0.5, all groups at once (one step per rank within a group); the
precision curves are read at the true positives alone (precision rises only there). With
N detections, memory is O(N) plus 40 flags per detection that reaches IoU 0.5.
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


def _buckets(dstart, dcount, gstart, gcount, per_entry: int):
    """Groups padded to (S, D) detections x (S, M) ground truth, in buckets of similar
    counts (padding at most 4x), chunked to about ``_CHUNK / per_entry`` S x D x M entries.
    Yields (group indices, detection indices (S, D), valid (S, D), gt indices, valid)."""
    bucket = np.ceil(np.log2(dcount)).astype(int) * 64 + np.ceil(np.log2(gcount)).astype(int)
    for b in np.unique(bucket):
        sel = np.flatnonzero(bucket == b)
        D, M = int(dcount[sel].max()), int(gcount[sel].max())
        per = max(1, _CHUNK // (D * M * per_entry))
        for lo in range(0, len(sel), per):
            s = sel[lo:lo + per]
            dvalid = np.arange(D) < dcount[s, None]
            gvalid = np.arange(M) < gcount[s, None]
            di = np.where(dvalid, dstart[s, None] + np.arange(D), dstart[s, None])
            gi = np.where(gvalid, gstart[s, None] + np.arange(M), gstart[s, None])
            yield s, di, dvalid, gi, gvalid


def _max_iou(dbox, dstart, dcount, gbox, gstart, gcount) -> np.ndarray:
    """Per detection, its highest IoU with the ground truth of its group."""
    best = np.zeros(len(dbox))
    for _, di, dvalid, gi, gvalid in _buckets(dstart, dcount, gstart, gcount, 1):
        iou = _box_iou(dbox[di][:, :, None, :], gbox[gi][:, None, :, :])
        best[di[dvalid]] = np.where(gvalid[:, None, :], iou, 0.0).max(-1)[dvalid]
    return best


def _match(dbox, dstart, dcount, gbox, gign, gstart, gcount):
    """Greedy matching of the groups (image, class) that have both detections and ground
    truth. Detections of a group are ``dstart + arange(dcount)`` in score order, ground
    truth ``gstart + arange(gcount)`` in file order; ``gign`` (G, A) is the per-area-range
    ignore flag. Returns, per detection (len(dbox), T, A): matched, matched-to-ignored."""
    T, A = len(IOU_THRESHOLDS), gign.shape[1]
    matched = np.zeros((len(dbox), T, A), bool)
    matched_ign = np.zeros((len(dbox), T, A), bool)
    thr = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[None, :, None, None]
    last = None
    for s, di, dvalid, gi, gvalid in _buckets(dstart, dcount, gstart, gcount, T * A):
        iou = _box_iou(dbox[di][:, :, None, :], gbox[gi][:, None, :, :])  # (S, D, M)
        ign = gign[gi].transpose(0, 2, 1)[:, None, :, :]  # (S, 1, A, M)
        M = gi.shape[1]
        taken = np.zeros((len(s), T, A, M), bool)
        last = np.arange(M)[None, None, None, :]
        for r in range(di.shape[1]):  # the r-th detection of every group at once
            cand = (~taken) & (iou[:, r, None, None, :] >= thr) & gvalid[:, None, None, :]
            cand &= dvalid[:, r, None, None, None]
            # ignored ground truth only if no other is left; then the highest IoU, the later on ties
            cand &= ~ign | ~(cand & ~ign).any(-1, keepdims=True)
            val = np.where(cand, iou[:, r, None, None, :], -1.0)
            best = val.max(-1, keepdims=True)
            choice = np.where(cand & (val == best), last, -1).max(-1)
            hit = choice >= 0
            si, ti, ai = np.nonzero(hit)
            taken[si, ti, ai, choice[hit]] = True
            slot = di[si, r]
            matched[slot, ti, ai] = True
            matched_ign[slot, ti, ai] = ign[si, 0, ai, choice[hit]]
    return matched, matched_ign


def _class_precision(rank, matched, matched_ign, could_fp, fp_base, c_sorted, num_gt, K):
    """(R, K) interpolated precision of one (IoU threshold, area range) from the matched
    detections alone: precision only rises at true positives, so its running maximum from
    the right, sampled at the first position reaching each recall, is read at the true
    positives. ``rank``: position of each matched-candidate detection in class/score order;
    ``fp_base``: per position, the count so far (in its class) of detections that are false
    positives unless matched."""
    R = len(RECALL_THRESHOLDS)
    sel = np.flatnonzero(matched)
    order = np.argsort(rank[sel])
    pos, tp_flag = rank[sel][order], ~matched_ign[sel][order]
    cls = c_sorted[pos]
    _, starts, counts = _segments(cls)
    first = np.repeat(starts, counts)
    ok = np.cumsum(could_fp[pos])  # matched detections that would otherwise be FPs
    ok -= np.r_[0, ok][first]
    tp = np.cumsum(tp_flag)
    tp -= np.r_[0, tp][first]
    pos, cls, tp = pos[tp_flag], cls[tp_flag], tp[tp_flag].astype(np.float64)
    fp = (fp_base[pos] - ok[tp_flag]).astype(np.float64)
    out = np.where(num_gt > 0, 0.0, -1.0)[None, :].repeat(R, 0)
    if len(pos) == 0:
        return out
    ck, cs, cc = _segments(cls)
    seg = np.repeat(np.arange(len(ck)), cc)
    rc = tp / num_gt[cls]
    pr = tp / (fp + tp + np.spacing(1))
    offset = 2.0 * (len(ck) - seg)[::-1]  # the running maximum restarts at each class
    env = (np.maximum.accumulate(pr[::-1] + offset) - offset)[::-1]
    thr_pos = np.searchsorted(RECALL_THRESHOLDS, rc, side="right")
    cnt = np.bincount(seg * (R + 1) + thr_pos, minlength=len(ck) * (R + 1))
    cnt = cnt.reshape(len(ck), R + 1).cumsum(1)[:, :R]  # true positives with rc < threshold
    val = np.where(cnt < cc[:, None], env[np.minimum(cs[:, None] + cnt, len(env) - 1)], 0.0)
    out[:, ck] = val.T
    return out


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

    # matching, only where an (image, class) has both, only detections that reach IoU 0.5
    dk, ds, dc = _segments(d_key)
    gk, gs, gc = _segments(g_key)
    both = np.isin(dk, gk)
    g_of = _index(dk[both], gk)
    cand = np.flatnonzero(np.repeat(both, dc))  # detections sharing (image, class) with gt
    cand_start = np.cumsum(np.r_[0, dc[both]])[:-1]
    best = _max_iou(d_box[cand], cand_start, dc[both], g_box, gs[g_of], gc[g_of])
    reach = best >= IOU_THRESHOLDS[0]
    slots = cand[reach]  # in group order, so groups stay contiguous
    group = np.repeat(np.arange(len(g_of)), dc[both])[reach]
    sk, sstart, scount = _segments(group)
    matched, matched_ign = _match(d_box[slots], sstart, scount, g_box, g_ignA,
                                  gs[g_of[sk]], gc[g_of[sk]])

    # accumulation per class: all images, score order, ties by image then original order
    acc = np.lexsort((np.arange(len(d_key)), d_imgi, -d_score, d_cati))
    rank = np.empty(len(acc), np.int64)
    rank[acc] = np.arange(len(acc))
    c_sorted = d_cati[acc]
    ck, cs, cc = _segments(c_sorted)
    # per area range: running count, within the class, of detections that are a false
    # positive unless matched (area in range, class exhaustively annotated)
    could_fp = ~((d_area[acc][:, None] < lo) | (d_area[acc][:, None] > hi) | d_nel[acc][:, None])
    fp_base = np.cumsum(could_fp, axis=0)
    fp_base -= np.repeat(np.r_[np.zeros((1, A), np.int64), fp_base][cs], cc, axis=0)
    precision = -np.ones((T, R, K, A))
    slot_rank = rank[slots]
    for t in range(T):
        for a in range(A):
            precision[t, :, :, a] = _class_precision(
                slot_rank, matched[:, t, a], matched_ign[:, t, a], could_fp[:, a],
                fp_base[:, a], c_sorted, num_gt[:, a], K)
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
