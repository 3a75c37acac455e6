"""Device choice (with faked CUDA), torch absence, and log rotation: the training plumbing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from townlet_pipelines.training.logs import JsonlLog


def test_auto_picks_the_cuda_device_with_most_free_memory(monkeypatch):
    torch = pytest.importorskip("torch")
    from townlet_pipelines.training import device as device_module

    free = {0: 2 << 30, 1: 9 << 30, 2: 5 << 30}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (free[index], 16 << 30))
    assert device_module.select_device("auto") == torch.device("cuda:1")
    assert device_module.select_device("cuda:2") == torch.device("cuda:2")
    assert device_module.select_device("cpu") == torch.device("cpu")
    context = device_module.device_context("auto", amp=True)
    assert context.amp and context.pin_memory and context.name == "cuda:1"
    assert not device_module.device_context("auto", amp=False).amp
    with pytest.raises(device_module.TrainingError, match="cuda:7 requested but torch reports 3"):
        device_module.select_device("cuda:7")


def test_without_cuda_auto_is_the_cpu_and_gpu_paths_stay_off(monkeypatch):
    torch = pytest.importorskip("torch")
    from townlet_pipelines.training import device as device_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    context = device_module.device_context("auto", amp=True)
    assert context.device == torch.device("cpu") and not context.amp and not context.pin_memory
    with pytest.raises(device_module.TrainingError):
        device_module.select_device("cuda:0")


def test_strategies_raise_a_clear_error_when_torch_is_absent(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # hide torch\n"
        "from townlet_pipelines.training import orchestrator\n"
        "from townlet_pipelines.training.bc import BCStrategy\n"
        "from townlet_pipelines.training.torch_support import TorchNotAvailableError\n"
        "try:\n"
        "    BCStrategy('unused').run(None)\n"
        "except TorchNotAvailableError as error:\n"
        "    print('refused:', error)\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.startswith("refused: training needs PyTorch")


def test_jsonl_logs_rotate_and_continue_numbering_across_runs(tmp_path):
    log = JsonlLog(tmp_path, "bc", rotate_entries=3)
    for index in range(7):
        log.write({"i": index})
    files = sorted(path.name for path in tmp_path.iterdir())
    assert files == ["bc.0000.jsonl", "bc.0001.jsonl", "bc.0002.jsonl"]
    again = JsonlLog(tmp_path, "bc", rotate_entries=3)  # a later run appends, never restarts at 0
    for index in range(7, 10):
        again.write({"i": index})
    entries = [json.loads(line)["i"] for name in sorted(p.name for p in tmp_path.iterdir())
               for line in (tmp_path / name).read_text().splitlines()]
    assert entries == list(range(10))
    assert len((tmp_path / "bc.0002.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "bc.0003.jsonl").read_text().count("\n") == 1


def test_torch_threads_are_chosen_not_inherited():
    torch = pytest.importorskip("torch")
    from townlet_pipelines.training.device import auto_threads, configure_threads

    assert [auto_threads(cores) for cores in (1, 2, 4, 8, 16, 64)] == [1, 1, 1, 2, 4, 4]
    before = torch.get_num_threads()
    try:
        assert configure_threads(2) == 2 and torch.get_num_threads() == 2
        assert configure_threads(0) == auto_threads() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_progress_logs_every_step_and_draws_a_tqdm_bar_when_asked(capsys, caplog):
    import logging

    from townlet_pipelines.training.progress import Progress

    with caplog.at_level(logging.INFO, logger="townlet.training"):
        quiet = Progress(2, "bc", enabled=False)
        quiet.update(1, phase="expert 0", loss=0.5, acc=0.9)
        quiet.skip(1)
        bar = Progress(3, "ppo cycle 1", enabled=True)
        for _ in range(3):
            bar.update(1, phase="rollout", kl=0.01)
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0].startswith("bc 1/2 [expert 0]: loss 0.5  acc 0.9")
    assert [m.split(":")[0] for m in messages[1:]] == [f"ppo cycle 1 {i}/3 [rollout]" for i in (1, 2, 3)]
    err = capsys.readouterr().err
    assert "ppo cycle 1" in err and "3/3" in err and "bc " not in err  # only the bar that was asked for


def test_the_code_version_follows_the_sources_not_git(tmp_path):
    """Cache keys carry it: an uncommitted edit, or an image without git, must not reuse another code's entry."""
    import shutil

    from townlet_pipelines.training.checkpoints import code_version, source_digest

    package = tmp_path / "townlet_pipelines"
    shutil.copytree(Path(__file__).resolve().parents[1] / "townlet_pipelines", package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    before = source_digest(package)
    (package / "profiles" / "notes.txt").write_text("not code")
    assert source_digest(package) == before
    with (package / "training" / "bc.py").open("a") as source:
        source.write("\n# an uncommitted edit\n")
    assert source_digest(package) != before
    assert code_version().endswith("+src." + source_digest(Path(__file__).resolve().parents[1] / "townlet_pipelines"))
