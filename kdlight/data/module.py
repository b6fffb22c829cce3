"""The one data module: any task's examples -> tokenised, batched, resumable loaders.

What it does for every task family alike:
- loads the task's splits (train, unlabeled, eval) and each evaluation-only benchmark's eval split,
  applying the limits, and asks each scorer to check its set before any training (a benchmark that
  cannot be scored fails here, not after training);
- tokenises prompts (BOS first; an over-long prompt loses its start, which keeps the question at
  the end) and targets (EOS last; cut to the maximum), counting and logging every cut;
- serves the training loader (labeled examples; with `gold_pairs_and_inputs` each distinct labeled
  input once more without a target; then unlabeled inputs when the method can use them) in a
  seeded per-epoch order, sharded by rank and resumable mid-epoch
  (`kdlight.data.sampler`), and one evaluation loader per evaluation set;
- gives sources that precompute targets every training prompt (`train_prompts`).

The tokenizer is bound late (`connect`), because a trained tokenizer needs the training text first.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import lightning as L
import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from kdlight.data.batch import Batch, collate
from kdlight.data.example import Example
from kdlight.data.sampler import EpochSampler
from kdlight.models.decoding import Decoding
from kdlight.tasks.base import Task

log = logging.getLogger(__name__)
# torchdata 0.11 calls a deprecated torch function on every loader; nothing a user can act on.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)

Encoded = tuple[list[int], list[int] | None, int]  # prompt ids, target ids (None: unlabeled), index


@dataclass(frozen=True)
class DataSpec:
    """A task and how it is fed to the models.

    Attributes:
        task: where the examples come from and what scores them.
        decoding: how predictions are decoded for evaluation.
        batch_size: training examples per optimisation step (per device).
        eval_batch_size: examples per evaluation batch (teacher-forced loss and decoding).
        max_prompt_tokens: longer prompts lose their start (counted and logged).
        max_target_tokens: longer targets are cut, EOS kept (counted and logged).
        limit_train: use the first N training examples (None: all).
        limit_unlabeled: use the first N unlabeled inputs (None: all).
        limit_eval: evaluate on the first N examples of every evaluation set (None: all).
        num_workers: DataLoader worker processes.
        validation_targets: what validation teacher-forces on: `gold` (the validation split's
            targets) or `teacher` (the teacher's outputs for its inputs: the no-label setting, where
            only the test split has gold, so model selection must not see it).
    """

    task: Task
    decoding: Decoding = field(default_factory=Decoding)
    batch_size: int = 32
    eval_batch_size: int = 64
    max_prompt_tokens: int = 512
    max_target_tokens: int = 128
    limit_train: int | None = None
    limit_unlabeled: int | None = None
    limit_eval: int | None = None
    num_workers: int = 0
    validation_targets: str = "gold"

    def __post_init__(self) -> None:
        if self.validation_targets not in ("gold", "teacher"):
            raise ValueError(f"data.validation_targets must be 'gold' or 'teacher', got '{self.validation_targets}'")


@dataclass
class EvalSet:
    """One evaluation set: the run's own eval split or an evaluation-only benchmark.

    Attributes:
        name: its name in tables (the data name, or the benchmark's).
        prefix: its metrics' prefix (`eval` for the run's own split, else the benchmark's name).
        task: the task it comes from (and its scorer).
        examples: the examples, in order (batch index = position here).
        notes: what a reader of its scores must know (from the scorer's check).
    """

    name: str
    prefix: str
    task: Task
    examples: list[Example]
    notes: list[str] = field(default_factory=list)
    encoded: list[Encoded] = field(default_factory=list, repr=False)

    @property
    def predictions_file(self) -> str:
        return "predictions.jsonl" if self.prefix == "eval" else f"predictions_{self.prefix}.jsonl"


@dataclass(frozen=True)
class PromptItem:
    """A training prompt, for sources that write targets before training (teacher outputs).

    Attributes:
        index: the example's index in the training items (what batches carry).
        id: the example's id.
        text: the prompt text.
        ids: the prompt's token ids, as the models see them.
        labeled: whether the example has a gold target.
    """

    index: int
    id: str
    text: str
    ids: list[int]
    labeled: bool


class TaskDataModule(L.LightningDataModule):
    """Batches of any task for any model (causal and seq2seq LMs read the same `Batch`).

    Args:
        spec: the task and its loader settings.
        name: the data's name in tables and logs (e.g. `sqlgen`).
        benchmarks: evaluation-only tasks scored after training, by name.
        seed: the training order, shared by every method so comparisons are fair.
        use_unlabeled: train on the task's unlabeled inputs too (for methods whose sequences do
            not need a gold target).
        use_train: load the training split (False: evaluation only).
        gold_pairs_and_inputs: list every labeled example as its gold pair, and each distinct labeled
            input once more without target, for a source that writes one (pseudo-target training).
    """

    def __init__(self, spec: DataSpec, name: str = "data", benchmarks: Mapping[str, Task] | None = None,
                 seed: int = 0, use_unlabeled: bool = False, use_train: bool = True,
                 gold_pairs_and_inputs: bool = False):
        super().__init__()
        self.spec, self.name, self.seed = spec, name, seed
        self.use_unlabeled, self.use_train = use_unlabeled, use_train
        self.gold_pairs_and_inputs = gold_pairs_and_inputs
        self.benchmarks = dict(benchmarks or {})
        if clashes := [b for b in self.benchmarks if b in ("eval", name)]:
            raise ValueError(f"benchmark names {clashes} clash with the run's own evaluation split ('eval', '{name}'): "
                             "name them otherwise (+benchmark@benchmarks.<name>=...)")
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.train_examples: list[Example] = []
        self.unlabeled_examples: list[Example] = []
        self.eval_sets: list[EvalSet] = []
        self.validation_set: EvalSet | None = None  # None: the run's own eval split
        self._train: list[Encoded] = []
        self._loaded = self._encoded = False

    # --- loading ---------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        with _named(f"data '{self.name}'", "data.task"):
            self.spec.task.prepare()
        for name, task in self.benchmarks.items():
            with _named(f"benchmark '{name}'", f"benchmarks.{name}.source"):
                task.prepare()

    def load(self) -> None:
        """Read every split and check every evaluation set (idempotent; before any training)."""
        if self._loaded:
            return
        self.prepare_data()
        spec = self.spec
        with _named(f"data '{self.name}'", "data.task"):
            if self.use_train:
                self.train_examples = spec.task.load("train")[: spec.limit_train]
            if self.use_unlabeled:
                self.unlabeled_examples = spec.task.load("unlabeled")[: spec.limit_unlabeled]
        self.eval_sets = [self._eval_set(self.name, "eval", spec.task)]
        self.eval_sets += [self._eval_set(name, name, task) for name, task in self.benchmarks.items()]
        with _named(f"data '{self.name}' (validation split)", "data.task"):
            validation = spec.task.validation()
        if validation is not None:
            self.validation_set = EvalSet(f"{self.name} (validation)", "val", spec.task, validation[: spec.limit_eval])
        if self.unlabeled_examples or self.gold_pairs_and_inputs:
            log.info(f"{self.name}: training on {len(self.train_examples)} labeled examples"
                     + (" (each also as an input)" if self.gold_pairs_and_inputs else "")
                     + f" and {len(self.unlabeled_examples)} unlabeled inputs")
        self._loaded = True

    def _eval_set(self, name: str, prefix: str, task: Task) -> EvalSet:
        what = f"benchmark '{name}'" if prefix != "eval" else f"data '{name}' (evaluation split)"
        with _named(what, f"benchmarks.{name}.source" if prefix != "eval" else "data.task", task):
            examples = task.load("eval")[: self.spec.limit_eval]
            if not examples:
                raise ValueError(f"nothing to evaluate: no evaluation examples "
                                 f"(data.limit_eval={self.spec.limit_eval})")
            notes = task.scorer().check(examples, name)
        for note in notes:
            log.warning(note)
        return EvalSet(name, prefix, task, examples, notes)

    def training_texts(self) -> Iterator[str]:
        """Text a tokenizer is trained on: every training prompt and target."""
        self.load()
        for example in self.train_examples + self.unlabeled_examples:  # not the input copies of training_items
            yield example.prompt
            if example.target is not None:
                yield example.target

    # --- tokenisation ----------------------------------------------------------------------------
    def connect(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def setup(self, stage: str | None = None) -> None:
        if self._encoded:
            return
        if self.tokenizer is None:
            raise RuntimeError("TaskDataModule.connect(tokenizer) must be called before setup()")
        self.load()
        self._train = self._encode("train", self.training_items())
        for eval_set in self.eval_sets + ([self.validation_set] if self.validation_set else []):
            eval_set.encoded = self._encode(eval_set.name, eval_set.examples)
        self._encoded = True

    def validation_prompts(self) -> list[PromptItem]:
        """The validation inputs, for a teacher to write their targets (`validation_targets: teacher`)."""
        self.setup()
        validation = self._own_validation()
        return [PromptItem(i, e.id, e.prompt, p, t is not None) for (p, t, i), e in
                zip(validation.encoded, validation.examples)]

    def set_validation_targets(self, targets: Mapping[int, list[int]]) -> None:
        """Validate on these targets (by validation index; as generated, cut to max_target_tokens)
        instead of the gold ones."""
        validation, cut = self._own_validation(), self.spec.max_target_tokens
        validation.encoded = [(p, list(targets[i][:cut]), i) for p, _, i in validation.encoded]

    def _own_validation(self) -> EvalSet:
        if self.validation_set is None:
            raise ValueError(f"data '{self.name}': validation on the teacher's outputs needs a validation split apart "
                             "from the evaluation split (whose inputs would otherwise choose the model): set one, e.g. "
                             "data.task.dev_split=valid for NLG tasks")
        return self.validation_set

    def _encode(self, name: str, examples: list[Example]) -> list[Encoded]:
        if not examples:
            return []
        tok, spec = self.tokenizer, self.spec
        prompts, cut_p = encode_prompts(tok, [e.prompt for e in examples], spec.max_prompt_tokens)
        labeled = [e.target for e in examples if e.target is not None]
        targets = iter(tok(labeled, add_special_tokens=False)["input_ids"] if labeled else [])
        targets = [next(targets) if e.target is not None else None for e in examples]
        cut_t = sum(t is not None and len(t) + 1 > spec.max_target_tokens for t in targets)
        if cut_p or cut_t:
            log.warning(f"{name}: {cut_p} of {len(examples)} prompts cut to {spec.max_prompt_tokens} tokens (their "
                        f"start dropped), {cut_t} targets cut to {spec.max_target_tokens} tokens")
        return [(p, None if t is None else target_ids(t, spec.max_target_tokens, tok.eos_token_id), i)
                for i, (p, t) in enumerate(zip(prompts, targets))]

    def training_items(self) -> list[Example]:
        """The training items, in the order batches index them: labeled examples, their distinct inputs
        again without targets (`gold_pairs_and_inputs`), unlabeled inputs."""
        inputs: dict[str, Example] = {}
        if self.gold_pairs_and_inputs:  # each distinct input once, however many references it has
            for e in self.train_examples:
                inputs.setdefault(e.prompt, Example(e.id, e.prompt, None, e.group, e.meta))
        return self.train_examples + list(inputs.values()) + self.unlabeled_examples

    def train_prompts(self) -> list[PromptItem]:
        """Every training prompt (labeled and unlabeled), as the training batches index them."""
        self.setup()
        examples = self.training_items()
        return [PromptItem(i, e.id, e.prompt, p, t is not None) for (p, t, i), e in zip(self._train, examples)]

    # --- loaders ---------------------------------------------------------------------------------
    def _collate(self):
        return partial(_collate, pad_id=self.tokenizer.pad_token_id)

    def train_dataloader(self) -> StatefulDataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = EpochSampler(len(self._train), self.spec.batch_size, self.seed, rank, world)
        if sampler.num_batches() == 0:
            raise ValueError(f"data '{self.name}': nothing to train on: {len(self._train)} training examples make no "
                             f"batch of {self.spec.batch_size} per rank on {world} ranks (data.limit_train, "
                             "data.batch_size)")
        return StatefulDataLoader(self._train, sampler=sampler, batch_size=self.spec.batch_size, drop_last=False,
                                  num_workers=self.spec.num_workers, collate_fn=self._collate(),
                                  generator=_own_generator(self.seed))

    def eval_loader(self, eval_set: EvalSet) -> DataLoader:
        """Every rank sees every example of the set; rank 0 scores them."""
        return DataLoader(eval_set.encoded, batch_size=self.spec.eval_batch_size, shuffle=False,
                          num_workers=self.spec.num_workers, collate_fn=self._collate(),
                          generator=_own_generator(self.seed))

    def val_dataloader(self) -> DataLoader:
        """The validation split (the task's, else the run's own evaluation split), teacher-forced
        (held-out CE and KL)."""
        return self.eval_loader(self.validation_set or self.eval_sets[0])


@contextmanager
def _named(what: str, settings: str, task: Task | None = None) -> Iterator[None]:
    """Data errors say which data set or benchmark they concern and where it is configured."""
    try:
        yield
    except (FileNotFoundError, KeyError, ValueError) as error:
        where = f" [{task.describe()}]" if task is not None and not isinstance(error, FileNotFoundError) else ""
        why = error.args[0] if isinstance(error, KeyError) and error.args else error  # KeyError quotes its text
        message = f"{what}: {why}{where} (settings: {settings}; shared copies: KDLIGHT_DATA)"
        # A missing file stays a FileNotFoundError; every other data error is a ValueError (whatever
        # type the loader raised, e.g. a KeyError for a missing field, or a UnicodeDecodeError).
        raise (FileNotFoundError(message) if isinstance(error, FileNotFoundError) else ValueError(message)) from error


def _own_generator(seed: int) -> torch.Generator:
    """A loader's own random numbers: PyTorch draws a seed for worker processes each time an
    iterator starts, from torch's global generator unless given one, and a resumed run starts
    iterators at other times than an uninterrupted one: the global draws of a method (student
    sampling) would shift."""
    return torch.Generator().manual_seed(seed)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_tokens: int) -> tuple[list[list[int]], int]:
    """Prompts' token ids as the models see them (BOS first, if the tokenizer has one; an over-long
    prompt loses its start, which keeps a question at the end), and how many were cut."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    room = max_tokens - len(bos)
    return [bos + p[len(p) - room:] if len(p) > room else bos + p for p in ids], sum(len(p) > room for p in ids)


def target_ids(ids: list[int], max_tokens: int, eos_id: int) -> list[int]:
    """A target's token ids as training sees them: cut to `max_tokens` with EOS last."""
    return ids[: max_tokens - 1] + [eos_id]


def _collate(items: list[Encoded], pad_id: int) -> Batch:
    prompts, targets, index = zip(*items)
    return collate(list(prompts), list(targets), list(index), pad_id)
