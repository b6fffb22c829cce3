"""Small copies of the text-to-SQL benchmark formats, made from the project's generated data.

The real Spider-DK, Spider-Syn, Spider-Realistic and BIRD are not available here (and BIRD's
databases are large), so each format is rebuilt from a generated Spider-format set with the
layout and field names docs/tasks.md gives. The copies live under one `data_dir`, laid out
as the benchmark configs expect (`<data_dir>/text2sql/<benchmark>/...`), so the configs
themselves are what the tests exercise.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

DIFFICULTY = {"easy": "simple", "medium": "moderate", "hard": "challenging", "extra": "challenging"}


def make_benchmarks(generated: Path, data_dir: Path, n: int = 12) -> Path:
    """Spider (train/dev), Spider-DK, Spider-Syn, Spider-Realistic and BIRD copies of `generated`."""
    root = data_dir / "text2sql"
    dev = json.loads((generated / "dev.json").read_text())[:n]
    tables = json.loads((generated / "tables.json").read_text())

    spider = root / "spider"
    shutil.copytree(generated, spider)
    (spider / "dev.json").write_text(json.dumps(dev))

    # Spider-DK: its own tables.json and modified databases named new_*, plus Spider's others.
    dk = root / "spider-dk"
    changed = dev[0]["db_id"]
    (dk / "database" / f"new_{changed}").mkdir(parents=True)
    shutil.copy(generated / "database" / changed / f"{changed}.sqlite",
                dk / "database" / f"new_{changed}" / f"new_{changed}.sqlite")
    (dk / "tables.json").write_text(json.dumps([{**t, "db_id": f"new_{changed}"} for t in tables
                                                if t["db_id"] == changed]))
    dk_examples = [{**e, "db_id": f"new_{changed}" if e["db_id"] == changed else e["db_id"], "type": "DK"}
                   for e in dev]
    (dk / "Spider-DK.json").write_text(json.dumps(dk_examples))

    # Spider-Syn: the question under SpiderSynQuestion (original under SpiderQuestion).
    syn = root / "spider-syn"
    syn.mkdir()
    (syn / "dev.json").write_text(json.dumps([
        {"db_id": e["db_id"], "query": e["query"], "SpiderQuestion": e["question"],
         "SpiderSynQuestion": e["question"].replace("Show", "Display")} for e in dev]))

    # Spider-Realistic: a Spider-format dev file.
    realistic = root / "spider-realistic"
    realistic.mkdir()
    (realistic / "spider-realistic.json").write_text(json.dumps(dev))

    # BIRD: question_id, evidence, SQL, difficulty; dev_tables.json; dev_databases/ (no suites).
    bird = root / "bird"
    (bird / "dev_databases").mkdir(parents=True)
    for db_id in {e["db_id"] for e in dev}:
        (bird / "dev_databases" / db_id).mkdir()
        shutil.copy(generated / "database" / db_id / f"{db_id}.sqlite", bird / "dev_databases" / db_id)
    (bird / "dev_tables.json").write_text(json.dumps(tables))
    (bird / "dev.json").write_text(json.dumps([
        {"question_id": i, "db_id": e["db_id"], "question": e["question"], "SQL": e["query"],
         "evidence": f"evidence {i}: the answer comes from `{e['query'].split(' FROM ')[1].split()[0]}`",
         "difficulty": DIFFICULTY[e["hardness"]]} for i, e in enumerate(dev)]))
    return data_dir
