"""Memory as a figure (add_turbo.memory): what is available, counting a cgroup's limit and the user's
cap, what a checkpoint's parts weigh, and the refusal that names both figures."""

import pytest

from add_turbo import memory

MEMINFO = "MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n"


def _files(tmp_path, meminfo=MEMINFO, cgroup=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "meminfo").write_text(meminfo)
    root = tmp_path / "cgroup"
    root.mkdir()
    for name, text in (cgroup or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return tmp_path / "meminfo", root


def test_available_is_the_least_of_meminfo_the_cgroup_headroom_and_the_cap(tmp_path, monkeypatch):
    monkeypatch.delenv(memory.LIMIT_ENV, raising=False)
    meminfo, root = _files(tmp_path)
    assert memory.available_bytes(meminfo, root) == 20000000 * 1024  # no cgroup limit
    meminfo, root = _files(tmp_path / "v2", cgroup={"memory.max": "8589934592\n", "memory.current": "2147483648\n"})
    assert memory.available_bytes(meminfo, root) == 6 * 2**30  # v2: limit - usage
    meminfo, root = _files(tmp_path / "v2max", cgroup={"memory.max": "max\n", "memory.current": "5\n"})
    assert memory.available_bytes(meminfo, root) == 20000000 * 1024
    meminfo, root = _files(tmp_path / "v1", cgroup={"memory/memory.limit_in_bytes": str(4 * 2**30),
                                                     "memory/memory.usage_in_bytes": str(2**30)})
    assert memory.available_bytes(meminfo, root) == 3 * 2**30
    monkeypatch.setenv(memory.LIMIT_ENV, "1.5G")
    assert memory.available_bytes(meminfo, root) == int(1.5 * 2**30)
    monkeypatch.delenv(memory.LIMIT_ENV)
    assert memory.available_bytes(tmp_path / "absent", tmp_path / "absent") is None


def test_sizes_parse_and_a_bad_one_says_how_to_write_it():
    assert memory.parse_size("12G") == 12 * 2**30
    assert memory.parse_size("512MiB") == 512 * 2**20
    assert memory.parse_size("4096") == 4096
    with pytest.raises(ValueError, match="e.g. 12G"):
        memory.parse_size("twelve")


def test_parameters_are_counted_per_part():
    header = {"model.diffusion_model.a": ((4, 3, 3, 3), "F16"), "first_stage_model.b": ((10,), "F32"),
              "cond_stage_model.model.c": ((2, 5), "F16"), "conditioner.embedders.0.d": ((7,), "F16"),
              "other": ((100,), "F32")}
    assert memory.parameter_counts(header) == {"unet": 108, "vae": 10, "text": 17}


def test_a_load_that_will_not_fit_is_refused_with_both_figures():
    memory.refuse_if_short("x", 2**30, 2**31, "fix it")  # fits: nothing raised
    memory.refuse_if_short("x", 2**30, None, "fix it")  # nothing readable: nothing refused
    with pytest.raises(memory.NotEnoughMemory, match=r"x needs about 3.00 GiB of memory and 1.50 GiB is available.*"
                                                     r"fix it\. Nothing was loaded"):
        memory.refuse_if_short("x", 3 * 2**30, int(1.5 * 2**30), "fix it")
