"""The pack's io.Schema: every node with the search aliases people type, where the host takes them."""

import dataclasses

from comfy_api.v0_0_2 import io

HOST_SYMBOLS = [  # and search_aliases where the host's io.Schema has it (TAKES_SEARCH_ALIASES)
    ("comfy_api.v0_0_2", "io.Schema", ("node_id", "display_name", "category", "description", "inputs", "outputs",
                                       "hidden")),
]

# What people type into the node search for these nodes.
SEARCH_ALIASES = ["sd turbo", "sdxl turbo", "adversarial diffusion", "1 step", "few step", "img2img", "refine"]
# Newer hosts' io.Schema takes search_aliases (0.33 does); older ones' does not (0.3.75): there the nodes go without.
TAKES_SEARCH_ALIASES = "search_aliases" in {field.name for field in dataclasses.fields(io.Schema)}


def turbo_schema(**fields) -> io.Schema:
    """io.Schema(**fields), in the "ADD Turbo" category, with SEARCH_ALIASES where the host takes them."""
    if TAKES_SEARCH_ALIASES:
        fields.setdefault("search_aliases", SEARCH_ALIASES)
    return io.Schema(category="ADD Turbo", **fields)
