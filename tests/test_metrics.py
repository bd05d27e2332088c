"""The course's tester on hand-made predictions, boundaries included."""

import math

import pytest

from pricer.metrics import baseline_metrics, colours, price_metrics, save_chart, summary_line

# (truth, guess, colour): each boundary on both sides
CASES = [
    (100.0, 139.99, "green"),  # $39.99 < $40
    (100.0, 140.0, "orange"),  # exactly $40 and 40 %: not green, < $80
    (300.0, 359.99, "green"),  # $59.99 is 19.997 % of $300
    (300.0, 240.0, "orange"),  # $60 is exactly 20 %: not green
    (100.0, 179.99, "orange"),  # $79.99 < $80
    (100.0, 180.0, "red"),  # exactly $80 and 80 %
    (250.0, 349.9, "orange"),  # 39.96 %
    (250.0, 350.0, "red"),  # $100 is exactly 40 %: not orange
    (10.0, 0.0, "green"),  # $10
]


def test_colours_at_the_boundaries():
    import numpy as np

    truths = np.array([c[0] for c in CASES])
    guesses = np.array([c[1] for c in CASES])
    assert colours(guesses, truths) == [c[2] for c in CASES]


def test_metrics_match_hand_computation():
    truths = [c[0] for c in CASES]
    guesses = [c[1] for c in CASES]
    errors = [abs(g - t) for g, t in zip(guesses, truths, strict=True)]
    metrics = price_metrics(guesses, truths)
    assert metrics["price_error"] == pytest.approx(sum(errors) / len(errors))
    assert metrics["median_error"] == pytest.approx(sorted(errors)[len(errors) // 2])  # 9 items: the 5th
    log_errors = [math.log(g + 1) - math.log(t + 1) for g, t in zip(guesses, truths, strict=True)]
    rmsle = math.sqrt(sum(e**2 for e in log_errors) / len(log_errors))
    assert metrics["rmsle"] == pytest.approx(rmsle)
    assert (metrics["green"], metrics["orange"], metrics["red"], metrics["items"]) == (3, 4, 2, 9)
    assert metrics["hit_rate"] == pytest.approx(3 / 9)


def test_rmsle_is_the_log_error():
    e = math.e
    metrics = price_metrics([0.0, e**2 - 1], [e - 1, e - 1])  # log errors -1 and +1
    assert metrics["rmsle"] == pytest.approx(1.0)
    assert price_metrics([-5.0], [0.0])["rmsle"] == 0.0  # a negative guess reads as 0


def test_zero_truth_is_judged_in_dollars():
    assert price_metrics([30.0, 50.0], [0.0, 0.0])["green"] == 1


def test_mismatched_lengths_fail():
    with pytest.raises(ValueError, match="as many guesses"):
        price_metrics([1.0], [1.0, 2.0])


def test_constant_mean_baseline():
    baseline = baseline_metrics([10.0, 20.0, 30.0], [20.0, 100.0])
    assert baseline["guess"] == 20.0
    assert baseline["price_error"] == 40.0  # errors 0 and 80
    assert (baseline["green"], baseline["red"]) == (1, 1)


def test_summary_line_is_the_course_format():
    line = summary_line({"price_error": 1234.567, "rmsle": 0.4449, "hit_rate": 0.612})
    assert line == "Error=$1,234.57 RMSLE=0.44 Hits=61.2%"


def test_chart_is_a_png(tmp_path):
    path = save_chart([10.0, 200.0, 500.0], [12.0, 100.0, 900.0], tmp_path / "charts" / "chart.png", "t")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
