"""A real SLURM cluster: sweeps submitted through Hydra's submitit launcher to slurmctld/slurmd.

The `slurm` tier (`make test ARGS="-m slurm"`, run by CI after the default tier). The fixture
brings up a one-node cluster of this machine with experiments/slurm/cluster.sh (installing
slurm-wlm and munge if they are missing) and takes it down afterwards; where it cannot start (no
root, no apt-get) the tier is skipped with the reason. Every job is a real `sbatch` job array task
run by slurmd: SLURM's environment, time limits and requeues are the real ones.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]  # jobs run here, so that `tests.helpers` imports
CLUSTER_SCRIPT = REPO / "experiments" / "slurm" / "cluster.sh"
# One CPU and 2 GB per task: the cluster is this machine, so two jobs run side by side on 2 CPUs.
LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "threads=1"]
TIMING = ("step_time_s", "fit_time_s", "train/generation_s")


@dataclass
class Cluster:
    folder: Path
    env: dict[str, str]

    def records(self) -> list[dict[str, str]]:
        """SLURM's job completion records (its `jobcomp/filetxt` file: a line per ended job and per
        requeue), as key=value fields, with `job` the id submitit uses (`<array job>_<task>`)."""
        path = self.folder / "log" / "jobcomp.log"
        lines = path.read_text().splitlines() if path.exists() else []
        records = [dict(field.split("=", 1) for field in line.split() if "=" in field) for line in lines]
        for r in records:
            r["job"] = f"{r['ArrayJobId']}_{r['ArrayTaskId']}" if "ArrayJobId" in r else r["JobId"]
        return records

    def job(self, job: str) -> dict[str, str]:
        """`scontrol show job` of a job still known to the controller (MinJobAge: a minute after it ends)."""
        shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, env=self.env,
                               timeout=60)
        assert shown.returncode == 0, shown.stderr
        return dict(field.split("=", 1) for field in shown.stdout.split() if "=" in field)

    def processes(self) -> list[str]:
        """Processes still running for this cluster (daemons, job steps), from /proc (a bare
        container may have no `ps`)."""
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # ended meanwhile
                continue
            if str(self.folder) in args and "cluster.sh" not in args:
                found.append(args)
        return found


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    up = subprocess.run(["bash", str(CLUSTER_SCRIPT), "up", str(folder)], capture_output=True, text=True, timeout=900)
    if up.returncode == 3:  # no root, no apt-get, or the install failed: the script says which
        reason = f"no SLURM cluster on this machine: {up.stderr.strip().splitlines()[-1]}"
        if os.environ.get("KDLIGHT_REQUIRE_SLURM"):  # CI: a tier that silently skips would pass
            pytest.fail(reason)
        pytest.skip(reason)
    assert up.returncode == 0, up.stderr[-3000:]
    env = dict(os.environ)
    for line in up.stdout.splitlines():  # export NAME=VALUE lines, as `eval "$(cluster.sh up DIR)"` reads them
        name, value = line.removeprefix("export ").split("=", 1)
        env[name] = value.replace("$PATH", os.environ["PATH"])
    cluster = Cluster(folder, env)
    cpus = re.search(r"^NodeName=.* CPUs=(\d+)", (folder / "slurm.conf").read_text(), re.MULTILINE).group(1)
    assert 1 <= int(cpus) <= os.cpu_count()  # the machine's CPUs, as slurmd measures them
    sinfo = subprocess.run(["sinfo", "-h", "-N", "-o", "%t %c"], capture_output=True, text=True, env=env, timeout=60)
    assert sinfo.stdout.split() == ["idle", cpus], sinfo.stdout + sinfo.stderr
    yield cluster
    down = subprocess.run(["bash", str(CLUSTER_SCRIPT), "down", str(folder)], capture_output=True, text=True,
                          timeout=300)
    assert down.returncode == 0, down.stderr[-3000:]
    assert cluster.processes() == []  # nothing left running


def sweep(cluster: Cluster, folder: Path, overrides: list[str], cache: Path, fails: bool = False,
          timeout: int = 900) -> subprocess.CompletedProcess:
    """`kdlight-train -m ... hydra/launcher=slurm` into `folder`, as a user submits it."""
    if not any(o.startswith("hydra.launcher.timeout_min=") for o in overrides):
        overrides = [*overrides, "hydra.launcher.timeout_min=10"]
    command = [sys.executable, "-m", "kdlight.cli.train", "-m", *LAUNCHER, *overrides, f"hydra.sweep.dir={folder}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**cluster.env, "KDLIGHT_CACHE": str(cache)})
    assert (done.returncode != 0) == fails, (done.stdout + done.stderr)[-4000:]
    return done


def slurm_jobs(folder: Path) -> dict[str, Path]:
    """The SLURM job ids of a sweep (submitit's folders: `<array job>_<task>`, or the job's own id when
    the sweep has one job) -> the job's log folder."""
    return {p.name: p for p in (folder / ".submitit").iterdir()
            # not an array's own folder, which holds only its submission
            if re.fullmatch(r"\d+(_\d+)?", p.name) and (p / f"{p.name}_0_log.out").exists()}


def final_states(cluster: Cluster, jobs) -> dict[str, str]:
    """Each job's last recorded SLURM state (the completion file is written as jobs end)."""
    deadline = time.monotonic() + 60
    while True:
        states = {r["job"]: r["JobState"] for r in cluster.records() if r["job"] in jobs}
        if len(states) == len(jobs) or time.monotonic() > deadline:
            return states
        time.sleep(1)


def test_a_two_job_sweep_runs_as_slurm_jobs_and_is_reported(slurm, tmp_path):
    folder = tmp_path / "sweep"
    sweep(slurm, folder, ["debug=fdr", "method=sft,fkd"], tmp_path / "cache")
    runs = {json.loads(p.read_text())["method"]: p.parent for p in folder.glob("*/metrics.json")}
    assert set(runs) == {"sft", "fkd"}
    jobs = slurm_jobs(folder)
    assert len(jobs) == 2 and final_states(slurm, jobs) == dict.fromkeys(jobs, "COMPLETED")
    for job, logs in jobs.items():  # each ran as its SLURM job, the task of the array that submitit names
        assert f"JobEnvironment(job_id={job}, hostname=" in (logs / f"{job}_0_log.out").read_text()
        assert list(logs.glob(f"{job}_0_result.pkl"))
    report = subprocess.run([sys.executable, "-m", "kdlight.cli.report", str(folder)], capture_output=True,
                            text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    table = (folder / "report.md").read_text()
    assert re.search(r"^\| sft \|", table, re.MULTILINE) and re.search(r"^\| fkd \|", table, re.MULTILINE)


def test_a_failed_job_does_not_stop_the_other_and_its_error_is_in_its_folder(slurm, tmp_path):
    folder = tmp_path / "sweep"
    # A negative learning rate fails at the first step (AdamW refuses it), inside the SLURM job.
    done = sweep(slurm, folder, ["debug=fdr", "method=sft", "optimizer.lr=-1,1e-3"], tmp_path / "cache", fails=True)
    (finished,) = [p.parent for p in folder.glob("*/metrics.json")]
    (failed,) = [p.parent for p in folder.glob("*/error.txt")]
    assert "optimizer.lr=0.001" in finished.name and "optimizer.lr=-1" in failed.name
    assert "Invalid learning rate" in (failed / "error.txt").read_text()
    assert "1 job(s) of the sweep failed" in done.stdout + done.stderr
    jobs = slurm_jobs(folder)
    assert len(jobs) == 2 and set(final_states(slurm, jobs).values()) == {"COMPLETED"}  # the jobs themselves ended


def test_resources_follow_the_trainer_devices(slurm, tmp_path):
    """trainer.devices=2 (two DDP processes on CPU): one node, two tasks of one CPU each, as
    conf/hydra/launcher/slurm.yaml promises; the run trains on both ranks."""
    folder = tmp_path / "sweep"
    # Batches of 8 per rank: 64 examples make 4 global batches (DDP uses only complete ones).
    sweep(slurm, folder, ["debug=fdr", "method=sft", "data.batch_size=8", "trainer.devices=2", "trainer.strategy=ddp"],
          tmp_path / "cache")
    (job,) = slurm_jobs(folder)
    assert final_states(slurm, [job]) == {job: "COMPLETED"}
    allocation = slurm.job(job)
    assert (allocation["NumNodes"], allocation["NumTasks"], allocation["CPUs/Task"], allocation["NumCPUs"]) == \
        ("1", "2", "1", "2")
    submission = next((folder / ".submitit" / job).glob("*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in submission and "#SBATCH --cpus-per-task=1" in submission
    assert "--gpus-per-node" not in submission and "--gres" not in submission  # a CPU trainer asks for no GPU
    logs = (folder / ".submitit" / job / f"{job}_1_log.err").read_text()  # SLURM's task 1
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in logs  # is the run's rank 1
    assert json.loads(next(folder.glob("*/metrics.json")).read_text())["steps"] == 2


# A short run; its first attempt under SLURM waits at step HOLD (just checkpointed) until the
# one-minute time limit's signal ends it, whatever the machine's speed; the requeued attempt resumes.
STEPS, HOLD = 400, 200
REQUEUED_RUN = ["method=sft", "data.limit_train=64", "data.batch_size=8", "data.limit_eval=8",
                f"trainer.max_steps={STEPS}", "trainer.val_check_interval=300", "checkpoint_every_n_steps=25",
                "loop.warmup_steps=2", "data.decoding.max_new_tokens=16", "trainer.log_every_n_steps=50"]
HELD = ["+callbacks.hold._target_=tests.helpers.HoldUntilRequeued", f"+callbacks.hold.step={HOLD}"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """REQUEUED_RUN's metrics from a run that nobody stopped (locally, without SLURM)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    env = {**os.environ, "KDLIGHT_CACHE": str(folder / "cache")}
    whole = subprocess.run([sys.executable, "-m", "kdlight.cli.train", *REQUEUED_RUN, "threads=1",
                            f"hydra.run.dir={folder / 'run'}"], capture_output=True, text=True, env=env, timeout=900,
                           cwd=REPO)
    assert whole.returncode == 0, whole.stderr[-3000:]
    return json.loads((folder / "run" / "metrics.json").read_text())


def assert_resumed_to(run: Path, expected: dict) -> None:
    """The run in `run` ended as the uninterrupted one: the same metrics but timings, all steps."""
    assert not (run / "error.txt").exists()  # a stopped attempt is not a failure
    got = json.loads((run / "metrics.json").read_text())
    assert got["steps"] == expected["steps"] == STEPS
    assert {k: v for k, v in got.items() if k not in TIMING} == {k: v for k, v in expected.items() if k not in TIMING}
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert last["global_step"] == STEPS


def test_a_job_past_its_time_limit_is_requeued_by_the_launcher_and_resumes_to_the_uninterrupted_result(
        slurm, tmp_path, uninterrupted):
    """SLURM signals the job before its one-minute limit (`signal_delay_s`), the launcher
    (`requeue_owner=launcher`, the default; `max_num_timeout`) requeues it, and the new attempt
    resumes from checkpoints/last.ckpt in the same folder: the run ends with exactly the metrics of
    a run that was never stopped."""
    folder = tmp_path / "sweep"
    sweep(slurm, folder, [*REQUEUED_RUN, *HELD, "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=5",
                          "hydra.launcher.max_num_timeout=3"], tmp_path / "cache", timeout=1500)
    (job,) = slurm_jobs(folder)
    states = [r["JobState"] for r in slurm.records() if r["job"] == job]
    assert len(states) >= 2 and states[-1] == "COMPLETED", states  # requeued at least once, then done
    logs = "".join(p.read_text() for p in (folder / ".submitit" / job).glob("*_log.*"))
    assert "this job is timed-out" in logs and "Requeued job" in logs  # by the launcher
    assert "Restoring states from the checkpoint path" in logs  # the requeued attempt resumed
    (run,) = [p.parent for p in folder.glob("*/metrics.json")]
    assert_resumed_to(run, uninterrupted)


def test_plain_sbatch_with_lightning_as_the_requeue_owner_resumes_to_the_uninterrupted_result(
        slurm, tmp_path, uninterrupted):
    """`requeue_owner=lightning` for a plain sbatch script: Lightning's SLURMEnvironment catches
    the signal, requeues the job itself, and the re-run resumes in the same folder."""
    run = tmp_path / "run"
    settings = " ".join([*REQUEUED_RUN, *HELD, "threads=1", "requeue_owner=lightning", f"hydra.run.dir={run}"])
    script = tmp_path / "job.sh"
    script.write_text(f"""#!/bin/bash
#SBATCH --time=1 --signal=USR1@5 --requeue --ntasks=1 --cpus-per-task=1 --mem=2G
#SBATCH --open-mode=append --output={tmp_path}/slurm-%j.out --chdir={REPO}
srun {sys.executable} -m kdlight.cli.train {settings}
""")
    env = {**slurm.env, "KDLIGHT_CACHE": str(tmp_path / "cache")}
    submitted = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, env=env,
                               timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        states = [r["JobState"] for r in slurm.records() if r["job"] == job]
        if states and states[-1] != "PENDING":
            break
        time.sleep(5)
    output = (tmp_path / f"slurm-{job}.out").read_text()
    assert len(states) >= 2 and states[-1] == "COMPLETED", (states, output[-3000:])  # requeued, then done
    assert "requeing job" in output.lower() or "requeuing job" in output.lower(), output[-3000:]  # by Lightning
    assert_resumed_to(run, uninterrupted)
