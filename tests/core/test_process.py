"""How many CPUs the service sizes itself for: a container's CPU limit counts, not the node's cores."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.process import available_cpus, cgroup_cpu_quota
from app.core.settings import Settings


def test_cgroup_quotas_v2_and_v1(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None  # no cgroup files: no quota
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 2.5
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5


def test_auto_workers_follow_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import app.core.settings as settings_module

    for cpus, workers in ((1, 0), (2, 0), (3, 2), (16, 15)):
        monkeypatch.setattr(settings_module, "available_cpus", lambda cpus=cpus: cpus)
        assert Settings(workers="auto").front_end_workers == workers
    assert Settings(workers=3).front_end_workers == 3
    assert available_cpus() >= 1
