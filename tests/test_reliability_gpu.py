"""GPUs and ranks, checked on the CPU (issue 21 items 3 and 4): what torch reports about CUDA is faked, as
tests/test_training_support.py does for the device choice, so these run anywhere in seconds.

- a torchrun rank takes `cuda:LOCAL_RANK` directly and asks no other device for anything;
- more processes than GPUs on a machine is refused in one line naming `processes`;
- a progress step holds the CUDA RNG of every device and the AMP GradScaler, and restores both;
- only rank 0 writes a progress step, and no step is resumed by other processes than the one that wrote it;
- a constrained PPO run stopped after a progress step resumes to the multiplier and checkpoint of an
  uninterrupted run.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tests.test_training import TINY, tiny  # noqa: E402
from townlet_pipelines.training import distributed, orchestrator  # noqa: E402
from townlet_pipelines.training import device as device_module  # noqa: E402
from townlet_pipelines.training import resume  # noqa: E402
from townlet_pipelines.training.torch_support import TrainingError  # noqa: E402

TORCHRUN = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def one_process(monkeypatch):
    for name in TORCHRUN:
        monkeypatch.delenv(name, raising=False)


def _torchrun(monkeypatch, rank: int, world: int, local_world: int | None = None) -> None:
    """This process as torchrun starts rank `rank` of `world` on one machine."""
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world or world))


def _fake_gpus(monkeypatch, count: int) -> list[int]:
    """torch reports `count` CUDA devices; the list records every device asked for its free memory."""
    asked: list[int] = []

    def mem_get_info(index=None):
        asked.append(index)
        return (8 << 30, 16 << 30)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    return asked


# ------------------------------------------------------------------------------------------- item 3: ranks and GPUs
def test_a_torchrun_rank_takes_its_own_gpu_and_touches_no_other(monkeypatch, tmp_path):
    """Before, a rank's context was built with device "auto", which asked every GPU for its free memory
    (`mem_get_info` opens a CUDA context on each) before the rank moved to its own. The call a training step's
    rank makes (`TownletResource.training_context`, in distributed_step.run_step) now picks cuda:LOCAL_RANK."""
    from townlet_pipelines.pipeline.resources import TownletResource
    from townlet_pipelines.training.tensorboard import ENV

    monkeypatch.setenv(ENV, "0")  # training_context sets it; restored after the test
    asked = _fake_gpus(monkeypatch, 4)
    _torchrun(monkeypatch, rank=1, world=2)
    context = TownletResource(config_path="smoke", artifacts_root=str(tmp_path)).training_context("r1")
    assert context.device.device == torch.device("cuda:1") and context.device.amp
    assert asked == []  # no device was asked anything
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert device_module.select_device("auto") == torch.device("cuda:0") and asked == []
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: the GPU with the most free memory, as before
    assert device_module.select_device("auto") == torch.device("cuda:0") and asked == [0, 1, 2, 3]


def test_more_processes_than_the_machines_gpus_is_refused_in_one_line(monkeypatch, tmp_path):
    """Before, `processes: 2` on a 1-GPU pod (pipes_image unset: torchrun inside the step's pod) sent rank 1 to a
    cuda:1 that does not exist, and nothing refused it. Now every rank refuses before it joins the group, and the
    step fails with the rank's sentence naming the setting."""
    import torch.distributed as dist

    from townlet_pipelines.pipeline import distributed_step

    _fake_gpus(monkeypatch, 1)
    joined = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: joined.append(backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: joined.append(f"cuda:{index}"))
    _torchrun(monkeypatch, rank=1, world=2)
    with pytest.raises(TrainingError) as refused:
        distributed.from_environment("auto")
    told = str(refused.value)
    assert "\n" not in told and told.startswith("processes: 2 training processes on this machine")
    assert "torch reports 1 CUDA device(s)" in told and joined == []
    with pytest.raises(TrainingError, match="^processes: 2 training processes"):
        device_module.select_device("auto")
    assert distributed.from_environment("cpu").backend == "gloo"  # runtime.device: cpu needs no GPU

    # As the training step sees it: the rank's one line beside the record, which the asset fails with.
    record = tmp_path / "bc_stages.json"
    extras = {"record": str(record), "run_id": "r1", "night": None, "kind": "bc", "dataset": str(tmp_path),
              "resource": {"config_path": "smoke", "artifacts_root": str(tmp_path)}}
    with pytest.raises(TrainingError):
        distributed_step._guarded(extras, 1)
    told = distributed_step.error_path(record, 1).read_text()
    assert told.startswith("rank 1: processes: 2 training processes on this machine") and "\n" not in told


# ----------------------------------------------------------------------------- item 4: what a progress step holds
def _model_and_optimizer():
    model = torch.nn.Linear(3, 2)
    return model, torch.optim.Adam(model.parameters(), lr=0.002)


def test_a_progress_step_holds_the_cuda_rng_and_the_amp_scaler_and_restores_both(monkeypatch, tmp_path, one_process):
    """Before, a step held torch's CPU RNG only: a run resumed on CUDA drew other dropout and sampling numbers on the
    GPU and restarted the GradScaler at its initial scale. CUDA is faked (two devices whose RNG states are known);
    the GradScaler is torch's own, on the CPU."""
    states = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [state.clone() for state in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda new: restored.extend(new))
    scaler = torch.amp.GradScaler("cpu", init_scale=384.0, growth_interval=7)
    scaler.load_state_dict({**scaler.state_dict(), "_growth_tracker": 5})  # mid-way to its next growth
    model, optimizer = _model_and_optimizer()
    folder = tmp_path / "bc.progress"
    step = resume.save_progress(folder, 2, model, optimizer, {"next": 2}, {}, config=tiny(), scaler=scaler)
    assert json_of(step)["amp_scaler"]["scale"] == 384.0

    fresh = torch.amp.GradScaler("cpu", growth_interval=7)
    state, arrays = resume.load_progress(folder, *_model_and_optimizer(), "cpu", config=tiny(), scaler=fresh)
    assert state == {"next": 2, "step": 2} and arrays == {}  # the RNGs and the scaler are not the loop's
    assert [r.tolist() for r in restored] == [s.tolist() for s in states]
    assert fresh.state_dict() == scaler.state_dict() and fresh.get_scale() == 384.0

    # On the CPU (CUDA never initialised) a step holds no CUDA RNG and a disabled scaler nothing.
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    restored.clear()
    resume.save_progress(folder, 3, model, optimizer, {"next": 3}, {}, config=tiny(),
                         scaler=torch.amp.GradScaler("cpu", enabled=False))
    assert "amp_scaler" not in json_of(folder / "step-000003")
    resume.load_progress(folder, *_model_and_optimizer(), "cpu", config=tiny(), scaler=fresh)
    assert restored == []


def json_of(step) -> dict:
    import json

    return json.loads((step / resume.STATE).read_text())


def test_bc_and_ppo_hand_their_grad_scaler_to_the_progress_step(monkeypatch, tmp_path, one_process):
    """The training loops pass the GradScaler they step with (BC's trainer's, PPO's) to save_progress and
    load_progress; the constrained PPO resume test below sees PPO's."""
    handed = []
    real = resume.save_progress
    monkeypatch.setattr(resume, "save_progress",  # bc.py imports it from resume.py when it runs
                        lambda *args, **kwargs: (handed.append(kwargs), real(*args, **kwargs))[1])
    config = tiny(bc={"epochs": 2, "dagger_rounds": 0}, runtime={"device": "cpu", "progress_every_epochs": 1})
    dataset = orchestrator.capture_expert(config, tmp_path / "expert").path
    context = orchestrator.make_context(config, orchestrator.new_run_dir(tmp_path), tmp_path)
    orchestrator.run_bc(context, dataset)
    assert handed and all(isinstance(kwargs.get("scaler"), torch.amp.GradScaler) for kwargs in handed)


# ------------------------------------------------------------------------------------ item 4: one writer, one resumer
def test_only_rank_zero_writes_a_progress_step(monkeypatch, tmp_path):
    """Before, `torchrun … train bc --resume` ran every rank as a single process, each writing the same steps."""
    model, optimizer = _model_and_optimizer()
    _torchrun(monkeypatch, rank=1, world=2)
    assert resume.save_progress(tmp_path / "p", 1, model, optimizer, {"next": 1}, {}) is None
    assert not (tmp_path / "p").exists()
    _torchrun(monkeypatch, rank=0, world=2)
    assert resume.save_progress(tmp_path / "p", 1, model, optimizer, {"next": 1}, {}).is_dir()


def test_a_data_parallel_bc_run_is_not_resumed_as_one_process_and_no_run_is_resumed_data_parallel(
        monkeypatch, tmp_path, capsys):
    """Before, a 2-process BC run's step was continued by one process (another run: its own batches, no shards),
    and `torchrun … --resume` continued it in every rank as a single process. Both are refused in one line, before
    anything trains: `townlet train bc --resume` of a data-parallel run, and any resume under torchrun."""
    from townlet_pipelines.cli import main

    config = tiny()
    run_dir = tmp_path / "runs" / "dp"
    orchestrator.record_invocation(run_dir, "bc", config, dataset=str(tmp_path / "data"))
    model, optimizer = _model_and_optimizer()
    _torchrun(monkeypatch, rank=0, world=2)  # rank 0 of a 2-process run writes the step
    step = resume.save_progress(resume.progress_dir(run_dir / "bc"), 2, model, optimizer, {"next": 2}, {},
                                config=config)
    for name in TORCHRUN:
        monkeypatch.delenv(name)
    assert main(["train", "bc", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err == (f"townlet: error: {step}: written by a data-parallel run of 2 processes, which is not resumed (as "
                   "one process it would train another run); start it again\n")
    assert not (run_dir / "bc" / "checkpoint.json").exists()

    single = tmp_path / "single"
    resume.save_progress(single, 1, model, optimizer, {"next": 1}, {})
    _torchrun(monkeypatch, rank=1, world=2)
    with pytest.raises(TrainingError, match="--resume runs as one process, not data-parallel \\(torchrun started 2\\)"):
        resume.load_progress(single, *_model_and_optimizer(), "cpu")


# ------------------------------------------------------------------------------ item 4: the Lagrange state resumes
class _Stopped(Exception):
    pass


@pytest.fixture(scope="module")
def constrained_resume(tmp_path_factory):
    """PPO with the conflict constraint on, run once left alone and once stopped right after its first progress
    step (update 2 of 6, as a kill just after the step was complete) and resumed in the same process (CPU, one
    thread count): (uninterrupted result, resumed result, the step, what save_progress was handed)."""
    # Plain dual ascent from a high price (kp = kd = 0, integral 20, step 1 per unit of relative error): the
    # price moves every update whatever the tiny towns' conflicts, so a resume that restarted it would differ.
    constrained = {"conflict_budget": 0.05, "lagrange_init": 20.0, "lagrange_lr": 1.0, "lagrange_kp": 0.0,
                   "lagrange_kd": 0.0}
    config = tiny(ppo={**TINY["ppo"], "updates": 6, "validate_every": 0, **constrained},
                  runtime={"device": "cpu", "progress_every_updates": 2})
    tmp_path = tmp_path_factory.mktemp("constrained")
    handed = []
    real = resume.save_progress

    def save_then_stop(*args, **kwargs):
        handed.append(kwargs)
        real(*args, **kwargs)
        raise _Stopped

    with pytest.MonkeyPatch.context() as patch:
        for name in TORCHRUN:
            patch.delenv(name, raising=False)
        reference = orchestrator.run_ppo(orchestrator.make_context(
            config, orchestrator.new_run_dir(tmp_path / "reference"), tmp_path / "reference"))
        root = tmp_path / "stopped"
        run_dir = orchestrator.new_run_dir(root)
        patch.setattr(resume, "save_progress", save_then_stop)
        with pytest.raises(_Stopped):
            orchestrator.run_ppo(orchestrator.make_context(config, run_dir, root))
        patch.setattr(resume, "save_progress", real)
        (step,) = sorted((run_dir / "ppo.progress").iterdir())
        state = json_of(step)
        resumed = orchestrator.run_ppo(orchestrator.make_context(config, run_dir, root), resume=True)
    return reference, resumed, step, state, handed


def test_a_constrained_ppo_run_stopped_after_a_progress_step_resumes_to_the_uninterrupted_multiplier(
        constrained_resume):
    """The PID Lagrangian's integral, last rate and price come back from the step (ConflictMultiplier.state /
    restore, never exercised by a resume before): the resumed run ends with the uninterrupted run's multiplier,
    and the step was handed PPO's GradScaler."""
    reference, resumed, step, state, handed = constrained_resume
    assert step.name == "step-000002" and state["lagrange"]["value"] == 18.0  # 20, less 1 per update under budget
    assert reference.lagrange_multiplier == 14.0  # the price moved: a resume that restarted it would end at 16
    assert resumed.lagrange_multiplier == reference.lagrange_multiplier
    assert isinstance(handed[0].get("scaler"), torch.amp.GradScaler)


def test_a_constrained_ppo_run_stopped_after_a_progress_step_resumes_to_the_uninterrupted_checkpoint(
        constrained_resume):
    reference, resumed, *_ = constrained_resume
    assert resumed.checkpoint_id == reference.checkpoint_id
