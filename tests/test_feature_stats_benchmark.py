"""benchmarks/feature_stats.py runs at a small size and reports agreeing results for both kernels."""
import re

from benchmarks import feature_stats


def test_feature_stats_benchmark_reports_ratios_and_agreement(capsys):
    assert feature_stats.main(["--dim", "24", "--classes", "4", "--per_class", "5", "--align_classes", "6",
                               "--samples", "8", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    kl = re.search(r"ratio ([\d.]+)x\s+relative difference ([\d.e+-]+)", out)
    assert kl and float(kl.group(1)) > 0 and float(kl.group(2)) < 1e-10
    assert re.search(r"ratio [\d.]+x\s+bitwise equal True", out)
