"""add_turbo.mapped_weights: tensors memory-mapped from a file leave this process's memory and come back
with their values; a mapping written in place is kept; a module's weights spilled to a file keep theirs."""

import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from add_turbo import mapped_weights

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps (Linux)")


def _mapped(tmp_path, tensors):
    path = tmp_path / "weights.safetensors"
    save_file(tensors, str(path))
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return path, {k: handle.get_tensor(k) for k in handle.keys()}


def test_released_pages_leave_memory_and_come_back_with_their_values(tmp_path):
    generator = torch.Generator().manual_seed(0)
    path, loaded = _mapped(tmp_path, {"a": torch.randn(512, 1024, generator=generator),
                                      "b": torch.randn(256, generator=generator).half()})
    weights = list(loaded.values())
    assert [m.path for m in mapped_weights.file_mappings_of(weights)] == [str(path.resolve())]
    sums = [t.double().sum().item() for t in weights]  # reads every page
    size = sum(t.nbytes for t in weights)
    assert mapped_weights.resident_bytes(weights) >= size
    assert mapped_weights.release(weights) >= size
    assert mapped_weights.resident_bytes(weights) == 0
    assert [t.double().sum().item() for t in weights] == sums  # read again from the file
    assert mapped_weights.resident_bytes(weights) >= size


def test_a_mapping_written_in_place_is_kept(tmp_path):
    _, loaded = _mapped(tmp_path, {"a": torch.zeros(4096)})
    tensor = loaded["a"]
    tensor[0] = 1.0  # copy-on-write: this page is no longer the file's
    assert mapped_weights.file_mappings_of([tensor])[0].anonymous > 0
    assert mapped_weights.release([tensor]) == 0
    assert tensor[0].item() == 1.0


def test_tensors_on_the_heap_are_not_mapped():
    tensor = torch.ones(1 << 20)
    assert mapped_weights.file_mappings_of([tensor]) == [] and mapped_weights.release([tensor]) == 0


def test_a_spilled_module_keeps_its_values_and_a_second_spill_checks_them(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 8))
    x = torch.randn(3, 64)
    want = module(x)
    params = list(module.parameters())
    moved = mapped_weights.spill(module, tmp_path / "spill.safetensors")
    assert moved == sum(p.nbytes for p in params)
    assert list(module.parameters()) == params  # the same Parameter objects, now the file's mapping
    assert [m.path for m in mapped_weights.file_mappings_of(params)] == [str((tmp_path / "spill.safetensors").resolve())]
    assert mapped_weights.resident_bytes(params) == 0
    assert torch.equal(module(x), want)
    assert mapped_weights.spill(module, tmp_path / "spill.safetensors") == 0  # already there: released again
    assert mapped_weights.resident_bytes(params) == 0
    other = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 8))
    assert mapped_weights.spill(other, tmp_path / "spill.safetensors") == 0  # other values: keeps its own
    assert mapped_weights.file_mappings_of(list(other.parameters())) == []


def test_smaps_fields_are_read(tmp_path):
    smaps = tmp_path / "smaps"
    smaps.write_text("7f0000000000-7f0000002000 r--p 00000000 fe:00 12 /models/a b.safetensors\n"
                     "Size:                  8 kB\nRss:                   4 kB\nAnonymous:             0 kB\n"
                     "VmFlags: rd mr mw me\n"
                     "7f0000002000-7f0000003000 rw-p 00000000 00:00 0\nRss:                   4 kB\n"
                     "Anonymous:             4 kB\n")
    first, second = mapped_weights.mappings(smaps)
    assert (first.start, first.end, first.path, first.rss, first.anonymous) == (
        0x7f0000000000, 0x7f0000002000, "/models/a b.safetensors", 4096, 0)
    assert (second.path, second.anonymous) == ("", 4096)
