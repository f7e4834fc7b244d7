"""Issue 25 on a real local Ray (no GPU here): the driver asks Ray to hide GPUs from workers that
asked for none, and `pack: auto` with a GPU share that no node can give warns with its reason,
cancels its probe and runs unpacked instead of waiting silently."""
from __future__ import annotations

import os

import pytest


@pytest.fixture
def local_ray(monkeypatch):
    import ray

    from grokray.sweep.driver import init_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    init_ray()
    yield ray
    ray.shutdown()


def test_driver_hides_gpus_and_auto_pack_times_out_with_a_reason(local_ray, monkeypatch, capsys):
    from grokray.sweep.driver import ACCEL_OVERRIDE
    from grokray.sweep.packing import resolve_pack_size
    from grokray.sweep.spec import spec_from_dict
    from grokray.sweep.trainable import trial_device

    ray = local_ray
    assert os.environ[ACCEL_OVERRIDE] == "1"

    @ray.remote(num_gpus=0, num_cpus=1)
    def worker() -> tuple:
        return os.environ.get(ACCEL_OVERRIDE), trial_device("auto"), trial_device("cpu")

    assert ray.get(worker.remote()) == ("1", "cpu", None)   # a gpu: 0 trial resolves auto to the CPU

    monkeypatch.setenv("GROKRAY_PACK_PROBE_S", "2")
    spec = spec_from_dict({"name": "p", "parameters": {"seed": [0, 1]},
                           "resources": {"cpu": 1, "gpu": 0.5, "pack": "auto"}})
    assert resolve_pack_size(spec) == 1
    err = capsys.readouterr().err
    assert "pack: auto -> 1: no GPU answered the memory probe within 2 s" in err and "resources.pack: K" in err
