"""How much memory a VAE decode needs on CPU, and the tile size that fits when a whole image does not."""

from __future__ import annotations

# Peak bytes per output pixel of one fp32 decode by the full SD/SDXL VAE on CPU, measured on the
# full-size architecture (0.67 GiB at 512 px, 2.53 GiB at 1024 px with SDPA; 3.58 GiB at 1024 px
# with the host's split attention), rounded up to cover both attentions.
BYTES_PER_PIXEL_FP32 = 4096
# Only this share of the free memory is planned for: the allocator and the host need the rest.
USABLE_SHARE = 0.8
# Tile sides tried, in latent pixels (x8 in the image), largest first. 16 (128 px) is the floor:
# below it the host's tile overlap leaves too little context for the decoder.
TILE_SIDES = (128, 96, 64, 48, 32, 16)


def decode_bytes(height: int, width: int, dtype_bytes: int = 4, bytes_per_pixel: int = BYTES_PER_PIXEL_FP32) -> int:
    """Peak bytes to decode one image of `height` x `width` output pixels."""
    return height * width * bytes_per_pixel * dtype_bytes // 4


def tile_side(latent_height: int, latent_width: int, free_bytes: int, dtype_bytes: int = 4,
              bytes_per_pixel: int = BYTES_PER_PIXEL_FP32, scale: int = 8) -> int | None:
    """None when one whole image of this latent size fits in `free_bytes`; else the largest tile side
    (in latent pixels) whose decode fits, or the smallest tile when none does."""
    budget = free_bytes * USABLE_SHARE
    if decode_bytes(latent_height * scale, latent_width * scale, dtype_bytes, bytes_per_pixel) <= budget:
        return None
    for side in TILE_SIDES:
        # the host's tiled decode also runs tiles of side/2 x side*2: the same area
        if side < max(latent_height, latent_width) and \
                decode_bytes(side * scale, side * scale, dtype_bytes, bytes_per_pixel) <= budget:
            return side
    return TILE_SIDES[-1]


def is_allocation_failure(error: BaseException) -> bool:
    """True for the errors a CPU allocation that does not fit raises (Linux, Windows, macOS wording)."""
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text
                                                or "out of memory" in text)
