"""When a CPU decode goes tiled: the memory arithmetic of add_turbo.decode_memory."""

import pytest

from add_turbo import decode_memory as dm

GIB = 2**30


def test_one_image_is_planned_at_the_measured_bytes_per_pixel():
    assert dm.decode_bytes(1024, 1024) == 4 * GIB  # fp32: 4 KiB a pixel
    assert dm.decode_bytes(1024, 1024, dtype_bytes=2) == 2 * GIB  # bf16 activations: half


def test_a_whole_image_that_fits_is_not_tiled():
    assert dm.tile_side(128, 128, free_bytes=6 * GIB) is None  # 1024 px needs 4 GiB of 4.8 usable
    assert dm.tile_side(64, 64, free_bytes=2 * GIB) is None  # 512 px needs 1 GiB


@pytest.mark.parametrize("free_gib, expected", [(4, 96), (2, 64), (1, 48), (0.3, 16), (0, 16)])
def test_the_largest_tile_that_fits_is_taken(free_gib, expected):
    # 1024 px (128 latent) does not fit in 4 GiB: tiles of 96 (768 px, 2.25 GiB) do
    assert dm.tile_side(128, 128, free_bytes=int(free_gib * GIB)) == expected


def test_a_tile_is_always_smaller_than_the_image():
    assert dm.tile_side(40, 40, free_bytes=0) == 16
    # 512x800 px needs 1.56 GiB of 1.2 usable; a 64 tile (1 GiB) fits and is smaller than the long side
    assert dm.tile_side(64, 100, free_bytes=int(1.5 * GIB)) == 64


@pytest.mark.parametrize("error, expected", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                  "you tried to allocate 4294967296 bytes. Error code 12 (Cannot allocate memory)"), True),
    (RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 4294967296 bytes."), True),
    (MemoryError(), True),
    (RuntimeError("Given groups=1, weight of size [128, 4, 3, 3], expected input to have 4 channels"), False),
    (ValueError("out of memory"), False),
])
def test_only_allocation_failures_are_retried(error, expected):
    assert dm.is_allocation_failure(error) is expected
