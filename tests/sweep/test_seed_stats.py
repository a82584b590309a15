"""Seeds as statistics (sgdlab.results.seed_stats and the summary's seeded rows)."""

import math

import numpy as np
import pytest

from sgdlab.results import seed_stats, summary
from sgdlab.results.history import History


@pytest.mark.parametrize("k,n,lo,hi", [
    # The closed form worked by hand (p=0.25, n=20: 0.2903 +- 0.1784), to 4 decimals.
    (5, 20, 0.1119, 0.4687), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0),
    (2, 20, 0.0279, 0.3010), (50, 100, 0.4038, 0.5962)])
def test_wilson_interval_matches_the_closed_form(k, n, lo, hi):
  got = seed_stats.wilson(k, n)
  assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_covers_the_rate_at_about_95_percent():
  rng = np.random.default_rng(0)
  p, n = 0.25, 20
  hits = [seed_stats.wilson(int(x), n)[0] <= p <= seed_stats.wilson(int(x), n)[1]
          for x in rng.binomial(n, p, size=4000)]
  assert 0.93 <= np.mean(hits) <= 0.98


def test_wilson_refuses_impossible_counts():
  with pytest.raises(ValueError, match="n=0"):
    seed_stats.wilson(0, 0)
  with pytest.raises(ValueError, match="successes=3"):
    seed_stats.wilson(3, 2)


def test_median_iqr_skips_what_is_not_finite():
  assert seed_stats.median_iqr([1.0, 2.0, 3.0, 4.0, 5.0, math.nan, math.inf]) == (3.0, 2.0, 4.0)
  assert seed_stats.median_iqr([math.nan]) is None
  assert seed_stats.rate_cell([True] * 5 + [False] * 15) == "5 of 20 (11-47%)"


def _seed(seed, final_loss, acc, diverged=False, rose=False):
  h = History(name="k=256 lr=1", config=dict(batch_size=256, learning_rate=1.0,
                                             lr_decay=1e-3, seed=seed))
  losses = [2.0, 2.5, final_loss] if rose else [2.0, 1.5, final_loss]
  h.epochs = dict(epoch=[1, 2, 3], train_loss=losses, train_accuracy=[0.5, 0.6, acc],
                  test_loss=losses, test_accuracy=[0.5, 0.6, acc], wall_time=[1.0] * 3,
                  examples_per_sec=[10.0] * 3)
  h.diverged = "loss 1e13 at step 37" if diverged else ""
  return h


def test_a_diverged_seed_never_enters_the_figures():
  # The classic k=256 row once read "final loss 1.565e+13 (0.0568-4.694e+13)".
  runs = [_seed(s, 0.05 + 0.01 * s, 0.94 + 0.001 * s) for s in range(9)]
  runs.append(_seed(9, 4.694e13, 0.1, diverged=True, rose=True))
  text = summary.table(runs)
  header, _, row = text.splitlines()[:3]
  cells = dict(zip([c.strip() for c in header.strip("|").split("|")],
                   [c.strip() for c in row.strip("|").split("|")]))
  assert cells["seeds"] == "10"
  assert cells["diverged"] == "1 of 10 (2-40%)"
  assert cells["not monotone"] == "1 of 10 (2-40%)"
  assert cells["final loss"] == "0.09 [0.07-0.11]"  # median and IQR of seeds 0-8
  assert cells["test acc"] == "0.9440 [0.9420-0.9460]"
  assert "e+13" not in text.split("Diagnostics")[0]


def test_every_seed_diverged_leaves_no_figure():
  runs = [_seed(s, 1e13, 0.1, diverged=True) for s in range(3)]  # loss recorded falling
  row = summary.table(runs).splitlines()[2]
  assert row.count("3 of 3 (44-100%)") == 2  # diverged, and so not monotone
  assert "e+13" not in row
