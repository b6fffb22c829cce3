"""The teacher's own outputs as targets (SeqKD; half of f-distill's mixture; pseudo-targets).

SeqKD (Kim & Rush, EMNLP 2016) trains the student on the teacher's decoded outputs instead of the
gold targets. Pseudo-target training (Calderon et al., ACL 2023, "A Systematic Study of Knowledge
Distillation for Natural Language Generation with Pseudo-Target Training") keeps the gold pairs
and adds K teacher outputs (pseudo-targets, PTs) per input, labeled and unlabeled: epoch e trains
on every gold pair and on the (e mod K)-th PT of every input, so each epoch sees other PTs.

Decoding the whole training set costs as much as several epochs of training, and
every student of a sweep that shares the teacher needs the same outputs, so the teacher produces
them once, before the first step: a live teacher decodes them and caches them on disk (keyed by
its checkpoint, the prompts and the decoding settings; `kdlight.training.teacher.LiveTeacher`), a
stored teacher looks them up in its file. Every training input gets one, labeled or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kdlight.data.batch import Batch, pad_targets
from kdlight.methods.base import PrepareContext, SequenceSource, StepContext
from kdlight.models.decoding import Decoding
from kdlight.targets.store import StoredSequence


@dataclass
class TeacherOutputs(SequenceSource):
    """Replace each gold target with the teacher's output for the same prompt: with K outputs per
    prompt (`decoding.num_return_sequences`), epoch e uses the (e mod K)-th.

    Attributes:
        cache_dir: where a live teacher's outputs are kept (`<cache_dir>/teacher_outputs/`);
            None: not cached.
        decoding: how the teacher decodes (SeqKD: beam search, the best beam).
        top_k_logprobs: also keep the teacher's top-k log-probabilities at every position of its
            outputs in the cache (0: none), so the cache can serve later as a stored teacher.
        batch_size: prompts decoded together.
        seed: random seed of sampled decoding (part of the cache key only when sampling).
    """

    cache_dir: str | None = None
    decoding: Decoding = field(default_factory=Decoding)
    top_k_logprobs: int = 0
    batch_size: int = 32
    seed: int = 0
    outputs: dict[int, list[StoredSequence]] | None = field(default=None, repr=False)

    @property
    def needs_teacher(self) -> bool:
        return True

    @property
    def needs_preparation(self) -> bool:
        return True

    @property
    def covers_unlabeled(self) -> bool:
        return True

    @property
    def only_teacher_outputs(self) -> bool:
        return True

    @property
    def fixed_sequences(self) -> bool:
        """The (epoch mod K)-th stored output of each input, and gold pairs kept as they are."""
        return True

    def prepare(self, ctx: PrepareContext) -> None:
        if ctx.teacher is None:
            raise RuntimeError("teacher outputs need a teacher (a model, or a file of its outputs)")
        self.outputs = ctx.teacher.outputs(ctx, self.decoding, self.top_k_logprobs, self.batch_size, self.cache_dir,
                                           self.seed)

    def sequences(self, gold: Batch, ctx: StepContext) -> Batch:
        ids, mask = pad_targets(self.lookup(gold.index.tolist(), ctx.epoch), ctx.tokenizer.pad_token_id)
        return gold.with_targets(ids.to(gold.target_ids.device), mask.to(gold.target_mask.device))

    def lookup(self, indices: list[int], epoch: int = 0) -> list[list[int]]:
        """Each training item's output for `epoch`: its (epoch mod K)-th of K (with one output per
        prompt, always that one: the best beam, or the sample)."""
        if self.outputs is None:
            raise RuntimeError(f"{type(self).__name__}.prepare(...) must run before training (the loop does it at "
                               "fit start)")
        chosen = [self.outputs[i] for i in indices]
        return [outputs[epoch % len(outputs)].ids for outputs in chosen]


@dataclass
class PseudoTargets(TeacherOutputs):
    """Gold pairs as they are, plus the teacher's pseudo-targets for every input (KD4Gen).

    The data module lists each labeled example (its gold pair), each distinct labeled input once more
    without target, and every unlabeled input; this source keeps gold rows and gives each input row its
    (epoch mod K)-th PT. Decodings of the paper: `sampling` (top-p 0.95, T 1.0, the default and
    the paper's winner), `sampling_high` (T 1.5), `beam` (the K best beams); see conf/method/pt.yaml.
    """

    @property
    def keeps_gold_pairs(self) -> bool:
        return True

    def sequences(self, gold: Batch, ctx: StepContext) -> Batch:
        inputs = (~gold.labeled).nonzero().flatten().tolist()
        if not inputs:
            return gold
        targets = gold.targets()
        for row, pt in zip(inputs, self.lookup(gold.index[inputs].tolist(), ctx.epoch)):
            targets[row] = pt
        ids, mask = pad_targets(targets, ctx.tokenizer.pad_token_id)
        return gold.with_targets(ids.to(gold.target_ids.device), mask.to(gold.target_mask.device))
