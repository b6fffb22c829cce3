"""The shared loop: frozen teacher, checkpoints, exact loss normalisation, both architectures."""

from __future__ import annotations

import copy
import csv
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from kdlight.losses import (ForwardKL, GeneralizedJSD, JensenShannon, ReverseKL, SkewForwardKL, SkewReverseKL,
                            TotalVariation)
from kdlight.methods import GoldSequences, Method
from kdlight.models import Decoding, generate, target_logits
from kdlight.training.callbacks import LossProgressBar
from kdlight.training.module import DistillationModule, LoopOptions
from kdlight.training.objective import micro_batch_loss
from tests.helpers import cpu_trainer, loader, tiny_model, toy_batches

NO_CLIP = LoopOptions(grad_clip=None, warmup_steps=1, min_lr_ratio=1.0)
GREEDY_6 = Decoding(max_new_tokens=6)


def rkd(ce_weight: float = 1.0) -> Method:
    return Method("rkd", GoldSequences(), ReverseKL(), ce_weight=ce_weight)


def make_module(tokenizer, method, options=NO_CLIP, teacher=True, family="llama"):
    student = tiny_model(tokenizer, family, seed=0)
    teacher_model = tiny_model(tokenizer, family, seed=1, pad_multiple=64) if teacher else None
    optimizer = partial(torch.optim.SGD, lr=0.5)
    return DistillationModule(student, method, tokenizer, len(tokenizer), optimizer, options, teacher_model)


def test_teacher_is_frozen_outside_optimiser_hparams_and_checkpoint(tokenizer, tmp_path):
    module = make_module(tokenizer, rkd())
    teacher_before = copy.deepcopy(module.teacher.model.state_dict())
    student_before = copy.deepcopy(module.student.state_dict())
    trainer = cpu_trainer(tmp_path, max_steps=3)
    trainer.fit(module, train_dataloaders=loader(toy_batches(tokenizer)))

    teacher = module.teacher.model
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(tensor, teacher_before[name]), name
    assert any(not torch.equal(t, student_before[n]) for n, t in module.student.state_dict().items())
    optimised = {id(p) for group in module.optimizers().optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.student.parameters()}
    assert not optimised & {id(p) for p in teacher.parameters()}
    assert "teacher" not in str(dict(module.hparams))

    path = tmp_path / "step3.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert state and all(key.startswith("student.") for key in state)


def test_checkpoint_reloads_with_identical_predictions(tokenizer, tmp_path):
    module = make_module(tokenizer, rkd())
    trainer = cpu_trainer(tmp_path, max_steps=4)
    batches = toy_batches(tokenizer)
    trainer.fit(module, train_dataloaders=loader(batches))
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    fresh = make_module(tokenizer, rkd())  # different (untrained) student weights
    batch = batches[0]
    ids = (tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer))
    before = generate(fresh.student.eval(), batch, GREEDY_6, *ids)
    fresh.load_state_dict(torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"])
    expected = generate(module.student.eval(), batch, GREEDY_6, *ids)
    reloaded = generate(fresh.student.eval(), batch, GREEDY_6, *ids)
    assert reloaded == expected and before != expected
    torch.testing.assert_close(target_logits(fresh.student, batch), target_logits(module.student, batch))


def one_step_update(tokenizer, tmp_path, method, micro_batch_size, family="llama"):
    options = LoopOptions(micro_batch_size=micro_batch_size, grad_clip=None, warmup_steps=1, min_lr_ratio=1.0)
    module = make_module(tokenizer, method, options, teacher=method.divergence is not None, family=family)
    start = {n: p.detach().clone() for n, p in module.student.named_parameters()}
    trainer = cpu_trainer(tmp_path, max_steps=1)
    trainer.fit(module, train_dataloaders=loader(toy_batches(tokenizer)))
    update = {n: p.detach() - start[n] for n, p in module.student.named_parameters()}
    return update, module.step_metrics["train/loss"]


@pytest.mark.parametrize("family", ["llama", "t5"])
@pytest.mark.parametrize("method", [Method("sft", GoldSequences()), rkd(), Method("fkd", GoldSequences(), ForwardKL())]
                         + [Method(d.name, GoldSequences(), d) for d in (JensenShannon(chunk_size=5), TotalVariation(),
                            SkewForwardKL(), SkewReverseKL(chunk_size=3), GeneralizedJSD(beta=0.3))],
                         ids=lambda m: getattr(m, "name", m))
def test_micro_batches_give_the_same_update_as_one_batch(tokenizer, tmp_path, method, family):
    whole, whole_loss = one_step_update(tokenizer, tmp_path / "a", method, None, family)
    split, split_loss = one_step_update(tokenizer, tmp_path / "b", method, 3, family)  # 8 = 3 + 3 + 2: uneven
    assert split_loss == pytest.approx(whole_loss, rel=1e-5) and whole_loss > 0
    assert any(d.abs().max() > 0 for d in whole.values())
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-7)


def test_loss_terms_are_sums_over_target_tokens(tokenizer):
    """Each term of the loss equals a hand computation in float64 on the whole batch."""
    module = make_module(tokenizer, rkd(ce_weight=0.5))
    batch = toy_batches(tokenizer)[0]
    terms = micro_batch_loss(module.method, module.student, module.teacher, batch, batch, len(tokenizer)).terms
    mask = batch.target_mask.bool()
    s = target_logits(module.student, batch)[mask].double()
    t = target_logits(module.teacher.model, batch, len(tokenizer))[mask].double()
    ce = torch.nn.functional.cross_entropy(s, batch.target_ids[mask], reduction="sum")
    rkl = (s.softmax(-1) * (s.log_softmax(-1) - t.log_softmax(-1))).sum()
    assert set(terms) == {"ce", "kd_rkl"}
    assert float(terms["ce"].total.detach()) == pytest.approx(float(ce.detach()), rel=1e-5)
    assert float(terms["kd_rkl"].total.detach()) == pytest.approx(float(rkl.detach()), rel=1e-4)
    assert (terms["ce"].weight, terms["kd_rkl"].weight) == (0.5, 1.0)


def test_the_step_loss_is_each_term_divided_by_the_global_token_count(tokenizer, tmp_path):
    """What one step logs (and optimises) is sum / number of target tokens, weighted and added."""
    method = rkd(ce_weight=0.5)
    module = make_module(tokenizer, method)
    batch = toy_batches(tokenizer)[0]
    terms = micro_batch_loss(method, module.student, module.teacher, batch, batch, len(tokenizer)).terms  # before the step
    n = float(batch.target_mask.sum())
    cpu_trainer(tmp_path, max_steps=1).fit(module, train_dataloaders=loader([batch]))
    logged = module.step_metrics
    assert float(logged["train/ce"]) == pytest.approx(float(terms["ce"].total.detach()) / n, rel=1e-5)
    assert float(logged["train/kd_rkl"]) == pytest.approx(float(terms["kd_rkl"].total.detach()) / n, rel=1e-5)
    assert float(logged["train/loss"]) == pytest.approx(0.5 * float(logged["train/ce"]) + float(logged["train/kd_rkl"]),
                                                        rel=1e-6)


def test_method_needing_a_teacher_without_one_is_refused(tokenizer):
    with pytest.raises(ValueError, match="method 'rkd' needs a teacher"):
        make_module(tokenizer, rkd(), teacher=False)


def test_method_with_nothing_to_train_is_refused():
    with pytest.raises(ValueError, match="nothing to train"):
        Method("empty", GoldSequences(), None, ce_weight=0.0)


def csv_rows(folder) -> list[dict]:
    path = folder / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fit_logging_every_2_steps(tokenizer, tmp_path, max_steps: int, callbacks: list):
    """An rkd module fitted with a CSV logger writing every 2 steps (2 batches an epoch): (module, trainer, rows)."""
    module = make_module(tokenizer, rkd(ce_weight=0.5))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, log_every_n_steps=2, callbacks=callbacks,
                        logger=CSVLogger(tmp_path, name="", version=""), enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=loader(toy_batches(tokenizer) * 2))
    return module, trainer, csv_rows(tmp_path)


def test_loggers_get_every_metric_on_their_steps_and_the_bar_the_loss_of_each_step(tokenizer, tmp_path):
    """The step's metrics reach Lightning only on the steps its loggers write: the CSV file has one
    row per `log_every_n_steps` with the values of that step; the progress bar shows every step's loss."""

    class EachStep(L.Callback):
        """Where checkpoints are saved: records the step's metrics, the bar's loss, and the last
        step whose row is on disk."""

        def __init__(self):
            self.metrics, self.bar_loss, self.on_disk = [], [], []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.metrics.append(dict(pl_module.step_metrics))
            self.bar_loss.append(bar.get_metrics(trainer, pl_module)["loss"])
            rows = csv_rows(tmp_path)
            self.on_disk.append(int(rows[-1]["step"]) if rows else None)

    bar, each = LossProgressBar(refresh_rate=1), EachStep()
    _, trainer, rows = fit_logging_every_2_steps(tokenizer, tmp_path, 5, [bar, each])
    assert [int(row["step"]) for row in rows] == [1, 3]  # steps 2 and 4 (Lightning counts from 0)
    assert [row["epoch"] for row in rows] == ["0", "1"]  # 2 batches an epoch
    # A checkpoint saved at a logging step (callbacks' on_train_batch_end) has that step's row on disk.
    assert each.on_disk == [None, 1, 1, 3, 3]
    keys = {"train/ce", "train/kd_rkl", "train/loss", "train/lr"}
    assert set(each.metrics[0]) == keys
    for row in rows:
        step = each.metrics[int(row["step"])]
        assert {key: float(row[key]) for key in keys} == pytest.approx(step, rel=1e-6)
    assert each.metrics[1]["train/lr"] == pytest.approx(0.5)  # SGD lr 0.5, warm-up of one step done
    assert len({m["train/loss"] for m in each.metrics}) == 5  # every step's own loss, on the bar too
    assert each.bar_loss == [f"{m['train/loss']:.3g}" for m in each.metrics]
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(each.metrics[3]["train/loss"])


def test_a_run_stopped_by_a_callback_logs_its_last_step(tokenizer, tmp_path):
    """Lightning logs the step at which a callback stops the run (here at step 3, between the
    logging steps 2 and 4): the loop writes that row too."""

    class StopAtThree(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            trainer.should_stop = trainer.global_step == 3

    module, _, rows = fit_logging_every_2_steps(tokenizer, tmp_path, 10, [StopAtThree()])
    assert module.global_step == 3 and [int(row["step"]) for row in rows] == [1, 2]
    assert float(rows[-1]["train/loss"]) == pytest.approx(module.step_metrics["train/loss"])


def test_non_boolean_speed_switches_are_refused():
    with pytest.raises(ValueError, match="loop.fused_head must be true or false, got 'maybe'"):
        LoopOptions(fused_head="maybe")
    with pytest.raises(ValueError, match="decoding compile must be true or false, got 'yes'"):
        Decoding(compile="yes")
