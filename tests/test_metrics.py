"""The course's tester on hand-made predictions, boundaries included."""

import math

import numpy as np
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


def test_chart_colours_each_point_as_the_tester_does(tmp_path):
    """The chart is a 12 x 8 inch PNG at 100 dpi whose points carry the tester's colours: 30 guesses
    $10 off are green only; 10 each $10 off, 30 % off and 3x the truth show all three."""
    from matplotlib import colors, image

    truths = [300.0 + 20 * i for i in range(30)]

    def pixels(guesses: list[float], name: str) -> dict[str, int]:
        path = save_chart(guesses, truths, tmp_path / "charts" / name, "t")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        rgb = image.imread(path)[..., :3]
        assert rgb.shape == (800, 1200, 3)
        return {c: int((abs(rgb - colors.to_rgb(c)).max(axis=-1) < 0.05).sum()) for c in ("green", "orange", "red")}

    assert colours(np.array([t + 10 for t in truths]), np.array(truths)) == ["green"] * 30
    green_only = pixels([t + 10 for t in truths], "green.png")
    assert green_only["green"] > 30 and green_only["orange"] == green_only["red"] == 0
    mixed = [t + 10 for t in truths[:10]] + [1.3 * t for t in truths[10:20]] + [3 * t for t in truths[20:]]
    assert colours(np.array(mixed), np.array(truths)) == ["green"] * 10 + ["orange"] * 10 + ["red"] * 10
    assert all(count > 10 for count in pixels(mixed, "mixed.png").values())
