"""benchmarks/peers/results.py: medians and spreads per method, N and mode; JSON round trip."""

from __future__ import annotations

from pathlib import Path

from benchmarks.peers import results


def sample(method: str, n: int, mode: str, wall: float, cpu: float) -> results.Sample:
    return results.Sample(method, n, mode, 0, wall, cpu)


def test_summarise_groups_by_method_n_and_mode_with_median_and_spread() -> None:
    samples = [
        sample("raw", 100, "cold", 3.0, 0.3),
        sample("aiores", 100, "cold", 9.0, 0.9),
        sample("raw", 100, "cold", 1.0, 0.1),
        sample("raw", 100, "warm", 5.0, 0.5),
        sample("raw", 100, "cold", 2.0, 0.7),
        sample("raw", 100, "cold", 10.0, 0.2),
    ]
    summaries = results.summarise(samples)
    assert [(s.method, s.n, s.mode, s.count) for s in summaries] == [
        ("raw", 100, "cold", 4),
        ("aiores", 100, "cold", 1),
        ("raw", 100, "warm", 1),
    ]
    cold = results.find(summaries, "raw", 100, "cold")
    assert cold is not None
    # An even count: the mean of the middle two, for wall and CPU apart.
    assert cold.wall == 2.5
    assert (cold.wall_min, cold.wall_max) == (1.0, 10.0)
    assert abs(cold.cpu - 0.25) < 1e-12
    assert (cold.cpu_min, cold.cpu_max) == (0.1, 0.7)
    assert results.find(summaries, "raw", 500, "cold") is None


def test_results_survive_a_json_round_trip(tmp_path: Path) -> None:
    out = results.Results("ssh", [sample("pssh", 500, "warm", 1.5, 0.25)], [[1.0, 2.0, 3.0]])
    out.notes["rss_per_connection"] = {"pssh 500": 129126.4}
    path = tmp_path / "deep" / "ssh_side.json"
    results.save(out, path)
    back = results.load(path)
    assert back == out
    assert "| pssh | 500 | warm | 1 | 1.500 s |" in results.table(results.summarise(back.samples))
