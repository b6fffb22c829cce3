"""Budgeted, multi-stage, domain-balanced sequence-level distillation on long-tailed data:
BalDistill (Zhou et al., "Multi-Stage Balanced Distillation: Addressing Long-Tail Challenges in
Sequence-Level Knowledge Distillation", Findings of EMNLP 2024) and its baselines, as one loop over
`kdlight.run.train`.

A budget of B teacher-annotated examples is spent over K stages, B/K per stage. Stage i:
1. quotas per domain (`kdlight.selection.quotas`): none (the whole pool competes), naive
   (uniform) or adaptive (natural towards uniform);
2. head domains (pool >= quota): rank what is left of the domain's pool, at random or by IFD of
   the previous stage's student on its own greedy output (`kdlight.selection.ifd`; stage 0:
   random), and take the top quota;
3. tail domains (pool < quota): take all that is left, and fill the rest of the quota with
   examples the teacher synthesises (`tail_fill=synthesize`) or with repeats of the domain's
   examples (`duplicate`); what no domain can fill goes to domains that still have pool, and what
   nobody can use is recorded as unspent;
4. the teacher annotates every selected real example (the gold answer in its prompt); with
   `drop_wrong`, a rationale whose answer is wrong is dropped (and still charged);
5. a fresh student (from the base model) trains on everything selected so far, and is scored.

Baselines are policies on the same loop (conf/policy/): random selection on gold answers or on
rationales, duplicate, active (IFD without quotas), balance (quotas without IFD), and zero-shot
(the base student scored as it is, through `kdlight.run.evaluate`).

Outputs, in the run's folder:
  stages/<i>/selection.json   what stage i bought (written once, atomically; a re-run reads it back)
  stages/<i>/train/           stage i's training run (a re-run resumes it from its checkpoint)
  ledger.json                 the budget ledger, rewritten after every stage (`kdlight.selection.ledger`)
  metrics.json                the final student's scores, head/tail averages and ledger totals
  tokenizer/                  the one tokenizer every stage's student uses (trained on the pool, if
                              the student brings none)
Selections depend only on the seed, the stage and the previous stage's (saved) student, so a run
killed between or inside stages resumes at its stage with the same selections and no double charge.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from kdlight.data.batch import collate
from kdlight.data.example import Example
from kdlight.data.module import encode_prompts
from kdlight.data.tokenizer import TokenizerSpec, has_tokenizer, load_tokenizer, resolve_tokenizer
from kdlight.eval.scorer import Scorer
from kdlight.io import read_json, staging_dir, write_atomic, write_json
from kdlight.models.build import ModelSpec, build_model
from kdlight.models.vocab import ModelVocab, shared_vocab_size
from kdlight.run.evaluate import EvalRun, evaluate
from kdlight.run.spec import Run, RunResult
from kdlight.run.train import train
from kdlight.selection.annotators import Annotator, split_answer_line
from kdlight.selection.ifd import ifd_scores
from kdlight.selection.ledger import SelectedItem, StageSelection, ledger_table, ledger_totals, write_ledger
from kdlight.selection.quotas import QUOTAS, STAGE_INDEXING, apportion, domain_shares, stage_budgets
from kdlight.tasks.base import Task
from kdlight.tasks.longtail.record import LongTailRecord, answer_target, rationale_target

log = logging.getLogger(__name__)

RANKS = ("random", "ifd")
TAIL_FILLS = ("synthesize", "duplicate", "none")
TARGETS = ("rationale", "gold", "none")


@dataclass(frozen=True)
class Policy:
    """How a budget is spent (one YAML per policy in conf/policy/).

    Attributes:
        name: the row label in tables.
        budget: B, examples the teacher may annotate (or gold labels bought) in all.
        stages: K, stages the budget is spread over (B/K each).
        quotas: `none` (the whole pool competes for each stage's budget), `naive` (uniform over
            domains) or `adaptive` (natural towards uniform; `natural` for reference).
        rank: how a domain's (or, without quotas, the pool's) remaining examples are ordered before
            the top ones are taken: `random`, or `ifd` (highest IFD first, scored by the previous
            stage's student; random in stage 0).
        tail_fill: what fills the quota of a domain whose pool ran out: `synthesize` (teacher-written
            examples), `duplicate` (repeats of the domain's examples, free) or `none`.
        targets: what the student learns: `rationale` (the teacher's rationale and answer), `gold`
            (the gold answer line alone, no teacher) or `none` (zero-shot: no training at all).
        drop_wrong: drop rationales whose answer differs from the gold one (still charged).
        stage_indexing: `authors` (w_i = i/K, as the paper's code) or `uniform_last` (w_i = i/(K-1));
            see kdlight.selection.quotas.
        train_every_stage: train and score a student after every stage (a learning curve); False:
            only the stages whose student the next selection needs (IFD) and the last.
        max_rationale_words: keep only a rationale's first words (None: all), so that a length cut
            never removes the answer line.
    """

    name: str
    budget: int = 120
    stages: int = 3
    quotas: str = "adaptive"
    rank: str = "ifd"
    tail_fill: str = "synthesize"
    targets: str = "rationale"
    drop_wrong: bool = False
    stage_indexing: str = "authors"
    train_every_stage: bool = False
    max_rationale_words: int | None = None

    def __post_init__(self) -> None:
        for key, value, allowed in (("quotas", self.quotas, QUOTAS), ("rank", self.rank, RANKS),
                                    ("tail_fill", self.tail_fill, TAIL_FILLS), ("targets", self.targets, TARGETS),
                                    ("stage_indexing", self.stage_indexing, STAGE_INDEXING)):
            if value not in allowed:
                raise ValueError(f"policy.{key} must be one of {allowed}, got '{value}'")
        stage_budgets(self.budget, self.stages)  # checks both
        if self.quotas == "none" and self.tail_fill != "none":
            raise ValueError(f"policy '{self.name}': tail_fill={self.tail_fill} fills per-domain quotas, but quotas=none "
                             "has none (set policy.tail_fill=none, or quotas=naive|adaptive)")
        if self.targets == "gold" and (self.tail_fill == "synthesize" or self.drop_wrong):
            raise ValueError(f"policy '{self.name}': targets=gold trains on gold answers without a teacher, so there is "
                             "no synthesis and nothing to drop (tail_fill=duplicate|none, drop_wrong=false)")

    @property
    def needs_teacher(self) -> bool:
        return self.targets == "rationale" or self.tail_fill == "synthesize"


@dataclass
class BudgetedDistillation:
    """A budgeted distillation run.

    Attributes:
        run: every stage's training run (its data's task is a long-tail task, whose training split
            is the pool; its student is the base each stage starts from; its seed seeds selection).
        policy: how the budget is spent.
        annotator: the teacher (None: a policy that needs none).
    """

    run: Run
    policy: Policy
    annotator: Annotator | None = None


def distill_under_budget(job: BudgetedDistillation, out: str | Path) -> RunResult:
    """Run every stage (resuming a killed run where it stopped); the final student's result."""
    out, run, policy = Path(out), job.run, job.policy
    if run.skip_finished and (out / "metrics.json").exists():
        return RunResult(read_json(out / "metrics.json"), out, out / "model" if policy.targets != "none" else None,
                         reused=True)
    if policy.targets == "none":
        return _zero_shot(job, out)
    if policy.needs_teacher and job.annotator is None:
        raise ValueError(f"policy '{policy.name}' needs a teacher (targets={policy.targets}, tail_fill="
                         f"{policy.tail_fill}): a trained local teacher (teacher.path) or stored outputs (rationales=...)")
    task = run.data.task
    pool = task.records("train")
    if not pool:
        raise ValueError(f"{task.describe()}: the pool (training split) is empty")
    _check_same_settings(job, out)
    run = replace(run, tokenizer=_one_tokenizer(run, task, out))
    selector = _Selector(job, task, pool, out)
    selections: list[StageSelection] = []
    result: RunResult | None = None
    model_dir: Path | None = None
    budgets = stage_budgets(policy.budget, policy.stages)
    for stage, budget in enumerate(budgets):
        path = out / "stages" / str(stage) / "selection.json"
        if path.exists():
            selection = StageSelection.load(path)
            log.info(f"stage {stage}: selection read back from {path} (not bought again)")
        else:
            selection = selector.select(stage, budget, selections, model_dir)
            selection.save(path)
        selections.append(selection)
        write_ledger(out / "ledger.json", selections, _settings(job))
        log.info(f"budget ledger after stage {stage}:\n{ledger_table(selections)}")
        last = stage == len(budgets) - 1
        next_uses_student = policy.rank == "ifd" and not last
        if last or next_uses_student or policy.train_every_stage:
            result = _train_stage(run, task, selections, stage, last, policy.train_every_stage, out)
            model_dir = result.model_dir
    assert result is not None
    _link_final_model(out, result.model_dir)
    for predictions in sorted(result.out.glob("predictions*.jsonl")):  # what paired tests read, as for any run
        write_atomic(out / predictions.name, predictions.read_bytes())
    metrics = {**result.metrics, "label": run.label or policy.name, "policy": policy.name, "budget": policy.budget,
               "stages": policy.stages, "annotator": job.annotator.describe() if job.annotator else None,
               **{f"ledger/{k}": v for k, v in ledger_totals(selections).items()},
               **head_tail(result.metrics, pool, policy.budget, task.scorer())}
    write_json(out / "metrics.json", metrics)
    return RunResult(metrics, out, out / "model")


class _Selector:
    """Chooses, annotates and records one stage's examples."""

    def __init__(self, job: BudgetedDistillation, task: Task, pool: list[LongTailRecord], out: Path):
        self.job, self.policy, self.task, self.out = job, job.policy, task, out
        self.pool = pool
        self.pool_sizes = _count(r.domain for r in pool)

    def select(self, stage: int, budget: int, earlier: Sequence[StageSelection], model_dir: Path | None) -> StageSelection:
        policy, rng = self.policy, random.Random(f"{self.job.run.seed}:{stage}")
        taken = {i.id for s in earlier for i in s.items}
        left = [r for r in self.pool if r.id not in taken]
        by_domain: dict[str, list[LongTailRecord]] = defaultdict(list)
        for record in left:
            by_domain[record.domain].append(record)
        pool_left = {d: len(by_domain.get(d, [])) for d in self.pool_sizes}
        workdir = self.out / "stages" / str(stage)
        scores: dict[str, float] = {}
        if policy.rank == "ifd" and stage > 0:
            # Saved before anything is bought: a stage killed while annotating resumes on the same
            # ranking, whatever a recomputation on other hardware would round to.
            cached = workdir / "ifd.json"
            scores = read_json(cached) if cached.exists() else self._ifd(left, model_dir)
            write_json(cached, scores)
        order = {r.id: k for k, r in enumerate(self._ranked(left, scores, rng))}
        notes: list[str] = []
        if policy.quotas == "none":
            quotas = None
            real = sorted(left, key=lambda r: order[r.id])[:budget]
            synthetic: list[LongTailRecord] = []
            repeats: dict[str, int] = {}
            unspent = budget - len(real)
        else:
            shares = domain_shares(policy.quotas, self.pool_sizes, stage, policy.stages, policy.stage_indexing)
            ties = random.Random(f"{self.job.run.seed}:{stage}:ties").sample(sorted(shares), len(shares))
            quotas = apportion(budget, shares, ties)
            real, synthetic, repeats, unspent = self._fill(quotas, by_domain, order, earlier, workdir, stage, notes)
        items = self._annotate(real, synthetic, scores, workdir)
        duplicates, unfilled = self._duplicates(repeats, items, earlier, stage, notes)
        unspent += unfilled
        if unspent:
            notes.append(f"{unspent} of the stage's {budget} unspent: no pool, teacher or duplicate left to spend it on")
        return StageSelection(stage, budget, quotas, pool_left, items + duplicates, unspent, notes)

    # -- ranking -----------------------------------------------------------------------------
    def _ranked(self, records: list[LongTailRecord], scores: dict[str, float], rng: random.Random) -> list[LongTailRecord]:
        """Random order, then (with IFD scores) highest IFD first, ties in the random order. Copies
        of one input text (a pool may repeat texts) share their IFD score, so a ranking by IFD
        takes every distinct text once before any text twice."""
        shuffled = list(records)
        rng.shuffle(shuffled)
        if scores:
            copy: dict[str, int] = defaultdict(int)
            nth = {}
            for record in shuffled:
                nth[record.id] = copy[record.text]
                copy[record.text] += 1
            shuffled.sort(key=lambda r: (nth[r.id], -scores[r.id]))
        return shuffled

    def _ifd(self, records: list[LongTailRecord], model_dir: Path | None) -> dict[str, float]:
        if model_dir is None:
            raise RuntimeError("IFD ranking needs the previous stage's student, which was not trained")
        data = self.job.run.data
        tokenizer = load_tokenizer(str(model_dir))
        model = build_model(ModelSpec("previous stage", path=str(model_dir)), tokenizer, frozen=True)
        vocab_size = shared_vocab_size(tokenizer, [ModelVocab("student", model)])
        if torch.cuda.is_available() and self.job.run.trainer.get("accelerator") != "cpu":
            model.cuda()
        prompts, _ = encode_prompts(tokenizer, [self.task.example(r).prompt for r in records], data.max_prompt_tokens)
        chunks = [range(i, min(i + data.eval_batch_size, len(prompts))) for i in range(0, len(prompts), data.eval_batch_size)]
        batches = (collate([prompts[i] for i in chunk], [None] * len(chunk), list(chunk), tokenizer.pad_token_id)
                   for chunk in chunks)
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        scores = ifd_scores(model, batches, data.decoding.max_new_tokens, start, tokenizer.eos_token_id,
                            tokenizer.pad_token_id, vocab_size)
        log.info(f"IFD of {len(records)} pool examples by the previous stage's student ({model_dir})")
        return {records[i].id: s for i, s in scores.items()}

    # -- quotas ------------------------------------------------------------------------------
    def _fill(self, quotas: dict[str, int], by_domain: dict[str, list[LongTailRecord]], order: dict[str, int],
              earlier: Sequence[StageSelection], workdir: Path, stage: int, notes: list[str]):
        """Real examples per quota (top of each domain's ranking), the tail filled (synthetic
        examples; the number of repeats per domain, drawn after annotation from what is kept), and
        whatever no domain could fill given to domains that still have pool."""
        policy = self.policy
        ranked = {d: sorted(rs, key=lambda r: order[r.id]) for d, rs in by_domain.items()}
        real: dict[str, list[LongTailRecord]] = {d: ranked.get(d, [])[:q] for d, q in quotas.items()}
        synthetic: list[LongTailRecord] = []
        repeats: dict[str, int] = {}
        used_synthetic = {i.id for s in earlier for i in s.items if i.origin == "synthetic"}
        short = 0
        for domain, quota in sorted(quotas.items()):
            missing = quota - len(real[domain])
            if missing <= 0:
                continue
            got = 0
            if policy.tail_fill == "synthesize":  # a seed per run seed and stage (seed 1's stage 0 is not seed 0's 1)
                new = self.job.annotator.synthesize(domain, missing, used_synthetic, workdir,
                                                    self.job.run.seed * 1000 + stage)
                synthetic += new
                got = len(new)
            elif policy.tail_fill == "duplicate" and (real[domain] or any(
                    i.domain == domain and i.origin != "duplicate" and not i.dropped for s in earlier for i in s.items)):
                repeats[domain] = got = missing
            if got < missing:
                notes.append(f"{domain}: quota {quota}, {len(real[domain])} left in its pool, {got} "
                             f"{policy.tail_fill if policy.tail_fill != 'none' else 'filled'}: "
                             f"{missing - got} passed on to other domains")
            short += missing - got
        # Budget no domain could fill goes to domains that still have pool, in proportion to their
        # quotas (and then to anything left), so no budget is lost while examples remain.
        while short:
            room = {d: len(ranked.get(d, [])) - len(real[d]) for d in quotas}
            open_domains = {d: max(quotas[d], 1) for d, r in room.items() if r > 0}
            if not open_domains:
                break
            extra = apportion(short, open_domains)
            for domain, n in extra.items():
                n = min(n, room[domain])
                real[domain] = ranked[domain][: len(real[domain]) + n]
                short -= n
        return [r for d in sorted(real) for r in real[d]], synthetic, repeats, short

    def _duplicates(self, repeats: dict[str, int], items: list[SelectedItem], earlier: Sequence[StageSelection],
                    stage: int, notes: list[str]) -> tuple[list[SelectedItem], int]:
        """The repeats each domain asked for, of its kept examples (earlier stages' and this
        stage's, dropped ones never), cycling through them in a seeded order; and how many could
        not be made (every example of the domain was dropped)."""
        duplicates, unfilled = [], 0
        for domain, n in sorted(repeats.items()):
            sources = [i for s in earlier for i in s.items if i.domain == domain and i.origin != "duplicate"] + \
                      [i for i in items if i.domain == domain]
            sources = [i for i in sources if not i.dropped]
            if not sources:
                unfilled += n
                notes.append(f"{domain}: every example was dropped, nothing to repeat: {n} unspent")
                continue
            random.Random(f"{self.job.run.seed}:{stage}:{domain}:dup").shuffle(sources)
            copies = sum(1 for s in earlier for i in s.items if i.origin == "duplicate" and i.domain == domain)
            duplicates += [replace(sources[k % len(sources)], id=f"{sources[k % len(sources)].id}#dup{copies + k}",
                                   origin="duplicate", charged=False, ifd=None) for k in range(n)]
        return duplicates, unfilled

    # -- annotation --------------------------------------------------------------------------
    def _annotate(self, real: list[LongTailRecord], synthetic: list[LongTailRecord], scores: dict[str, float],
                  workdir: Path) -> list[SelectedItem]:
        policy, words = self.policy, self.policy.max_rationale_words
        items: list[SelectedItem] = []
        if policy.targets == "rationale":
            annotations = self.job.annotator.annotate(real, workdir)
            for record, note in zip(real, annotations):
                wrong = note.answer != record.answer
                items.append(SelectedItem(record.id, record.domain, "real", record.text, record.answer,
                                          teacher_target(note.rationale, note.answer, words), note.answer,
                                          policy.drop_wrong and wrong, True, scores.get(record.id)))
        else:
            items += [SelectedItem(r.id, r.domain, "real", r.text, r.answer, answer_target(r.answer), None, False, True,
                                   scores.get(r.id)) for r in real]
        for record in synthetic:
            # Written with its rationale and the answer the teacher was asked for (or reached); not
            # verified, as in the paper, unless drop_wrong and its rationale reached another answer.
            # One without any answer cannot be learned from: charged, never trained on.
            reached = record.meta.get("teacher_answer", record.answer) or None
            dropped = not record.answer or (policy.drop_wrong and reached != record.answer)
            items.append(SelectedItem(record.id, record.domain, "synthetic", record.text, record.answer,
                                      teacher_target(split_answer_line(record.rationale or ""), record.answer or None,
                                                     words), reached, dropped))
        return items


# A student trained only for the next stage's IFD is scored on this many evaluation examples (a
# sanity check in its metrics.json, not a result): decoding the whole test split once per stage
# would cost more than the training. `policy.train_every_stage=true` scores every stage fully.
INTERMEDIATE_EVAL = 32


def teacher_target(rationale: str, answer: str | None, max_words: int | None) -> str:
    """The teacher's text as the student learns it: its rationale (its first `max_words` words) and
    its own answer line, right or wrong; no answer line if it reached none."""
    if answer:
        return rationale_target(rationale, answer, max_words)
    words = rationale.split()
    return " ".join(words[:max_words] if max_words is not None else words)


def _train_stage(run: Run, task: Task, selections: Sequence[StageSelection], stage: int, last: bool,
                 every_stage: bool, out: Path) -> RunResult:
    """A fresh student from the base, trained on everything bought so far (dropped items aside),
    scored on the whole evaluation split if it is the last stage's or `every_stage`; only the last
    stage's run logs to the run's logger (one curve per run)."""
    items = [i for s in selections for i in s.items if not i.dropped]
    examples = [task.example(LongTailRecord(i.id, i.text, i.answer, i.domain), target=i.target) for i in items]
    log.info(f"stage {stage}: training a fresh student on {len(examples)} examples")
    scored = last or every_stage
    limit = run.data.limit_eval if scored else min(run.data.limit_eval or INTERMEDIATE_EVAL, INTERMEDIATE_EVAL)
    data = replace(run.data, task=SelectedTask(task, examples), limit_eval=limit)
    stage_run = replace(run, data=data, skip_finished=True, logger=run.logger if last else None)
    return train(stage_run, out / "stages" / str(stage) / "train")


class SelectedTask(Task):
    """A task whose training split is a given list of examples (what a stage bought) and whose
    evaluation and validation are the base task's."""

    def __init__(self, base: Task, examples: list[Example]):
        self.base, self.examples = base, examples

    def load(self, split: str) -> list[Example]:
        self.check_split(split)
        return list(self.examples) if split == "train" else [] if split == "unlabeled" else self.base.load(split)

    def validation(self) -> list[Example] | None:
        return self.base.validation()

    def scorer(self) -> Scorer:
        return self.base.scorer()

    def describe(self) -> str:
        return f"{len(self.examples)} selected examples of {self.base.describe()}"


def head_tail(metrics: dict, pool: Sequence[LongTailRecord], budget: int, scorer: Scorer) -> dict[str, float]:
    """Macro averages over head and tail domains of each table metric of the run's own evaluation.
    Head: a domain whose pool holds at least its uniform share of the whole budget (B/l), so that
    the split depends on the data and the budget only, never on the policy."""
    sizes = _count(r.domain for r in pool)
    head = {d for d, n in sizes.items() if n >= budget / len(sizes)}
    values: dict[str, float] = {}
    for metric in scorer.table_metrics:
        for part, domains in (("head", head), ("tail", set(sizes) - head)):
            found = [metrics[key] for d in domains if (key := f"eval/{metric}/{d.replace('/', '_')}") in metrics]
            if found:
                values[f"eval/{metric}_{part}"] = sum(found) / len(found)
    return values | {"head_domains": sorted(head), "tail_domains": sorted(set(sizes) - head)}


def _zero_shot(job: BudgetedDistillation, out: Path) -> RunResult:
    """The base student scored as it is (`kdlight.run.evaluate`, what kdlight-eval runs)."""
    run = job.run
    result = evaluate(EvalRun(data=run.data, model=run.student, benchmarks=run.benchmarks, tokenizer=run.tokenizer,
                              seed=run.seed, threads=run.threads, data_name=run.data_name,
                              label=run.label or job.policy.name), out)
    metrics = {**result.metrics, "policy": job.policy.name, "budget": 0,
               **head_tail(result.metrics, run.data.task.records("train"), max(job.policy.budget, 1),
                           run.data.task.scorer())}
    write_json(out / "metrics.json", metrics)
    return RunResult(metrics, out, None)


def _one_tokenizer(run: Run, task: Task, out: Path) -> TokenizerSpec:
    """The tokenizer of every stage: the run's, the student's own, or one trained once on the pool's
    prompts and answers (saved in `out/tokenizer`), so stages and policies of a seed share it."""
    if run.tokenizer.path is not None or has_tokenizer(run.student.weights):
        return run.tokenizer
    folder = out / "tokenizer"
    if not has_tokenizer(folder):  # trained once; a resumed run reads it back
        examples = task.load("train")
        with staging_dir(folder) as staging:
            resolve_tokenizer(run.tokenizer, [], [e.prompt for e in examples] + [e.target or "" for e in examples],
                              staging)
    return replace(run.tokenizer, path=str(folder))


def _link_final_model(out: Path, model_dir: Path) -> None:
    """`out/model`: the last stage's saved student, where every run keeps its model (a later run's
    `student.path`, a study's `{stage}/model`); a relative link, not a copy."""
    link = out / "model"
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise FileExistsError(f"{link} exists and is not the link to the last stage's model: remove it")
    link.symlink_to(model_dir.relative_to(out), target_is_directory=True)


def _settings(job: BudgetedDistillation) -> dict:
    return {**asdict(job.policy), "seed": job.run.seed, "data": job.run.data_name,
            "annotator": job.annotator.describe() if job.annotator else None}


def _check_same_settings(job: BudgetedDistillation, out: Path) -> None:
    """A folder whose stages were bought under another policy, budget or seed is not resumed."""
    if not (out / "ledger.json").exists():
        return
    before = read_json(out / "ledger.json")["settings"]
    now = _settings(job)
    keys = [k for k in now if k != "annotator"]
    if differ := [k for k in keys if before.get(k) != now[k]]:
        raise ValueError(f"{out} holds the stages of a run with other settings ("
                         + ", ".join(f"{k}: {before.get(k)!r} there, {now[k]!r} now" for k in differ)
                         + "): resuming would reuse its selections; use another folder (hydra.run.dir=...)")


def _count(domains) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for d in domains:
        counts[d] += 1
    return dict(counts)

