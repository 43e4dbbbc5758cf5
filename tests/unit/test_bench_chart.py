"""The bench chart: a PNG of each scenario's ratio to its baseline."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import pytest
from matplotlib.image import imread

from datalayer._bench.chart import write_chart
from datalayer._bench.scenarios import Result

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIMES = "\N{MULTIPLICATION SIGN}"


def _result(name: str, threads: int, ratio: float | None, baseline: str | None = None) -> Result:
    return Result(name, 100.0, 120.0, 150.0, 9000.0, threads, baseline, ratio)


RESULTS = [
    _result("raw_pk_lookup", 1, None),
    _result("pk_lookup", 1, 1.04, "raw_pk_lookup"),
    _result("raw_pk_lookup", 4, None),
    _result("pk_lookup", 4, 1.13, "raw_pk_lookup"),
    _result("sqlalchemy_orm_pk_lookup", 1, 2.6, "raw_pk_lookup"),
    _result("usage_summary_rollup", 1, 0.012, "usage_summary_raw"),
    _result("auth_cached", 4, 0.55, "auth_uncached"),
    _result("quota_consume", 1, None),
    _result("ingest_exactly_once", 1, 1.6, "raw_copy"),
]


def test_write_chart_writes_a_png_with_one_bar_per_result_that_has_a_ratio(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bench.png"
    labels = write_chart(RESULTS, path, title="bench")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 20_000
    height, width, _channels = imread(path).shape
    assert (width, len(labels)) == (1080, 6)  # 9 in at 120 dpi
    one_bar = tmp_path / "one.png"
    write_chart(RESULTS[:2], one_bar, title="bench")
    one_height = imread(one_bar).shape[0]
    assert 200 < one_height < height  # taller with each bar


def test_write_chart_leaves_out_results_without_a_ratio_and_keeps_their_order(
    tmp_path: Path,
) -> None:
    labels = write_chart(RESULTS, tmp_path / "bench.png", title="bench")
    assert labels == [
        f"pk_lookup {TIMES}1 thr",
        f"pk_lookup {TIMES}4 thr",
        f"sqlalchemy_orm_pk_lookup {TIMES}1 thr",
        f"usage_summary_rollup {TIMES}1 thr",
        f"auth_cached {TIMES}4 thr",
        f"ingest_exactly_once {TIMES}1 thr",
    ]


def test_write_chart_draws_a_ratio_of_zero_on_its_log_axis(tmp_path: Path) -> None:
    path = tmp_path / "bench.png"
    assert write_chart([_result("auth_cached", 1, 0.0)], path, title="t") == [
        f"auth_cached {TIMES}1 thr"
    ]
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_write_chart_without_matplotlib_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(RuntimeError, match=r"pip install 'datalayer\[bench\]'"):
        write_chart(RESULTS, tmp_path / "bench.png", title="bench")
    assert not (tmp_path / "bench.png").exists()
