"""`kdlight-report` on real sweep folders: seeds aggregated, baseline deltas, what each benchmark
was scored with, failed and missing runs, paired tests; unrelated runs are never merged."""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from kdlight.cli.report import main as report
from kdlight.report.paired import mcnemar, permutation
from kdlight.report.table import aggregate
from tests.helpers import multirun


def sweep(tmp_path: Path, name: str, overrides: list[str], fails: bool = False) -> Path:
    multirun(tmp_path / name, ["debug=fdr", *overrides], tmp_path.parent / "cache", fails)
    return tmp_path / name


def test_report_aggregates_seeds_and_lists_failed_and_missing_jobs(tmp_path, capsys):
    main_sweep = sweep(tmp_path, "main", ["method=sft,rkd", "seed=0,1"])
    broken = sweep(tmp_path, "broken", ["method=fkd", "optimizer.lr=-1"], fails=True)
    killed = main_sweep / "9_killed"  # a job that started (config written) and never finished
    shutil.copytree(next(main_sweep.glob("0_*/.hydra")), killed / ".hydra")

    report([str(main_sweep), str(broken), "--metrics", "eval/ex,val/ce", "--out", str(tmp_path / "out"),
            "--paired", "rkd:sft"])
    text = (tmp_path / "out" / "report.md").read_text()
    head = ("| method | student | teacher | seeds | params | sqlgen EX | sqlgen val/ce | average | Δ vs sft | step (s) "
            "| step vs sft |")
    assert head in text
    assert "4 finished runs; 1 failed" in text and "Invalid learning rate" in text
    assert "1 missing" in text and "9_killed" in text
    assert "- sqlgen: comparator test_suite, max_rows 100000, timeout_s 5.0" in text  # how it was scored
    assert (tmp_path / "out" / "report.png").read_bytes()[:4] == b"\x89PNG"

    runs = [json.loads(p.read_text()) for p in main_sweep.glob("*/metrics.json")]
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "out" / "report.csv"))}
    assert set(rows) == {"sft", "rkd"} and rows["rkd"]["teacher"] == "llama-m" and rows["sft"]["seeds"] == "2"
    for method in ("sft", "rkd"):
        ce = [r["val/ce"] for r in runs if r["method"] == method]
        assert ce[0] != ce[1]  # the seeds really differ, so mean and spread are informative
        assert float(rows[method]["sqlgen val/ce mean"]) == pytest.approx(statistics.fmean(ce))
        assert float(rows[method]["sqlgen val/ce std"]) == pytest.approx(statistics.stdev(ce))
    # The average is over score columns only (EX here), not over the held-out loss.
    assert float(rows["rkd"]["average"]) == pytest.approx(float(rows["rkd"]["sqlgen EX mean"]))
    assert float(rows["rkd"]["delta"]) == pytest.approx(float(rows["rkd"]["average"]) - float(rows["sft"]["average"]))
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
    assert f"| rkd | sft | sqlgen | EX | llama-xs | llama-m | 2 | {n} | {only_rkd} | {only_sft} |" in text


def test_the_default_columns_are_what_each_scorer_declares(tmp_path):
    run = sweep(tmp_path, "one", ["method=sft"])
    report([str(run), "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| sqlgen EX | sqlgen TS | average |" in text  # text-to-SQL declares EX and TS (EM not shown)


def fake_run(folder: Path, method: str, seed: int, ex: float, overrides: list[str], step: float = 1.0) -> dict:
    return {"method": method, "label": method, "stage": "student", "model": "llama-xs", "teacher": None,
            "data": "sqlgen", "seed": seed, "params": 10, "step_time_s": step, "eval/ex": ex, "folder": str(folder),
            "benchmarks": [{"name": "sqlgen", "prefix": "eval", "metrics": ["ex"]}], "overrides": overrides}


def test_runs_that_share_method_and_model_but_differ_in_settings_are_separate_rows(tmp_path):
    common = ["data.limit_eval=8", "student.path=/runs/warm/model"]
    runs = [fake_run(tmp_path / "a", "sft", 0, 10.0, ["method=sft", "seed=0", "optimizer.lr=0.001", *common]),
            fake_run(tmp_path / "b", "sft", 1, 20.0, ["method=sft", "seed=1", "optimizer.lr=0.001", *common]),
            fake_run(tmp_path / "c", "sft", 0, 50.0, ["method=sft", "seed=0", "optimizer.lr=0.01", *common]),
            fake_run(tmp_path / "d", "rkd", 0, 30.0, ["method=rkd", "method.ce_weight=0", *common]),
            fake_run(tmp_path / "e", "rkd", 0, 40.0, ["method=rkd", *common])]
    _, rows = aggregate(runs, None, "sft")
    by_label = {r["method"]: r for r in rows}
    assert set(by_label) == {"sft [optimizer.lr=0.001]", "sft [optimizer.lr=0.01]", "rkd [method.ce_weight=0]",
                             "rkd"}  # labelled with only what differs
    assert by_label["sft [optimizer.lr=0.001]"]["sqlgen EX"].mean == 15.0
    assert by_label["sft [optimizer.lr=0.001]"]["seeds"] == 2 and by_label["sft [optimizer.lr=0.01]"]["seeds"] == 1
    teacher = {**fake_run(tmp_path / "t", "sft", 0, 80.0, ["method=sft"]), "stage": "teacher"}
    _, rows = aggregate([runs[0], teacher], None, "sft")
    assert len(rows) == 2  # a teacher fine-tuned with SFT is not a seed of the SFT student


def test_a_start_that_follows_the_seed_is_one_row_but_other_starts_are_not(tmp_path):
    """A study stage that continues each seed's earlier job: one row of three seeds."""
    runs = [fake_run(tmp_path / f"ft{seed}", "sft", seed, 10.0 * seed, ["method=sft", f"seed={seed}",
            f"student.path=/study/students/jt_seed{seed}/model"]) for seed in range(3)]
    _, rows = aggregate(runs, None, "sft")
    assert len(rows) == 1 and rows[0]["seeds"] == 3 and rows[0]["method"] == "sft"
    # Another starting point for the same seeds is another experiment, never merged with them.
    other = [fake_run(tmp_path / f"o{seed}", "sft", seed, 0.0, ["method=sft", f"seed={seed}",
             "student.path=/elsewhere/model"]) for seed in range(2)]
    _, rows = aggregate(runs[:2] + other, None, "sft")
    elsewhere = [r for r in rows if r["method"] == "sft [student.path=/elsewhere/model]"]
    assert len(elsewhere) == 1 and elsewhere[0]["seeds"] == 2 and elsewhere[0]["sqlgen EX"].mean == 0.0


def test_runs_of_one_seed_that_nothing_tells_apart_are_never_averaged(tmp_path):
    """Two runs started from Python (no overrides), same method, data and seed: not two seeds."""
    runs = [fake_run(tmp_path / "x" / "one", "sft", 0, 10.0, []), fake_run(tmp_path / "y" / "two", "sft", 0, 30.0, [])]
    _, rows = aggregate(runs, None, "sft")
    assert sorted(r["method"] for r in rows) == ["sft [run x/one]", "sft [run y/two]"]
    assert all(r["split"] and r["seeds"] == 1 for r in rows)
    # Two sweeps name their jobs alike: the rows are still two, named up to where the folders differ.
    runs = [fake_run(tmp_path / "a" / "0_m", "sft", 0, 10.0, []), fake_run(tmp_path / "b" / "0_m", "sft", 0, 30.0, [])]
    _, rows = aggregate(runs, None, "sft")
    assert sorted((r["method"], r["sqlgen EX"].mean) for r in rows) == [("sft [run a/0_m]", 10.0),
                                                                        ("sft [run b/0_m]", 30.0)]


def test_a_failed_single_run_is_listed_as_failed_not_as_running(tmp_path):
    folder = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "kdlight.cli.train", "debug=fdr", "optimizer.lr=-1",
                           f"hydra.run.dir={folder}"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "KDLIGHT_CACHE": str(tmp_path / "cache")})
    assert done.returncode != 0 and "Invalid learning rate" in done.stderr
    assert "Invalid learning rate" in (folder / "error.txt").read_text()
    ok = sweep(tmp_path, "ok", ["method=sft"])
    report([str(ok), str(folder), "--out", str(tmp_path / "out")])
    text = (tmp_path / "out" / "report.md").read_text()
    assert "1 failed" in text and str(folder) in text and "missing" not in text


def test_mcnemar_exact_p_value():
    # 10 discordant pairs one way, 2 the other: p = 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12.
    a = [True] * 10 + [False] * 2 + [True] * 5 + [False] * 3
    b = [False] * 10 + [True] * 2 + [True] * 5 + [False] * 3
    test = mcnemar(a, b)
    assert (test.n, test.only_a, test.only_b) == (20, 10, 2)
    assert test.p_value == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert (test.score_a, test.score_b) == (75.0, 35.0)
    assert mcnemar(b, a).p_value == test.p_value and mcnemar(a, a).p_value == 1.0
    assert mcnemar([True] * 3, [False] * 3).p_value == pytest.approx(0.25)
    with pytest.raises(ValueError, match="same length"):
        mcnemar([True], [True, False])


def test_paired_permutation_test_on_scores():
    better = [0.5 + 0.1 * (i % 3) for i in range(40)]
    worse = [x - 0.2 for x in better]
    assert permutation(better, worse).p_value < 0.001  # a consistent difference
    assert permutation(better, better).p_value == 1.0  # no difference at all
    mixed = permutation([1.0, 0.0] * 20, [0.0, 1.0] * 20)
    assert mixed.p_value > 0.5 and (mixed.only_a, mixed.only_b) == (20, 20)


def test_report_without_finished_runs_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no finished runs"):
        report([str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="not a folder"):
        report([str(tmp_path / "nowhere")])


def test_a_study_orders_columns_as_it_lists_its_jobs_and_a_losses_only_report_plots_them(tmp_path, recwarn):
    from kdlight.report.write import ReportSpec, write_report

    runs = sweep(tmp_path, "runs", ["method=sft"])
    first = next(runs.glob("0_*"))
    other = runs / "1_other"  # the same run on a data set named "alpha", which sorts first
    shutil.copytree(first, other)
    metrics = json.loads((other / "metrics.json").read_text())
    metrics["data"] = "alpha"
    for spec in metrics["benchmarks"]:
        spec["name"] = "alpha" if spec["prefix"] == "eval" else spec["name"]
    (other / "metrics.json").write_text(json.dumps(metrics))

    by_folder = write_report([runs], tmp_path / "by_folder")
    planned = write_report([runs], tmp_path / "planned", planned=[other, first])
    assert "| sqlgen EX | sqlgen TS | alpha EX | alpha TS |" in by_folder  # folders in name order
    assert "| alpha EX | alpha TS | sqlgen EX | sqlgen TS |" in planned  # the study's order

    losses = write_report([runs], tmp_path / "losses", ReportSpec(metrics=("val/ce",), summary=False))
    assert "| sqlgen val/ce | alpha val/ce |" in losses
    assert (tmp_path / "losses" / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert not [w for w in recwarn if "No artists with labels" in str(w.message)]  # the losses are plotted


def test_paired_tests_pair_rows_of_the_same_setting_only(tmp_path):
    """Runs of one label split into rows by a setting (two budgets) pair with the other label's runs
    of the same setting, never across settings; each setting is its own test."""
    from kdlight.report.paired import paired_table

    runs = []
    for label, right in (("a", [True, True, False, True]), ("b", [False, True, False, False])):
        for budget in (120, 240):
            for seed in (0, 1):
                folder = tmp_path / f"{label}_{budget}_{seed}"
                folder.mkdir()
                outcome = right if budget == 120 else [not r for r in right]
                (folder / "predictions.jsonl").write_text(
                    "".join(json.dumps({"index": i, "ex": r}) + "\n" for i, r in enumerate(outcome)))
                run = fake_run(folder, label, seed, 0.0, [f"policy={label}", f"policy.budget={budget}", f"seed={seed}"])
                run["benchmarks"][0]["predictions"] = "predictions.jsonl"
                runs.append(run)
    rows = paired_table(runs, [("a", "b")])
    assert [(r["benchmark"], r["seeds"], r["test"].n) for r in rows] == [
        ("sqlgen [policy.budget=120]", 2, 8), ("sqlgen [policy.budget=240]", 2, 8)]
    small, large = rows
    assert (small["test"].only_a, small["test"].only_b) == (4, 0)  # a right where b is wrong, twice per seed
    assert (large["test"].only_a, large["test"].only_b) == (0, 4)


def test_the_difference_from_the_baseline_is_taken_within_the_same_setting(tmp_path):
    runs = [fake_run(tmp_path / f"{m}{b}", m, 0, ex, [f"policy={m}", f"policy.budget={b}"])
            for m, b, ex in (("a", 120, 50.0), ("a", 240, 80.0), ("b", 120, 30.0), ("b", 240, 70.0))]
    _, rows = aggregate(runs, None, "b")
    delta = {r["method"]: r["delta"] for r in rows}
    assert delta == {"a [policy.budget=120]": 20.0, "a [policy.budget=240]": 10.0,
                     "b [policy.budget=120]": 0.0, "b [policy.budget=240]": 0.0}


def test_an_unfinished_budgeted_run_is_missing_not_its_stages_finished_runs(tmp_path):
    """A policy run started from Python (no .hydra) and killed in its last stage: its earlier
    stages' training runs are parts of it, not rows of their own."""
    from kdlight.report.collect import collect

    run = tmp_path / "sweep" / "baldistill"
    (run / "stages" / "0" / "train").mkdir(parents=True)
    (run / "stages" / "0" / "train" / "metrics.json").write_text(json.dumps({"method": "sft"}))
    (run / "ledger.json").write_text(json.dumps({"settings": {}, "rows": []}))
    jobs = collect([tmp_path / "sweep"])
    assert jobs.finished == [] and jobs.missing == [run]
    (run / "metrics.json").write_text(json.dumps({"method": "sft", "label": "baldistill_a"}))
    assert [j["folder"] for j in collect([tmp_path / "sweep"]).finished] == [str(run)]
