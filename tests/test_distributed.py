"""``dcgan train-distributed``: Ray Train + DDP on 2 CPU workers.

Every run joins the suite's own Ray head (``ray_head`` in conftest: free ports, private temp
dir, stopped by its process group) with ``--address``; no test here starts Ray on its
default ports or stops Ray processes it did not start."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import yaml

from dcgan import layout
from dcgan.checkpoint import load_state
from dcgan.config import TrainConfig
from dcgan.data import load_mnist, to_model_range
from dcgan.diagnostics import balance_score, window_stats
from dcgan.generation import load_generator, sample
from dcgan.layout import STATS_FILE
from dcgan.step import STEP_VALUES
from dcgan.trainer import Trainer

from .conftest import (
    background,
    finish,
    free_port,
    one_line_error,
    ray_node,
    run_before_ray,
    run_cli,
    sets,
    wait_for_text,
)
from .test_monitoring import dashboard_queries, have, prom_api, prometheus_server, scrape

pytestmark = pytest.mark.slow

SMALL = {"train_subset": 640, "batch_size": 32, "epochs": 2, "log_every": 5, "sample_every": 10,
         "eval_samples": 200, "rescore_samples": 300, "checkpoint_every": 1}


def dist_args(out, data_dir, address: str, **overrides):
    return ["train-distributed", "--out", str(out), "--workers", "2", "--use-gpu", "false",
            "--address", address, *sets({**SMALL, "data_dir": data_dir, **overrides})]


def by_rank(port: int, name: str) -> dict[str, float]:
    """rank -> value of one metric at a local metrics endpoint."""
    return {dict(labels)["rank"]: value
            for (metric, labels), value in scrape(f"http://127.0.0.1:{port}/metrics").items()
            if metric == name}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, data_dir, ray_head):
    """One 2-worker run with its metrics endpoint, watched while it trains: the ranks seen at
    the endpoint and, where Prometheus is installed, what every dashboard query returned
    from a real Prometheus scraping it (docs/monitoring.md)."""
    root = tmp_path_factory.mktemp("dist")
    out, port, log = root / "run", free_port(), root / "run.log"
    prometheus = have("prometheus")
    seen: dict[str, dict] = {}
    answered: dict[str, list] = {}
    queries = dashboard_queries("run")
    with (prometheus_server(root, [f"127.0.0.1:{port}"]) if prometheus
          else contextlib.nullcontext()) as prom, \
            background([*dist_args(out, data_dir, ray_head.address), "--metrics-port",
                        str(port), "--use-gpu", "auto"], log, env=ray_head.env) as proc:
        while proc.poll() is None:  # the run is bounded by its steps
            time.sleep(1)
            try:
                for (name, labels), value in scrape(f"http://127.0.0.1:{port}/metrics").items():
                    if name == "dcgan_steps_total" and value > 0:
                        seen[dict(labels)["rank"]] = dict(labels)
            except OSError:  # not serving yet, or already gone
                pass
            for query in queries if prom else []:
                result = prom_api(prom, "/api/v1/query", query=query)["result"]
                if result and query not in answered:
                    answered[query] = result
        code, text = finish(proc, log)
    return SimpleNamespace(out=out, code=code, log=text, seen=seen, answered=answered,
                           queries=queries, prometheus=prometheus)


def test_two_workers_end_to_end(two_workers, tmp_path, data_dir, ray_head):
    """Artifacts, every rank's metrics at the one endpoint, the other commands on the run,
    and a rerun that resumes."""
    run, out = two_workers, two_workers.out
    assert run.code == 0, run.log[-3000:]
    assert set(run.seen) == {"0", "1"}, run.log[-3000:]  # both ranks' series at one endpoint
    assert all(s["mode"] == "distributed" and s["run"] == "run" for s in run.seen.values())
    assert "SyncBatchNorm off (CPU workers" in run.log
    # --use-gpu auto asks the cluster (a CPU-only one here), not the driver's machine.
    assert "--use-gpu auto: the Ray cluster reports 0 GPU(s): CPU workers" in run.log
    for name in (layout.GENERATOR_FINAL, layout.DISCRIMINATOR_FINAL, STATS_FILE,
                 layout.FINAL_SAMPLES, layout.ANALYSIS_FILE,
                 layout.DIAGNOSTICS_FILE, layout.EVAL_FILE,
                 "dcgan_generator_epoch_1.pth", "dcgan_samples_epoch_0_batch_10.png",
                 layout.TIMING_FILE, layout.WORKERS_FILE, layout.RAY_STORAGE_DIR,
                 layout.BEST_SAMPLES):
        assert (out / name).exists(), name
    # The layout names all of it (what --overwrite would remove).
    ours = set(layout.run_artifacts(out))
    assert [p.name for p in out.iterdir() if p not in ours and p.name != layout.LOCK_FILE] == []
    stats = pq.read_table(out / STATS_FILE).to_pydict()
    # 640 images, 320 per rank, 16 per worker-batch: 20 steps per epoch, 40 in all.
    assert stats["step"] == list(range(40))
    # Rank means of per-rank accuracies over 16 images are multiples of 1/32; a single rank's
    # own accuracies are multiples of 1/16, so odd multiples of 1/32 prove the averaging.
    accs = np.array(stats["d_real_acc"] + stats["d_fake_acc"]) * 32
    assert np.allclose(accs, np.round(accs), atol=1e-4)
    assert (np.round(accs) % 2 == 1).any(), "accuracies look like one rank's, not the mean"

    # analyze: the report over the run's own rows, figure and JSON written again.
    for name in (layout.ANALYSIS_FILE, layout.DIAGNOSTICS_FILE):
        (out / name).unlink()
    analyze = run_cli(["analyze", "--out", str(out)])
    assert analyze.returncode == 0, analyze.stderr
    assert "Final Stats (last 40 iterations):" in analyze.stdout
    assert "Status Assessment:" in analyze.stdout
    assert (out / layout.ANALYSIS_FILE).stat().st_size > 50_000
    info = json.loads((out / layout.DIAGNOSTICS_FILE).read_text())
    assert info["iterations"] == 40
    assert info["balance_score"] == pytest.approx(balance_score(window_stats(stats)))

    # sample: the grid and the raw images of the run's final generator, seed for seed.
    png, raw = tmp_path / "s.png", tmp_path / "s.npy"
    proc = run_cli(["sample", "--generator", str(out / layout.GENERATOR_FINAL),
                    "--image", str(png), "--n", "16", "--nrow", "4", "--noise-seed", "5",
                    "--save-tensor", str(raw)])
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    assert Image.open(png).size == (4 * 30 + 2, 4 * 30 + 2)
    expected = sample(load_generator(out / layout.GENERATOR_FINAL), 16, 5).numpy()
    assert np.array_equal(np.load(raw), expected)

    # Without --resume the finished run is refused, untouched; with it, the run continues
    # from its last checkpoint, and the change (epochs 2 -> 3) is recorded from that step.
    refused = run_cli([*dist_args(out, data_dir, ray_head.address, epochs=3)],
                      env=ray_head.env, timeout=120)
    assert refused.returncode == 2
    assert "already holds a run; pass --resume" in one_line_error(refused)
    again = run_cli([*dist_args(out, data_dir, ray_head.address, epochs=3, eval_every=0,
                                sample_every=0), "--name", "run", "--resume"],
                    env=ray_head.env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Restored from the checkpoint at step 40" in again.stdout + again.stderr
    assert pq.read_table(out / STATS_FILE).to_pydict()["step"] == list(range(60))
    history = json.loads((out / layout.CONFIG_CHANGES).read_text())
    assert history[0]["from_step"] == 40
    assert history[0]["changes"]["epochs"] == [2, 3]
    assert TrainConfig(**yaml.safe_load((out / layout.CONFIG_FILE).read_text())).epochs == 3


@pytest.mark.prometheus
def test_dashboard_queries_in_distributed_mode(two_workers):
    """Every dashboard query returns data from a real Prometheus scraping a distributed run's
    one endpoint, and the per-rank panels show both ranks."""
    if not two_workers.prometheus:
        pytest.skip("prometheus is not installed (make prometheus)")
    missing = [q for q in two_workers.queries if q not in two_workers.answered]
    assert not missing, f"no data for: {missing}\n{two_workers.log[-2000:]}"
    per_rank = [q for q in two_workers.queries if "rank" in q and "rate(" in q]
    assert per_rank
    for query in per_rank:
        ranks = {r["metric"].get("rank") for r in two_workers.answered[query]}
        assert ranks == {"0", "1"}, (query, two_workers.answered[query])
    losses = [r for q, rs in two_workers.answered.items() if q.startswith("dcgan_d_loss")
              for r in rs]
    assert {r["metric"]["rank"] for r in losses} == {"0", "1"}
    assert all(r["metric"]["mode"] == "distributed" for r in losses)


# -- one DDP step against the averaged-gradient reference -----------------------------------


@pytest.fixture(scope="module")
def one_step(tmp_path_factory, data_dir, ray_head):
    out = tmp_path_factory.mktemp("ddp") / "run"
    overrides = {"batch_size": 64, "dropout": 0.0, "max_steps": 1, "eval_every": 0,
                 "sample_every": 0, "checkpoint_every": 0}
    proc = run_cli(dist_args(out, data_dir, ray_head.address, **overrides), env=ray_head.env,
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Ray gives each worker OMP_NUM_THREADS=1; the same here keeps reduction orders alike.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = _reference_step(data_dir, overrides)
    finally:
        torch.set_num_threads(threads)
    (state,) = sorted((out / "ray" / "run").glob("checkpoint_*/state.pt"))  # the final one
    return SimpleNamespace(out=out, ref=reference, state=load_state(state))


def _buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.named_buffers()}


def _put_buffers(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    for k, v in module.named_buffers():
        v.copy_(saved[k])


def _reference_step(data_dir, overrides) -> SimpleNamespace:
    """One process runs both ranks' halves: each update uses the mean of the two halves'
    gradients (what DDP must compute); BatchNorm buffers are rank 0's (CPU workers keep
    per-rank statistics): the forwards of rank 1's half are undone on the buffers."""
    cfg = TrainConfig(**{**SMALL, **overrides, "data_dir": data_dir, "batch_size": 32,
                         "device": "cpu"})
    images = to_model_range(load_mnist(data_dir, subset=cfg.train_subset)[0])
    cpu = torch.device("cpu")
    ref = Trainer(cfg, images, cpu, rank=0, world_size=2)
    halves = []
    for rank in (0, 1):
        shard = Trainer(cfg, images, cpu, rank=rank, world_size=2)
        real = next(shard.sampler.epoch(0))
        z = torch.randn(32, cfg.latent_dim, generator=shard.noise_gen)
        halves.append((real, z))
    g, d = ref.generator, ref.discriminator
    s = cfg.label_smoothing
    real_t, fake_t = torch.full((32,), 1 - s), torch.full((32,), s)
    fakes = []
    for rank, (_, z) in enumerate(halves):
        fakes.append(g(z))
        if rank == 0:
            g_buffers = _buffers(g)
    values = [[], []]  # per rank: STEP_VALUES
    ref.opt_d.zero_grad()
    for rank, ((real, _), fake) in enumerate(zip(halves, fakes, strict=True)):
        real_logits, fake_logits = d(real), d(fake.detach())
        loss = (F.binary_cross_entropy_with_logits(real_logits, real_t)
                + F.binary_cross_entropy_with_logits(fake_logits, fake_t)) / 2
        (loss / 2).backward()  # the mean of the two ranks' gradients
        values[rank] += [loss.item(), None, (real_logits > 0).float().mean().item(),
                         (fake_logits < 0).float().mean().item(),
                         torch.sigmoid(real_logits).mean().item(),
                         torch.sigmoid(fake_logits).mean().item()]
        if rank == 0:
            d_buffers = _buffers(d)
    _put_buffers(d, d_buffers)
    grads = {"discriminator": [p.grad.clone() for p in d.parameters()]}
    ref.opt_d.step()
    d.requires_grad_(False)
    ref.opt_g.zero_grad()
    for rank, fake in enumerate(fakes):
        loss = F.binary_cross_entropy_with_logits(d(fake), real_t)
        (loss / 2).backward()
        values[rank][1] = loss.item()
        if rank == 0:
            d_buffers = _buffers(d)
    _put_buffers(d, d_buffers)  # (after the backward passes, which read the buffers)
    _put_buffers(g, g_buffers)
    grads["generator"] = [p.grad.clone() for p in g.parameters()]
    ref.opt_g.step()
    d.requires_grad_(True)
    return SimpleNamespace(modules={"generator": g, "discriminator": d}, grads=grads,
                           values=values, beta1=cfg.beta1)


@pytest.mark.parametrize("name", ["generator", "discriminator"])
def test_one_ddp_step_averages_gradients(one_step, name):
    """2 workers x 32 images, one step, dropout 0: Adam's first moment after one step is
    (1 - beta1) x the gradient, so the checkpointed optimizer state shows the gradient each
    rank applied: the mean of the two halves' gradients (a sum, or any other divisor, fails;
    Adam's first step itself, ~lr x sign(grad), could not tell)."""
    opt = one_step.state["opt_g" if name == "generator" else "opt_d"]
    expected = one_step.ref.grads[name]
    assert len(opt["state"]) == len(expected)
    for i, grad in enumerate(expected):
        got = opt["state"][i]["exp_avg"] / (1 - one_step.ref.beta1)
        assert torch.allclose(got, grad, rtol=1e-3, atol=1e-7), \
            f"{name} parameter {i}: max |diff| {(got - grad).abs().max():.3g}"


@pytest.mark.parametrize("name", ["generator", "discriminator"])
def test_one_ddp_step_weights_and_batchnorm_buffers(one_step, name):
    """Rank 0's final weights: the reference's parameters after the averaged update, and
    BatchNorm running statistics of rank 0's own half (per-rank statistics on CPUs)."""
    got = torch.load(one_step.out / f"dcgan_{name}_final.pth", weights_only=True)
    module = one_step.ref.modules[name]
    for key, value in module.named_parameters():
        assert torch.allclose(got[key], value, atol=1e-5), f"{name}.{key}"
    buffers = dict(module.named_buffers())
    assert buffers
    for key, value in buffers.items():
        assert torch.allclose(got[key].float(), value.float(), rtol=1e-4, atol=1e-6), \
            f"{name}.{key}"


def test_one_ddp_step_logs_the_mean_over_ranks(one_step):
    """Every logged value (losses, accuracies, probabilities) is the mean over ranks, as in
    local mode; the two halves differ, so rank 0's own values would not pass."""
    row = pq.read_table(one_step.out / STATS_FILE).to_pydict()
    r0, r1 = one_step.ref.values
    assert any(abs(a - b) > 1e-3 for a, b in zip(r0, r1, strict=True))
    for key, a, b in zip(STEP_VALUES, r0, r1, strict=True):
        assert row[key][0] == pytest.approx((a + b) / 2, abs=1e-5), key


# -- a worker killed mid-run -------------------------------------------------------------------


def test_worker_killed_after_a_checkpoint_restarts_and_finishes(tmp_path, data_dir, ray_head):
    """Also: the metrics endpoint outlives the worker group, and the restarted workers'
    counters continue where the killed ones stopped (never reset)."""
    out, port, log = tmp_path / "run", free_port(), tmp_path / "run.log"
    args = [*dist_args(out, data_dir, ray_head.address, epochs=4, eval_every=0,
                       sample_every=0), "--metrics-port", str(port)]
    log_every = SMALL["log_every"]
    with background(args, log, env=ray_head.env) as proc:
        # A few steps after the first checkpoint (Ray registers it asynchronously).
        text = wait_for_text(log, "[Epoch 1] [Batch 10/20]", proc)
        line = next(x for x in text.splitlines() if "[Epoch 1] [Batch 10/20]" in x)
        before = by_rank(port, "dcgan_steps_total")
        killed = int(re.search(r"pid=(\d+)", line).group(1))
        os.kill(killed, signal.SIGKILL)
        # Epoch 2 is only ever trained by the restarted group.
        wait_for_text(log, "[Epoch 2] [Batch 10/20]", proc)
        scraped = scrape(f"http://127.0.0.1:{port}/metrics")  # the same endpoint
        code, text = finish(proc, log)
    assert code == 0, text[-3000:]
    assert "Restored from the checkpoint at step 20" in text
    stats = pq.read_table(out / STATS_FILE).to_pydict()
    assert stats["step"] == list(range(80))  # the requested number of steps, no gaps
    assert "finished" in text and "at step 80" in text

    steps = {dict(lb)["rank"]: v for (n, lb), v in scraped.items() if n == "dcgan_steps_total"}
    epoch = {dict(lb)["rank"]: v for (n, lb), v in scraped.items() if n == "dcgan_epoch"}
    assert set(before) == set(steps) == {"0", "1"}, (before, steps)
    for rank in steps:
        assert before[rank] > 2 * log_every, before  # counted before the kill
        restarted = round(epoch[rank] * 20) - 20  # steps of the new group (resumed at 20)
        assert restarted > 0
        # Everything counted before the kill is still counted, plus the new group's steps
        # (less at most one update a scrape may catch half applied). A reset counter holds
        # only the new group's steps.
        assert steps[rank] >= before[rank] + restarted - log_every, (rank, before, steps, epoch)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, code, needle", [
    (["--workers", "0"], 2, "--workers: must be >= 1"),
    (["--workers", "3"], 2, "does not divide evenly over 3 workers"),
    (["--address", "127.0.0.1:9"], 1, "cannot reach the Ray cluster at 127.0.0.1:9"),
    (["--storage", "/proc/dcgan-storage"], 1, "is not writable"),
])
def test_bad_input_fails_before_ray_with_one_line(tmp_path, data_dir, ray_head, extra, code,
                                                   needle):
    """Bad input is one line and a status, from checks that run before Ray is imported."""
    args = dist_args(tmp_path / "run", data_dir, ray_head.address)
    flag, value = extra
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += extra
    proc = run_before_ray(args, env=ray_head.env, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert needle in one_line_error(proc)
    assert not (tmp_path / "run" / "ray").exists()


# -- the WGAN-GP penalty's double backward through a DDP-wrapped critic -------------------------


def _critic_update(rank: int, world: int, port: int, halves, init, out) -> None:
    """One critic-only step of ``gan_step`` (loss wgan-gp) on ``halves[rank]``, the critic
    wrapped in DDP over gloo the way ``dcgan_cluster.worker`` wraps it."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from dcgan.losses import WGANGPLoss
    from dcgan.models import Discriminator, Generator
    from dcgan.step import GANParts, gan_step

    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
    try:
        torch.set_num_threads(1)
        g, d = Generator(), Discriminator(dropout=0.0, norm="layer")
        g.load_state_dict(init["g"])
        d.load_state_dict(init["d"])
        critic = DistributedDataParallel(d, forward_sync_buffers=False) if world > 1 else d
        opt_d = torch.optim.SGD(d.parameters(), lr=0.1)
        parts = GANParts(g, critic, torch.optim.SGD(g.parameters(), lr=0.1), opt_d,
                         loss=WGANGPLoss(10.0), d_for_g=d, update_g=False)
        real, z, seed = halves[rank]
        torch.manual_seed(seed)  # the penalty's interpolation draws
        gan_step(parts, real, z)
        if rank == 0:
            torch.save({k: v.detach().clone() for k, v in d.state_dict().items()}, out)
    finally:
        if world > 1:
            dist.destroy_process_group()


def test_wgan_gp_penalty_double_backward_under_ddp(tmp_path):
    """2 gloo ranks, one critic step each on its half: the critic's update is the mean of
    the halves' gradients, penalty included (its create_graph backward runs through DDP).
    The reference applies that mean by hand in one process."""
    import torch.multiprocessing as mp

    from dcgan.losses import WGANGPLoss
    from dcgan.models import Discriminator, Generator

    torch.manual_seed(0)
    g, d = Generator(), Discriminator(dropout=0.0, norm="layer")
    init = {"g": g.state_dict(), "d": d.state_dict()}
    halves = [(torch.rand(8, 1, 28, 28) * 2 - 1, torch.randn(8, 100), 10 + r) for r in (0, 1)]
    got = tmp_path / "ddp.pt"
    mp.spawn(_critic_update, args=(2, free_port(), halves, init, str(got)), nprocs=2, join=True)

    loss, grads = WGANGPLoss(10.0), []
    for real, z, seed in halves:
        d.zero_grad()
        with torch.no_grad():
            fake = g(z)
        torch.manual_seed(seed)
        total = loss.d_loss(d(real), d(fake)) + loss.penalty(d, real, fake)
        total.backward()
        grads.append({k: p.grad.clone() for k, p in d.named_parameters()})
    ddp = torch.load(got, weights_only=True)
    for key, _ in d.named_parameters():
        mean = (grads[0][key] + grads[1][key]) / 2
        expected = init["d"][key] - 0.1 * mean
        assert torch.allclose(ddp[key], expected, atol=1e-5), \
            f"{key}: max |diff| {(ddp[key] - expected).abs().max():.3g}"
    # The halves differ, so rank 0's own gradient (no all-reduce) would not pass.
    assert not torch.allclose(grads[0]["features.0.weight"], grads[1]["features.0.weight"])


@pytest.mark.parametrize("loss", ["hinge", "wgan-gp"])
def test_each_loss_trains_distributed(tmp_path, data_dir, ray_head, loss):
    """``dcgan train-distributed`` with the loss: DDP over gloo on 2 workers, the run's
    record names the loss and its diagnostics judge by it."""
    out = tmp_path / "run"
    extra = {"critic_steps": 2} if loss == "wgan-gp" else {}
    proc = run_cli(dist_args(out, data_dir, ray_head.address, loss=loss, max_steps=6,
                             epochs=1, eval_every=0, sample_every=0, checkpoint_every=0,
                             **extra), env=ray_head.env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = pq.read_table(out / STATS_FILE).to_pydict()
    assert stats["step"] == list(range(6))
    diag = json.loads((out / layout.DIAGNOSTICS_FILE).read_text())
    assert diag["loss"] == loss
    assert TrainConfig(**load_state(sorted((out / "ray" / "run").glob(
        "checkpoint_*/state.pt"))[-1])["config"]).loss == loss


def test_resume_with_a_locked_key_changed_is_refused_before_ray(tmp_path, data_dir, ray_head):
    """--resume takes the run's saved config.yaml (the global batch); a locked key changed on
    the command line is refused in one line, before Ray is imported, the run untouched."""
    out = tmp_path / "run"
    out.mkdir()
    saved = TrainConfig(**{**SMALL, "data_dir": data_dir})
    (out / layout.CONFIG_FILE).write_text(yaml.safe_dump(saved.to_dict(), sort_keys=False))
    before = (out / layout.CONFIG_FILE).read_bytes()
    proc = run_before_ray([*dist_args(out, data_dir, ray_head.address, seed=7), "--resume"],
                          env=ray_head.env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "was trained with seed=42; it cannot be resumed with seed=7" in one_line_error(proc)
    assert (out / layout.CONFIG_FILE).read_bytes() == before
    fresh = run_before_ray(dist_args(out, data_dir, ray_head.address), env=ray_head.env,
                           timeout=120)
    assert fresh.returncode == 2 and "pass --resume" in one_line_error(fresh)


def test_use_gpu_auto_asks_the_cluster_not_the_driver(tmp_path, ray_head):
    """A CPU machine driving a cluster whose node reports a GPU (a fake one: Ray's --num-gpus
    is a logical resource) decides on GPU workers; the suite's CPU-only head, on CPU ones."""
    probe = ("import ray, sys; from dcgan.config import TrainConfig; "
             "from dcgan_cluster.preflight import decide_gpu; "
             "ray.init(address=sys.argv[1], log_to_driver=False); "
             "print(decide_gpu(None, TrainConfig()))")
    with ray_node(tmp_path / "gpu-head.log", ray_head.env, num_cpus=1,
                  extra=("--num-gpus=1",)) as gpu_head:
        answers = {}
        for name, node in (("gpu", gpu_head), ("cpu", ray_head)):
            proc = subprocess.run([sys.executable, "-c", probe, node.address], env=node.env,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-2000:]
            answers[name] = proc.stdout
    assert "reports 1 GPU(s): GPU workers" in answers["gpu"]
    assert answers["gpu"].strip().endswith("True")
    assert "reports 0 GPU(s): CPU workers" in answers["cpu"]
    assert answers["cpu"].strip().endswith("False")
