"""DDP on CPU (gloo): two processes give the same loss normalisation and update as one process."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from kdlight.data.module import _collate
from kdlight.losses import ReverseKL
from kdlight.methods import GoldSequences, Method
from kdlight.training.module import DistillationModule, LoopOptions
from tests.helpers import fit_spawned, tiny_model, toy_batches


def examples(tokenizer, n=8):
    batch = toy_batches(tokenizer, n=n)[0]
    return [(batch.prompt_ids[i][batch.prompt_mask[i].bool()].tolist(),
             batch.target_ids[i][batch.target_mask[i].bool()].tolist(), i) for i in range(n)]


class TeacherPlacementCheck(L.Callback):
    """Runs inside every worker: is the teacher really sharded (1/world of its parameters here)?"""

    def __init__(self, sharded: bool):
        self.sharded = sharded

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        teacher = module.teacher
        assert teacher.sharded == self.sharded
        local = sum(getattr(p, "to_local", lambda p=p: p)().numel() for p in teacher.model.parameters())
        full = sum(p.numel() for p in teacher.model.parameters())
        assert (local < full) == self.sharded and all(not p.requires_grad for p in teacher.model.parameters())


def one_step(tokenizer, tmp_path, devices: int, placement: str = "replicate"):
    torch.manual_seed(0)
    method = Method("rkd", GoldSequences(), ReverseKL(), ce_weight=1.0)
    module = DistillationModule(tiny_model(tokenizer, seed=0), method, tokenizer, len(tokenizer),
                                partial(torch.optim.SGD, lr=0.5),
                                LoopOptions(grad_clip=None, warmup_steps=1, min_lr_ratio=1.0,
                                            teacher_placement=placement),
                                tiny_model(tokenizer, seed=1, pad_multiple=64))
    start = {n: p.detach().clone() for n, p in module.student.named_parameters()}
    loader = DataLoader(examples(tokenizer), batch_size=8 // devices, shuffle=False,
                        collate_fn=partial(_collate, pad_id=tokenizer.pad_token_id))
    def make_trainer() -> L.Trainer:
        return L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                         max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=tmp_path, log_every_n_steps=1,
                         callbacks=[TeacherPlacementCheck(sharded=placement == "shard" and devices > 1)])

    trainer = fit_spawned(make_trainer, module, train_dataloaders=loader)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    update = {n: p.detach() - start[n] for n, p in module.student.named_parameters()}
    return update, float(trainer.callback_metrics["train/loss"])  # rank 0's, from the spawned process


@pytest.fixture
def file_system_sharing():
    """Spawned workers receive the module through torch's shared memory; the default
    file-descriptor strategy failed here ("unable to resize file"), file_system works."""
    previous = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    yield
    torch.multiprocessing.set_sharing_strategy(previous)


@pytest.mark.parametrize("placement", ["replicate", "shard"])
def test_two_process_ddp_matches_one_process_and_its_checkpoint_reloads(tokenizer, tmp_path, file_system_sharing,
                                                                         placement):
    single, single_loss = one_step(tokenizer, tmp_path / "one", devices=1)
    ddp, ddp_loss = one_step(tokenizer, tmp_path / "ddp", devices=2, placement=placement)  # 4 examples per rank
    assert ddp_loss == pytest.approx(single_loss, rel=1e-5)  # loss normalised by the global token count
    assert any(d.abs().max() > 0 for d in single.values())
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-7)
    state = torch.load(tmp_path / "ddp" / "last.ckpt", weights_only=False)["state_dict"]
    assert state and all(k.startswith("student.") for k in state)
    reloaded = tiny_model(tokenizer, seed=5)  # on one process
    reloaded.load_state_dict({k.removeprefix("student."): v for k, v in state.items()})
    torch.testing.assert_close(dict(reloaded.named_parameters())["model.norm.weight"],
                               state["student.model.norm.weight"])


def test_epoch_sampler_shards_global_batches_and_resumes():
    from torchdata.stateful_dataloader import StatefulDataLoader

    from kdlight.data.sampler import EpochSampler, epoch_order

    def batches(sampler: EpochSampler) -> list[list[int]]:
        return [b.tolist() for b in StatefulDataLoader(list(range(21)), sampler=sampler, batch_size=4)]

    def at(epoch: int) -> EpochSampler:
        sampler = EpochSampler(21, 4, seed=3)
        sampler.start_at(epoch)
        return sampler

    ranks = [EpochSampler(21, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for sampler in ranks:
        sampler.start_at(1)
    a, b = batches(ranks[0]), batches(ranks[1])
    assert [len(x) for x in (a, b)] == [2, 2]  # 21 examples, global batch 8: only complete ones
    order = epoch_order(21, 3, 1)
    assert a[0] + b[0] + a[1] + b[1] == order[:16]  # rank r takes its slice of each global batch
    single = at(1)
    full = batches(single)
    assert [len(x) for x in full] == [4, 4, 4, 4, 4, 1] and sum(full, []) == order
    assert batches(single) == batches(at(2)) != full  # each pass is the next epoch, a new order
    # Interrupted after 2 batches, the loader's state (what Lightning checkpoints) resumes at the third.
    loader = StatefulDataLoader(list(range(21)), sampler=at(1), batch_size=4)
    it = iter(loader)
    assert [next(it).tolist() for _ in range(2)] == full[:2]
    state = loader.state_dict()
    resumed = StatefulDataLoader(list(range(21)), sampler=EpochSampler(21, 4, seed=3), batch_size=4)
    resumed.load_state_dict(state)
    assert [x.tolist() for x in resumed] == full[2:]
    assert [x.tolist() for x in resumed] == batches(at(2))  # then the next epoch, from its beginning
    # Saved after the last batch of epoch 1: the restored loader starts epoch 2, never an empty
    # epoch nor epoch 1 again, and then goes on to epoch 3, whatever epoch a training loop thinks it is in.
    finished = StatefulDataLoader(list(range(21)), sampler=at(1), batch_size=4)
    it = iter(finished)
    assert [next(it).tolist() for _ in range(6)] == full
    restored = StatefulDataLoader(list(range(21)), sampler=EpochSampler(21, 4, seed=3), batch_size=4)
    restored.load_state_dict(finished.state_dict())
    assert [x.tolist() for x in restored] == batches(at(2))
    assert [x.tolist() for x in restored] == batches(at(3))


@pytest.mark.parametrize("placement", ["replicate", "shard"])
def test_ddp_ranks_share_the_teacher_output_generation(sqlgen_root, tokenizer, tmp_path, file_system_sharing,
                                                       placement):
    """Each rank decodes its share of the prompts (equal shares with a sharded teacher, whose
    forward is collective); rank 0 caches the union, which equals what one process decodes."""
    import json

    from kdlight.data.module import DataSpec, TaskDataModule
    from kdlight.methods.base import PrepareContext
    from kdlight.methods.teacher_outputs import TeacherOutputs
    from kdlight.models import Decoding
    from kdlight.tasks.text2sql import PromptParts, SpiderSource, Text2SQLTask
    from kdlight.training.teacher import LiveTeacher

    n = 11  # odd, so the shares differ by one prompt
    task = Text2SQLTask(SpiderSource(str(sqlgen_root)), PromptParts(sample_values=False))
    dm = TaskDataModule(DataSpec(task, batch_size=2, max_prompt_tokens=64, limit_train=n, limit_eval=2), "sqlgen")
    dm.connect(tokenizer)
    dm.setup()
    teacher = tiny_model(tokenizer, seed=1)
    source = TeacherOutputs(str(tmp_path / "ddp"), Decoding(max_new_tokens=6), batch_size=3)
    method = Method("seqkd", source, None, ce_weight=1.0, kd_weight=0.0, ce_on="sequences")
    module = DistillationModule(tiny_model(tokenizer, seed=0), method, tokenizer, len(tokenizer),
                                partial(torch.optim.SGD, lr=0.1),
                                LoopOptions(warmup_steps=1, teacher_placement=placement),
                                teacher)
    fit_spawned(lambda: L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=1, logger=False,
                                  enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                                  use_distributed_sampler=False, default_root_dir=tmp_path),
                module, datamodule=dm)
    lines = next((tmp_path / "ddp" / "teacher_outputs").glob("*.jsonl")).read_text().splitlines()[1:]
    cached = {json.loads(line)["prompt"]: json.loads(line)["outputs"][0]["ids"] for line in lines}
    alone = TeacherOutputs(str(tmp_path / "one"), Decoding(max_new_tokens=6), batch_size=3)
    prompts = dm.train_prompts()
    alone.prepare(PrepareContext(prompts, LiveTeacher(tiny_model(tokenizer, seed=1)), tokenizer, len(tokenizer)))
    assert [cached[p.text] for p in prompts] == alone.lookup(list(range(n))) and len(cached) == n


def test_ddp_ranks_score_each_sequence_for_the_teacher_cache_once(sqlgen_root, tokenizer, tmp_path,
                                                                 file_system_sharing):
    """Two ranks score their shares of an epoch, then read each other's shards: every training
    sequence is scored by exactly one rank (the shares change from epoch to epoch, so a rank that
    judged "new" by its own sequences alone scored the other's again), and the cache holds what
    one process computes."""
    from kdlight.data.module import DataSpec, TaskDataModule
    from kdlight.losses import ForwardKL
    from kdlight.tasks.text2sql import PromptParts, SpiderSource, Text2SQLTask
    from kdlight.training.teacher import LiveTeacher
    from kdlight.training.teacher_cache import CachedSparseTeacher, TopKStore, batch_keys

    n = 12  # whole global batches of 2 x 2: every epoch's shares cover the training set
    task = Text2SQLTask(SpiderSource(str(sqlgen_root)), PromptParts(sample_values=False))
    dm = TaskDataModule(DataSpec(task, batch_size=2, max_prompt_tokens=64, limit_train=n, limit_eval=2), "sqlgen")
    dm.connect(tokenizer)
    dm.setup()
    sequences = {k for batch in dm.train_dataloader() for k in batch_keys(batch)}
    assert len(sequences) == n

    def cached(folder):
        return CachedSparseTeacher(LiveTeacher(tiny_model(tokenizer, seed=1)), 8, len(tokenizer), str(folder))

    teacher = cached(tmp_path / "ddp")
    method = Method("fkd", GoldSequences(), ForwardKL(), ce_weight=1.0, kd_weight=1.0)
    module = DistillationModule(tiny_model(tokenizer, seed=0), method, tokenizer, len(tokenizer),
                                partial(torch.optim.SGD, lr=0.1), LoopOptions(warmup_steps=1), teacher)
    fit_spawned(lambda: L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=1, logger=False,
                                  enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                                  use_distributed_sampler=False, default_root_dir=tmp_path),
                module, datamodule=dm)
    shards = sorted(teacher.folder.glob("shard-*.pt"))
    scored = [key for path in shards for key in torch.load(path, weights_only=True)["sequences"]]
    assert len(shards) >= 2 and len(scored) == len(set(scored))  # both ranks scored, nothing twice
    assert set(scored) == sequences

    alone = cached(tmp_path / "one")
    alone.prepare(method, lambda epoch: iter(dm.train_dataloader()), lambda obj: [obj])
    both = TopKStore(teacher.folder, teacher.store.key)
    both.load()
    assert both.entries.keys() == alone.store.entries.keys()
    for key, (ids, log_probs) in alone.store.entries.items():
        assert torch.equal(both.entries[key][0], ids)
        torch.testing.assert_close(both.entries[key][1], log_probs)
