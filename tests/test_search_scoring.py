"""Nearest-neighbour search (faiss) and the kNN score with conformal calibration."""

from __future__ import annotations

from fractions import Fraction

import faiss
import numpy as np
import pytest

from shiftbench.scoring import Calibration, FusedKNNScorer, KNNScorer
from shiftbench.scoring.fused import _loo_neglog_p, _neglog_p
from shiftbench.search import build_index, l2_normalize, recall_at_k, search, set_breadth, tune_recall


def clustered(n: int, d: int = 32, clusters: int = 20, spread: float = 0.35, seed: int = 0,
              sample_seed: int | None = None) -> np.ndarray:
    """Unit vectors around ``clusters`` centres (set by ``seed``); ``sample_seed`` draws
    other points around the same centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    if sample_seed is not None:
        rng = np.random.default_rng(sample_seed)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, d))
    return l2_normalize(x.astype(np.float32))


def brute_knn(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.sqrt(np.maximum(((q[:, None, :].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1), 0))
    ids = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, ids, 1), ids


@pytest.fixture(scope="module")
def vectors():
    return clustered(5000)


# ------------------------------------------------------------------ search


def test_l2_normalize():
    x = np.array([[3, 4], [0, 0], [-1e-3, 0]], np.float64)
    y = l2_normalize(x)
    assert y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_allclose(y, [[0.6, 0.8], [0, 0], [-1, 0]], atol=1e-6)  # zero row: no NaN


def test_flat_search_returns_euclidean_distances(vectors):
    index = build_index(vectors, "flat")
    assert isinstance(index, faiss.IndexFlatL2) and index.ntotal == 5000
    q = clustered(50, sample_seed=1)
    dist, ids = search(index, q, 7)
    ref_d, ref_ids = brute_knn(vectors, q, 7)
    assert dist.shape == ids.shape == (50, 7) and dist.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_allclose(dist, ref_d, atol=2e-3)  # not squared
    assert (ids == ref_ids).mean() > 0.99  # ties aside
    assert (np.diff(dist, axis=1) >= 0).all()
    assert dist.max() <= 2.0 + 1e-5  # unit vectors


def test_search_k_clipped_to_index_size():
    x = clustered(3, d=4)
    dist, ids = search(build_index(x, "flat"), x, 10)
    assert dist.shape == (3, 3)
    assert sorted(ids[0]) == [0, 1, 2] and dist[0, 0] == pytest.approx(0, abs=1e-3)
    assert search(build_index(x, "flat"), x, 0)[0].shape == (3, 1)


def test_missing_neighbours_are_inf_and_minus_one():
    # two far-apart tight clusters of 100, IVF with two lists, probing one list:
    # a query finds only its own cluster's 100 vectors
    rng = np.random.default_rng(0)
    a = np.tile([1, 0, 0, 0], (100, 1)) + 0.01 * rng.normal(size=(100, 4))
    b = np.tile([-1, 0, 0, 0], (100, 1)) + 0.01 * rng.normal(size=(100, 4))
    x = l2_normalize(np.vstack([a, b]))
    index = build_index(x, "ivf", nlist=2)
    set_breadth(index, 1)
    dist, ids = search(index, x[:1], 120)
    assert set(ids[0, :100]) == set(range(100))
    assert (ids[0, 100:] == -1).all() and np.isinf(dist[0, 100:]).all()
    assert np.isfinite(dist[0, :100]).all() and dist[0, 0] == pytest.approx(0, abs=1e-3)


def test_auto_and_bad_kind(vectors):
    assert isinstance(build_index(vectors[:100], "auto"), faiss.IndexFlatL2)
    with pytest.raises(ValueError, match="index kind"):
        build_index(vectors, "lsh")


@pytest.mark.parametrize("kind, cls", [("ivf", faiss.IndexIVFFlat), ("hnsw", faiss.IndexHNSWFlat)])
def test_approximate_index_default_breadth_has_high_recall(vectors, kind, cls):
    index = build_index(vectors, kind)
    assert isinstance(index, cls) and index.ntotal == len(vectors)
    if kind == "ivf":
        assert index.nlist == 128  # min(4 sqrt(N), N / 39)
    exact = build_index(vectors, "flat")
    q = clustered(300, sample_seed=7)  # held-out queries from the same distribution
    assert recall_at_k(index, exact, q, 10) >= 0.95
    info = tune_recall(index, vectors, target=0.95)
    assert info["kind"] == kind and info["recall_at_k"] >= 0.95
    assert info["breadth"] == (16 if kind == "ivf" else 64)  # already enough: not changed


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_tune_recall_raises_breadth(vectors, kind):
    index = build_index(vectors, kind)
    set_breadth(index, 1)  # start from a poor breadth, so that tuning has work to do
    exact = build_index(vectors, "flat")
    q = clustered(300, sample_seed=7)
    before = recall_at_k(index, exact, q, 10)
    info = tune_recall(index, vectors, target=0.95)
    assert info["kind"] == kind and info["k"] == 10
    assert info["recall_at_k"] >= 0.95 and info["breadth"] > 1
    assert info["breadth"] == (index.nprobe if kind == "ivf" else index.hnsw.efSearch)
    # tune_recall measures recall with indexed vectors as queries, which is optimistic
    # for held-out queries (HNSW: ~0.89 here); still far better than before tuning
    after = recall_at_k(index, exact, q, 10)
    assert after >= 0.85 and after > before + 0.3


def test_tune_recall_flat_is_exact(vectors):
    assert tune_recall(build_index(vectors, "flat"), vectors) == {"kind": "flat", "breadth": None,
                                                                   "recall_at_k": 1.0, "k": 10}


def test_recall_at_k_counts_shared_neighbours(vectors):
    exact = build_index(vectors[:500], "flat")
    assert recall_at_k(exact, exact, vectors[:20], 5) == 1.0
    other = build_index(vectors[500:1000], "flat")  # same ids, different vectors: overlap is chance
    assert recall_at_k(other, exact, vectors[:20], 5) < 0.2


# ------------------------------------------------------------------ calibration


def test_calibration_hand_made():
    cal = Calibration(np.arange(1, 20, dtype=np.float64))  # 1..19, n = 19
    # rank ceil(0.9 * 20) = 18: threshold is the 18th smallest score
    assert cal.threshold(0.1) == 18.0
    s = np.array([0.5, 1.0, 18.0, 18.5, 19.0, 20.0, np.nan])
    p = cal.p_values(s)
    expected = [Fraction(20, 20), Fraction(20, 20), Fraction(3, 20), Fraction(2, 20), Fraction(2, 20),
                Fraction(1, 20)]
    np.testing.assert_allclose(p[:6], [float(f) for f in expected], rtol=0, atol=1e-15)
    assert np.isnan(p[6])
    flagged_by_p = p[:6] <= 0.1
    assert flagged_by_p.tolist() == (s[:6] > 18.0).tolist() == [False, False, False, True, True, True]
    assert cal.threshold(0.5) == 10.0  # ceil(0.5 * 20) = 10
    assert cal.threshold(0.01) == float("inf")  # 1 / 20 > 0.01: nothing can be flagged
    assert cal.p_values(np.array([100.0]))[0] == pytest.approx(0.05)


@pytest.mark.parametrize("fpr", [0.0, 1.0, -0.1, 1.5])
def test_calibration_bad_fpr(fpr):
    with pytest.raises(ValueError, match="fpr"):
        Calibration(np.arange(5.0)).threshold(fpr)


def test_p_value_and_threshold_decide_the_same():
    rng = np.random.default_rng(3)
    for n in [1, 2, 9, 19, 20, 99, 100, 999, 1234]:
        cal = Calibration(np.sort(np.round(rng.gamma(2, 1, n), 1)))  # rounded: ties included
        s = np.concatenate([np.round(rng.gamma(2, 1.3, 500), 1), cal.scores])
        for fpr in [0.001, 0.01, 0.05, 0.07, 0.1, 0.2, 0.3, 0.5, 0.9]:
            np.testing.assert_array_equal(cal.p_values(s) <= fpr, s > cal.threshold(fpr),
                                          err_msg=f"n={n} fpr={fpr}")


def test_calibration_summary():
    cal = Calibration(np.arange(1, 101, dtype=np.float64))
    summ = cal.summary(0.05)
    assert summ["n"] == 100 and summ["fpr_target"] == 0.05 and summ["method"] == "leave-one-out"
    assert summ["threshold"] == 96.0  # ceil(0.95 * 101) = 96
    assert summ["score_quantiles"]["p50"] == pytest.approx(50.5)
    assert summ["score_quantiles"]["p99"] == pytest.approx(99.01)


def test_false_alarm_test_holds_its_level_where_a_binomial_does_not():
    """In-distribution batches: the p-value of "only false alarms" is below 0.05 about 5% of the time,
    over fresh calibration samples too; a binomial at fpr, blind to the calibration's own spread,
    rejects far more often. A batch with 10% shifted images is told apart."""
    from scipy.stats import binom
    rng = np.random.default_rng(0)
    n_cal, n_batch, fpr, reps = 200, 1000, 0.05, 600
    ours, naive, shifted = [], [], []
    for _ in range(reps):
        cal = Calibration(np.sort(rng.normal(size=n_cal)))
        batch = rng.normal(size=n_batch)
        k = int((batch > cal.threshold(fpr)).sum())
        ours.append(cal.false_alarm_test(n_batch, k, fpr)["p_value"])
        naive.append(binom.sf(k - 1, n_batch, fpr))
        batch[:100] += 4.0  # a tenth of the batch far out
        shifted.append(cal.false_alarm_test(n_batch, int((batch > cal.threshold(fpr)).sum()), fpr)["p_value"])
    assert np.mean(np.array(ours) < 0.05) < 0.08
    assert np.mean(np.array(naive) < 0.05) > 0.15
    assert np.mean(np.array(shifted) < 0.01) > 0.95
    got = Calibration(np.arange(1, 20, dtype=np.float64)).false_alarm_test(100, 30, 0.1)
    # m = floor(0.1 * 20) = 2: the rate is Beta(2, 18), mean 0.1
    assert got["expected_false_alarms"] == pytest.approx(10.0) and got["excess_flagged"] == 20
    assert got["false_alarm_range_95"][0] <= 10 <= got["false_alarm_range_95"][1] < 30 and got["p_value"] < 0.05
    assert Calibration(np.arange(1, 20, dtype=np.float64)).false_alarm_test(100, 5, 0.01)["p_value"] == 1.0


# ------------------------------------------------------------------ kNN scorer


def test_leave_one_out_matches_brute_force():
    x = clustered(300, d=16, clusters=5, seed=2)
    scorer = KNNScorer(k=5, index="flat").fit(x)
    d, _ = brute_knn(x, x, 6)  # column 0 is the point itself
    assert (d[:, 0] < 1e-6).all()
    np.testing.assert_allclose(scorer.calibration_.scores, np.sort(d[:, 5]), atol=2e-3)
    info = scorer.index_info_
    assert {k: info[k] for k in ("kind", "breadth", "recall_at_k", "k", "n")} == \
        {"kind": "flat", "breadth": None, "recall_at_k": 1.0, "k": 10, "n": 300}
    assert info["rows_with_copies"] == 0 and 0 < info["copy_radius"] < d[:, 1].min()  # no copies: unchanged


def test_leave_one_out_skips_copies_and_near_copies(monkeypatch):
    """A training set of bursts (each image twice, the second nearly the same): scored against its own
    copy, every training image would look closer than any new image does; leave-one-out skips copies."""
    base = l2_normalize(clustered(60, d=16, seed=4))
    rng = np.random.default_rng(0)
    near = base + 0.01 * rng.normal(size=base.shape)  # a frame later: nearly the same
    x = np.vstack([base, base[:10], near[10:]])  # ten exact copies, fifty near-copies
    shas = np.array([f"s{i}" for i in range(60)] + [f"s{i}" for i in range(10)] + [f"n{i}" for i in range(10, 60)])
    scorer = KNNScorer(k=1, index="flat").fit(x, copies=shas)
    expected = KNNScorer(k=1, index="flat").fit(base).loo_  # the distinct images alone
    # (a near-copy of another image may sit a little closer than that image itself)
    np.testing.assert_allclose(scorer.loo_[:60], expected, rtol=0.2)
    assert np.median(np.abs(scorer.loo_[:60] / expected - 1)) < 0.02
    assert scorer.index_info_["rows_with_copies"] == 120
    new = clustered(2000, d=16, seed=4, sample_seed=9)  # new images of the same kind

    def flagged(sc: KNNScorer) -> float:
        return float((sc.calibration_.p_values(sc.score(new)[0]) <= 0.05).mean())
    assert abs(flagged(scorer) - flagged(KNNScorer(k=1, index="flat").fit(base))) < 0.02
    monkeypatch.setattr("shiftbench.scoring.knn.NEAR_COPY", 0.0)  # copies counted as other images:
    assert flagged(KNNScorer(k=1, index="flat").fit(x)) > 0.9  # nearly every new image flagged
    assert flagged(KNNScorer(k=1, index="flat").fit(x, copies=shas)) > 0.25  # the near-copies alone
    monkeypatch.undo()
    radius_only = KNNScorer(k=1, index="flat").fit(x[:70]).calibration_  # exact copies without labels
    assert (radius_only.scores > 1e-3).all()


def test_a_dense_mode_is_not_taken_for_copies():
    """40% of the set alike (empty frames of a belt): closer to each other than a quarter of the set's
    median spacing, but a new frame of that kind is as close to them. With the median radius alone every
    one was skipped as a copy, and no image could be flagged at 5% (realised 0.000)."""
    rng = np.random.default_rng(0)

    def draw(m: int) -> np.ndarray:
        x = rng.normal(size=(m, 8))
        dense = rng.random(m) < 0.4
        x[dense] = 3 + 0.02 * x[dense]
        return x.astype(np.float32)
    scorer = KNNScorer(k=1, index="flat", normalize=False).fit(draw(400))
    assert scorer.index_info_["rows_with_copies"] < 10
    assert 0.03 < (scorer.calibration_.p_values(scorer.score(draw(4000))[0]) <= 0.05).mean() < 0.07


def test_bursts_longer_than_the_spacing_rank_are_still_copies():
    """15 bursts of 8 frames among 880 distinct images: each frame has 7 near-copies, more than the 5th
    neighbour that measures the set's spacing, yet fewer than 1% of the set: every frame is a copy."""
    rng = np.random.default_rng(0)
    scenes = rng.normal(size=(15, 16))
    frames = np.repeat(scenes, 8, axis=0) + 0.01 * rng.normal(size=(120, 16))
    x = np.vstack([rng.normal(size=(880, 16)), frames]).astype(np.float32)
    scorer = KNNScorer(k=1, index="flat", normalize=False).fit(x)
    assert scorer.index_info_["rows_with_copies"] == 120
    assert (scorer.loo_[880:] > 0.5).all()  # scored against other scenes, not their own burst (0.01 x spread)


def test_score_of_queries():
    x = clustered(400, d=16, clusters=5, seed=5)
    scorer = KNNScorer(k=3).fit(x)
    q = clustered(30, d=16, clusters=5, seed=5, sample_seed=6)
    q[4] = np.nan
    scores, nearest = scorer.score(q * 7.0)  # scale does not matter: features are normalised
    d, ids = brute_knn(x, l2_normalize(np.nan_to_num(q)), 3)
    ok = np.arange(30) != 4
    np.testing.assert_allclose(scores[ok], d[ok, 2], atol=2e-3)
    assert (nearest[ok] == ids[ok, 0]).all()
    assert np.isnan(scores[4]) and nearest[4] == -1
    assert scores.dtype == np.float32 and nearest.dtype == np.int64


def test_false_alarm_rate_near_target():
    rng = np.random.default_rng(11)
    train = rng.normal(size=(2000, 16)).astype(np.float32)
    test = rng.normal(size=(2000, 16)).astype(np.float32)
    scorer = KNNScorer(k=5).fit(train)
    p = scorer.calibration_.p_values(scorer.score(test)[0])
    assert 0.03 <= (p <= 0.05).mean() <= 0.07
    assert 0.07 <= (p <= 0.10).mean() <= 0.13
    # p-values of exchangeable samples are near uniform
    assert 0.45 <= np.median(p) <= 0.55


def test_far_points_score_higher():
    rng = np.random.default_rng(12)
    train = rng.normal(size=(1000, 16)).astype(np.float32) + 3.0
    near = rng.normal(size=(200, 16)).astype(np.float32) + 3.0
    far = rng.normal(size=(200, 16)).astype(np.float32) + 3.0
    far[:, :4] -= 6.0  # another direction after normalisation
    scorer = KNNScorer(k=5).fit(train)
    s_near, s_far = scorer.score(near)[0], scorer.score(far)[0]
    assert np.median(s_far) > 1.5 * np.median(s_near)
    p_far = scorer.calibration_.p_values(s_far)
    assert (p_far <= 0.05).mean() > 0.95


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_scorer_close_to_exact(kind):
    x = clustered(3000, d=16, clusters=10, seed=8)
    exact = KNNScorer(k=5, index="flat").fit(x)
    approx = KNNScorer(k=5, index=kind).fit(x)
    assert approx.index_info_["kind"] == kind and approx.index_info_["recall_at_k"] >= 0.95
    np.testing.assert_allclose(np.median(approx.calibration_.scores), np.median(exact.calibration_.scores),
                               rtol=0.02)
    q = clustered(200, d=16, clusters=10, seed=8, sample_seed=9)
    assert np.mean(np.abs(approx.score(q)[0] - exact.score(q)[0])) < 0.01


def test_fit_needs_two_rows():
    with pytest.raises(ValueError, match="at least 2"):
        KNNScorer().fit(np.ones((1, 4), np.float32))


def test_tiny_bank_k_larger_than_n():
    x = clustered(3, d=4, seed=1)
    scorer = KNNScorer(k=5, index="flat").fit(x)
    assert len(scorer.calibration_.scores) == 3 and np.isfinite(scorer.calibration_.scores).all()
    s, nearest = scorer.score(x)
    assert np.isfinite(s).all() and (nearest == [0, 1, 2]).all()


# ------------------------------------------------------------------ fused views


def two_views(n: int, seed: int, shift_b: float = 0.0) -> np.ndarray:
    """(n, 24): view 'a' = 16 dims, view 'b' = 8 dims, each a Gaussian blob off the origin
    (so that directions, what the normalised kNN sees, are concentrated); ``shift_b``
    moves view 'b' only."""
    rng = np.random.default_rng(seed)
    x = (2.0 + rng.normal(size=(n, 24))).astype(np.float32)
    x[:, 16:20] += shift_b
    x[:, 20:24] -= shift_b
    return x


VIEWS = [("a", 16), ("b", 8)]


def test_neglog_p_inside_and_beyond_the_sample():
    cal = np.arange(1.0, 20.0)  # n = 19
    s = np.array([0.0, 1.0, 10.0, 18.5, 19.0, 19.5, 21.0, 40.0])
    out = _neglog_p(cal, s.copy())
    inside = s <= 19.0
    ge = np.array([(cal >= v).sum() for v in s])
    np.testing.assert_allclose(out[inside], -np.log((1 + ge[inside]) / 20.0))
    # beyond the largest calibration score it keeps growing, linearly, from log(n + 1)
    assert out[5] > np.log(20.0) and out[7] > out[6] > out[5]
    slope = (out[7] - out[6]) / (40.0 - 21.0)
    assert (out[6] - out[5]) / 1.5 == pytest.approx(slope)
    assert out[5] == pytest.approx(np.log(20.0) + 0.5 * slope)
    assert (np.diff(out) >= 0).all()  # monotone in the score


def test_loo_neglog_p_ranks_against_the_others():
    loo = np.array([3.0, 1.0, 2.0, 5.0, 4.0])
    # p = #{scores >= own, itself included} / n; the top one, beyond the others, extended as a new image
    # beyond the top would be: log(4 + 1) + (5 - 4) / tau, tau = |4| (too few scores for a tail slope)
    expected = -np.log(np.array([3, 5, 4, 1, 2]) / 5.0)
    expected[3] = np.log(5.0) + 0.25
    np.testing.assert_allclose(_loo_neglog_p(loo), expected)
    np.testing.assert_allclose(_loo_neglog_p(np.array([1.0, 5.0, 5.0])), -np.log(np.array([3, 2, 2]) / 3.0))  # tie
    # an infinite top (every other image a copy of it) stays at log n, as before: not an infinite calibration
    np.testing.assert_allclose(_loo_neglog_p(np.array([1.0, 2.0, 3.0, np.inf])), -np.log(np.array([4, 3, 2, 1]) / 4))


def test_fused_false_alarm_rate_holds_with_a_small_bank():
    """New in-distribution images are flagged at the target rate, not more: one beyond the top of a
    view (1 in n + 1) gets the extended evidence, and so does the training image at the top."""
    rates = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        train, new = rng.standard_t(3, size=(100, 16)), rng.standard_t(3, size=(2000, 16))
        views = [(f"v{i}", 4) for i in range(4)]
        fused = FusedKNNScorer(views, index="flat", raw_views=tuple(n for n, _ in views)).fit(train)
        rates.append((fused.calibration_.p_values(fused.score(new)[0]) <= 0.01).mean())
    assert np.mean(rates) <= 0.013  # 0.020 before the training top was extended too


def test_fused_scorer_sums_per_view_evidence():
    train, test = two_views(500, 0), two_views(40, 1)
    test[3] = np.nan
    fused = FusedKNNScorer(VIEWS, k=2, index="flat").fit(train)
    assert list(fused.scorers_) == ["a", "b"]
    assert set(fused.index_info_) == {"a", "b"} and fused.index_info_["a"]["n"] == 500
    scores, nearest, dist = fused.score(test)
    ref_a = KNNScorer(k=2, index="flat").fit(train[:, :16])
    ref_b = KNNScorer(k=2, index="flat").fit(train[:, 16:])
    (da, na), (db, _) = ref_a.score(test[:, :16]), ref_b.score(test[:, 16:])
    np.testing.assert_allclose(dist["a"], da, equal_nan=True)
    np.testing.assert_allclose(dist["b"], db, equal_nan=True)
    assert (nearest == na).all() and nearest[3] == -1  # nearest comes from the first view
    ok = np.arange(40) != 3
    expected = (_neglog_p(ref_a.calibration_.scores, da[ok]) + _neglog_p(ref_b.calibration_.scores, db[ok]))
    np.testing.assert_allclose(scores[ok], expected, rtol=1e-5)
    assert np.isnan(scores[3])
    # calibration: fused leave-one-out evidence of the training rows
    loo = np.sort(_loo_neglog_p(ref_a.loo_) + _loo_neglog_p(ref_b.loo_))
    np.testing.assert_allclose(fused.calibration_.scores, loo, rtol=1e-6)


def test_fused_restore_equals_fit():
    train = two_views(300, 2)
    fused = FusedKNNScorer(VIEWS, k=1, index="flat").fit(train)
    restored = FusedKNNScorer(VIEWS, k=1).restore(
        {n: KNNScorer.restore(sc.index_, sc.index_info_, sc.loo_, 1) for n, sc in fused.scorers_.items()})
    np.testing.assert_array_equal(restored.calibration_.scores, fused.calibration_.scores)
    q = two_views(20, 3)
    np.testing.assert_array_equal(restored.score(q)[0], fused.score(q)[0])


def test_fused_false_alarm_rate_near_target():
    fused = FusedKNNScorer(VIEWS).fit(two_views(2000, 10))
    p = fused.calibration_.p_values(fused.score(two_views(2000, 11))[0])
    assert 0.03 <= (p <= 0.05).mean() <= 0.07
    assert 0.45 <= np.median(p) <= 0.55


def test_fused_catches_a_shift_seen_in_one_view_only():
    fused = FusedKNNScorer(VIEWS).fit(two_views(1000, 20))
    shifted = two_views(300, 21, shift_b=2.5)  # only view "b" moves
    scores, _, dist = fused.score(shifted)
    p = fused.calibration_.p_values(scores)
    assert (p <= 0.05).mean() > 0.75
    # view 'a' alone would not see it: its distances look like training ones
    p_a = fused.scorers_["a"].calibration_.p_values(dist["a"])
    assert (p_a <= 0.05).mean() < 0.1


def test_false_alarm_test_p_values_far_in_the_tail_and_in_words():
    from shiftbench.scoring.knn import shift_verdict
    cal = Calibration(np.arange(900.0))
    far = cal.false_alarm_test(1100, 740, 0.05)
    assert 0 < far["p_value"] < 1e-100  # summed term by term, not 1 - cdf (which bottoms out near 1e-10)
    assert shift_verdict(far).startswith("the batch has shifted: in-distribution images would give 55 false alarms "
                                         "(95%: 35-77), 685 flags more (p = ")
    few = cal.false_alarm_test(20, 1, 0.05)
    assert few["p_value"] == pytest.approx(0.637, abs=0.001)
    assert shift_verdict(few) == ("in-distribution images would give 1.0 false alarm (95%: 0-3): no more flags than "
                                  "false alarms explain (p = 0.64)")
