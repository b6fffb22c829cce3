"""`kdlight-report` on real sweep folders: seeds aggregated, baseline deltas, failed and missing jobs."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest

from kdlight.cli.report import main as report
from kdlight.report.paired import mcnemar
from tests.helpers import multirun


def sweep(tmp_path: Path, name: str, overrides: list[str]) -> Path:
    multirun(tmp_path / name, ["debug=fdr", *overrides], tmp_path.parent / "cache")
    return tmp_path / name


def test_report_aggregates_seeds_and_lists_failed_and_missing_jobs(tmp_path, capsys):
    main_sweep = sweep(tmp_path, "main", ["method=sft,rkd", "seed=0,1"])
    broken = sweep(tmp_path, "broken", ["method=fkd", "optimizer.lr=-1"])
    killed = main_sweep / "9_killed"  # a job that started (config written) and never finished
    shutil.copytree(next(main_sweep.glob("0_*/.hydra")), killed / ".hydra")

    report([str(main_sweep), str(broken), "--metrics", "eval/ex,val/ce", "--out", str(tmp_path / "out"),
            "--paired", "rkd:sft"])
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| method | student | teacher | seeds | sqlgen EX | sqlgen CE | average | Δ vs sft | step vs sft |" in text
    assert "4 finished runs; 1 failed" in text and "Invalid learning rate" in text
    assert "1 missing" in text and "9_killed" in text
    assert (tmp_path / "out" / "report.png").read_bytes()[:4] == b"\x89PNG"

    runs = [json.loads(p.read_text()) for p in main_sweep.glob("*/metrics.json")]
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "out" / "report.csv"))}
    assert set(rows) == {"sft", "rkd"} and rows["rkd"]["teacher"] == "llama-m" and rows["sft"]["seeds"] == "2"
    for method in ("sft", "rkd"):
        ce = [r["val/ce"] for r in runs if r["method"] == method]
        assert ce[0] != ce[1]  # the seeds really differ, so mean and spread are informative
        assert float(rows[method]["sqlgen CE mean"]) == pytest.approx(statistics.fmean(ce))
        assert float(rows[method]["sqlgen CE std"]) == pytest.approx(statistics.stdev(ce))
    assert float(rows["sft"]["relative_step"]) == pytest.approx(1.0)
    assert float(rows["rkd"]["relative_step"]) > 1.0  # a teacher forward on top of the student's step
    average = lambda m: (float(rows[m]["sqlgen EX mean"]) + float(rows[m]["sqlgen CE mean"])) / 2  # noqa: E731
    assert float(rows["rkd"]["delta"]) == pytest.approx(average("rkd") - average("sft"))
    assert "written:" in capsys.readouterr().out

    # McNemar: rkd against sft on the same questions, pooled over the two seeds.
    outcome = {}
    for folder in main_sweep.glob("[0-9]_*"):
        if (folder / "predictions.jsonl").exists():
            run = json.loads((folder / "metrics.json").read_text())
            lines = (folder / "predictions.jsonl").read_text().splitlines()
            outcome[(run["method"], run["seed"])] = [json.loads(line)["ex"] for line in lines]
    only_rkd = sum(a and not b for s in (0, 1) for a, b in zip(outcome[("rkd", s)], outcome[("sft", s)]))
    only_sft = sum(b and not a for s in (0, 1) for a, b in zip(outcome[("rkd", s)], outcome[("sft", s)]))
    n = len(outcome[("rkd", 0)]) * 2
    assert f"| rkd | sft | sqlgen | llama-xs | llama-m | 2 | {n} | {only_rkd} | {only_sft} |" in text


def test_mcnemar_exact_p_value():
    # 10 discordant pairs one way, 2 the other: p = 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12.
    a = [True] * 10 + [False] * 2 + [True] * 5 + [False] * 3
    b = [False] * 10 + [True] * 2 + [True] * 5 + [False] * 3
    test = mcnemar(a, b)
    assert (test.n, test.only_a, test.only_b) == (20, 10, 2)
    assert test.p_value == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert (test.acc_a, test.acc_b) == (75.0, 35.0)
    assert mcnemar(b, a).p_value == test.p_value and mcnemar(a, a).p_value == 1.0
    assert mcnemar([True] * 3, [False] * 3).p_value == pytest.approx(0.25)
    with pytest.raises(ValueError, match="same length"):
        mcnemar([True], [True, False])


def test_report_without_finished_runs_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no finished runs"):
        report([str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="not a folder"):
        report([str(tmp_path / "nowhere")])
