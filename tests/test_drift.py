"""Two-sample drift tests of condition measurements (``shiftbench.scoring.drift``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shiftbench.scoring.drift import benjamini_hochberg, drift_table, robust_scale

COLUMNS = ["measure", "train_median", "prod_median", "effect", "wasserstein", "ks", "p_value", "q_value",
           "drifted"]


def gaussian_tables(n=300, cols=6, seed=0):
    rng = np.random.default_rng(seed)
    names = [f"m{i}" for i in range(cols)]
    train = pd.DataFrame(rng.normal(size=(n, cols)), columns=names)
    prod = pd.DataFrame(rng.normal(size=(n, cols)), columns=names)
    return train, prod


# ------------------------------------------------------------------ Benjamini-Hochberg

def test_bh_hand_computed():
    # sorted p: 0.01 (rank 1), 0.03 (2), 0.04 (3), 0.2 (4); p * 4 / rank = 0.04, 0.06, 0.0533, 0.2;
    # running minimum from the top: 0.04, 0.0533, 0.0533, 0.2 -> back in input order
    q = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.2]))
    np.testing.assert_allclose(q, [0.04, 0.16 / 3, 0.16 / 3, 0.2])


def test_bh_second_example_and_cap_at_one():
    p = np.array([0.5, 0.001, 0.9, 0.02, 0.04, 1.0])
    # sorted: 0.001, 0.02, 0.04, 0.5, 0.9, 1.0 -> x6/rank: 0.006, 0.06, 0.08, 0.75, 1.08, 1.0
    # running min from the top: 0.006, 0.06, 0.08, 0.75, 1.0, 1.0
    expected = np.array([0.75, 0.006, 1.0, 0.06, 0.08, 1.0])
    np.testing.assert_allclose(benjamini_hochberg(p), expected)


def test_bh_properties():
    rng = np.random.default_rng(0)
    p = rng.random(50) ** 3
    q = benjamini_hochberg(p)
    assert q.shape == p.shape
    assert np.all(q >= p - 1e-15) and np.all(q <= 1)
    order = np.argsort(p)
    assert np.all(np.diff(q[order]) >= -1e-15)  # monotone in p
    assert benjamini_hochberg(np.array([0.03])) == pytest.approx([0.03])
    assert benjamini_hochberg(np.array([])).shape == (0,)
    np.testing.assert_allclose(benjamini_hochberg([0.01, 0.01, 0.01]), [0.01, 0.01, 0.01])


# ------------------------------------------------------------------ robust_scale

def test_robust_scale_of_gaussian_is_sigma():
    rng = np.random.default_rng(1)
    assert robust_scale(rng.normal(3.0, 2.5, 20000)) == pytest.approx(2.5, rel=0.03)


def test_robust_scale_ignores_outliers():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, 2000)
    x[:100] = 1e6  # 5% wild values
    assert robust_scale(x) == pytest.approx(1.0, rel=0.15)
    assert np.std(x) > 1e4


def test_robust_scale_degenerate():
    # IQR 0 (more than half the values equal) -> falls back to std
    x = np.r_[np.zeros(80), np.linspace(1, 2, 20)]
    assert robust_scale(x) == pytest.approx(np.std(x))
    # constant -> a tiny positive floor, never 0
    assert 0 < robust_scale(np.full(10, 4.2)) <= 1e-12


# ------------------------------------------------------------------ drift_table

def test_same_distribution_nothing_drifted():
    train, prod = gaussian_tables()
    t = drift_table(train, prod)
    assert list(t.columns) == COLUMNS
    assert sorted(t["measure"]) == sorted(train.columns)
    assert not t["drifted"].any()
    assert (t["effect"].abs() < 0.3).all() and (t["wasserstein"] < 0.3).all()
    assert (t["q_value"] >= t["p_value"] - 1e-15).all()


def test_shifted_column_is_drifted_and_first():
    train, prod = gaussian_tables()
    prod["m3"] += 1.0  # one training sigma
    t = drift_table(train, prod)
    top = t.iloc[0]
    assert top["measure"] == "m3"
    assert bool(top["drifted"])
    assert t["drifted"].sum() == 1
    assert top["q_value"] < 1e-6
    # effect = median shift in units of the training spread (IQR / 1.349)
    a, b = train["m3"].to_numpy(), prod["m3"].to_numpy()
    assert top["effect"] == pytest.approx((np.median(b) - np.median(a)) / robust_scale(a), rel=1e-9)
    assert top["prod_median"] - top["train_median"] == pytest.approx(np.median(b) - np.median(a))
    # with n=300 the effect itself has a sampling sd of ~0.12 (median and IQR of both samples)
    assert top["effect"] == pytest.approx(1.0, abs=0.35)
    assert top["wasserstein"] == pytest.approx(1.0, abs=0.35)


def test_same_sample_shifted_by_one_sigma():
    train, _ = gaussian_tables()
    t = drift_table(train, train + 1.0)
    assert t["drifted"].all()
    assert t["effect"].to_numpy() == pytest.approx(1.0, abs=0.25)
    assert t["wasserstein"].to_numpy() == pytest.approx(1.0, abs=0.25)
    assert (t["ks"] > 0.3).all()


def test_effect_of_one_sigma_averaged_over_columns():
    train, prod = gaussian_tables(cols=8, seed=11)
    t = drift_table(train, prod + 1.0)
    assert t["drifted"].all()
    assert t["effect"].mean() == pytest.approx(1.0, abs=0.1)
    assert t["wasserstein"].mean() == pytest.approx(1.0, abs=0.1)
    assert (t["effect"] - 1.0).abs().max() < 0.4


def test_negative_shift_and_units_of_training_spread():
    train, prod = gaussian_tables(seed=3)
    train["m1"] *= 4.0  # training spread 4: a shift of -2 is -0.5 spreads
    prod["m1"] = prod["m1"] * 4.0 - 2.0
    prod["m2"] = prod["m2"] - 3.0  # -3 spreads
    t = drift_table(train, prod)
    assert list(t["measure"][:2]) == ["m2", "m1"]  # sorted by |effect|, sign kept
    t = t.set_index("measure")
    assert t.loc["m1", "effect"] == pytest.approx(-0.5, abs=0.2)
    assert t.loc["m2", "effect"] == pytest.approx(-3.0, abs=0.5)
    assert t.loc["m2", "drifted"] and t.loc["m1", "drifted"]
    # scaling both samples of a column by 4 leaves effect and wasserstein unchanged
    scaled = drift_table(train * 4.0, prod * 4.0).set_index("measure")
    np.testing.assert_allclose(scaled.loc[t.index, "effect"], t["effect"], rtol=1e-9)
    np.testing.assert_allclose(scaled.loc[t.index, "wasserstein"], t["wasserstein"], rtol=1e-9)


def test_q_values_are_bh_of_p_values():
    train, prod = gaussian_tables(seed=4)
    prod["m0"] += 0.4
    t = drift_table(train, prod)
    np.testing.assert_allclose(t["q_value"], benjamini_hochberg(t["p_value"].to_numpy()))
    assert (t["drifted"] == (t["q_value"] < 0.01)).all()
    loose = drift_table(train, prod, alpha=1.01)
    assert loose["drifted"].all()


def test_column_selection_and_missing_values():
    train, prod = gaussian_tables(n=100, cols=3, seed=5)
    train["name"] = "a"
    prod["name"] = "b"
    train["only_train"] = 1.0
    prod.loc[:49, "m0"] = np.nan  # NaN rows are dropped per column
    train["few"] = np.nan
    train.loc[0, "few"] = 1.0  # one value: not tested
    prod["few"] = 1.0
    t = drift_table(train, prod)
    assert sorted(t["measure"]) == ["m0", "m1", "m2"]
    assert t["effect"].notna().all() and t["p_value"].notna().all()
    assert list(drift_table(train, prod, columns=["m2"])["measure"]) == ["m2"]


def test_empty_table():
    t = drift_table(pd.DataFrame({"a": [1.0]}), pd.DataFrame({"a": [2.0]}))
    assert list(t.columns) == COLUMNS and len(t) == 0
    t = drift_table(pd.DataFrame({"s": ["x", "y"]}), pd.DataFrame({"s": ["x", "z"]}))
    assert len(t) == 0


def test_constant_columns_do_not_crash():
    train, prod = gaussian_tables(seed=6)
    train["same"] = 0.25
    prod["same"] = 0.25
    train["moved"] = 224.0  # e.g. every training image 224 px wide, production 640
    prod["moved"] = 640.0
    t = drift_table(train, prod).set_index("measure")
    numeric = t.drop(columns="drifted").to_numpy(float)
    assert np.isfinite(numeric).all()
    assert t.loc["same", "effect"] == 0 and t.loc["same", "wasserstein"] == 0
    assert t.loc["same", "p_value"] == pytest.approx(1.0) and not t.loc["same", "drifted"]
    assert t.loc["moved", "drifted"] and t.loc["moved", "effect"] > 0
    assert drift_table(train, prod)["measure"].iloc[0] == "moved"


def test_constant_training_column_has_a_sane_effect():
    train, prod = gaussian_tables(seed=6)
    train["moved"] = 224.0
    prod["moved"] = 640.0
    train["rare"] = 0.0  # e.g. shadows_clipped: 0 on every training image
    prod["rare"] = np.r_[np.zeros(200), np.full(100, 0.2)]
    t = drift_table(train, prod).set_index("measure")
    assert abs(t.loc["moved", "effect"]) < 100 and t.loc["moved", "wasserstein"] < 100
    assert t.loc["rare", "wasserstein"] < 100


def test_a_measurement_constant_in_training_is_not_infinitely_sensitive():
    """Parts on a black belt: the 5th brightness percentile is 0 in every training image. One grey level
    more in production read 4e9 training spreads (and flagged the image); the spread is now floored."""
    from shiftbench.scoring.conditions import fit_standardizer, standardize
    train = pd.DataFrame({"status": "ok", "brightness_p05": np.zeros(50), "noise": np.full(50, np.nan),
                          "contrast": np.linspace(0.1, 0.3, 50)})
    st = fit_standardizer(train)  # (an all-NaN column used to raise IndexError here)
    prod = pd.DataFrame({"status": ["ok"], "brightness_p05": [1 / 255], "noise": [0.01], "contrast": [0.2]})
    z = dict(zip(st["columns"], standardize(prod, st)[0]))
    assert 1 < z["brightness_p05"] < 10 and np.isfinite(z["noise"])
    assert robust_scale(np.array([0.2, 0.2, 0.2]), floor=1e-3) == pytest.approx(1e-3)
    nearly = np.r_[np.zeros(60), np.full(40, 1e-6)]  # an IQR of 1e-6: the floor holds there too
    assert robust_scale(nearly, floor=5e-4) == pytest.approx(5e-4)
