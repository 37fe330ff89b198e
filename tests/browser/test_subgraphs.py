"""Live mode across subgraph borders: the values a sampler inside one subgraph depends on, inside another.
(Live mode inside a subgraph with the Vue renderer, and a refused prompt from a subgraph: test_live.)"""

from tests.browser.helpers import (
    DEBOUNCE_SETTING,
    WAIT_S,
    convert_to_subgraph,
    live_stats,
    live_workflow,
    server_history,
    set_live,
    wait_live_idle,
)


def test_live_mode_follows_links_across_subgraph_borders(editor, frontend_server, tiny_models):
    """The latent in one subgraph, the sampler in another: an edit inside the first still counts."""
    server = frontend_server
    editor.load_workflow(live_workflow(tiny_models))
    # Empty Latent Image: the editor promotes none of its widgets to the subgraph node, so the
    # value stays inside (unlike a prompt's text or a seed).
    latent_id = convert_to_subgraph(editor, editor.find_node("EmptyLatentImage"))
    sample_id = convert_to_subgraph(editor, editor.find_node("ADDTurboSample"))
    assert latent_id.split(":")[0] != sample_id.split(":")[0], (latent_id, sample_id)
    editor.setting(DEBOUNCE_SETTING, 0)
    set_live(editor, sample_id, True)
    start, before = live_stats(editor), set(server_history(server))
    editor.node_js(latent_id, "(n) => { n.widgets.find(w => w.name === 'width').value = 192; }")
    editor.wait("(n) => window.ADDTurboLive.stats.queued > n", start["queued"], timeout=WAIT_S)
    wait_live_idle(editor, server)
    new = [v for k, v in server_history(server).items() if k not in before]
    assert [v["status"]["status_str"] for v in new] == ["success"]
    assert new[0]["prompt"][2][latent_id]["inputs"]["width"] == 192
    assert editor.pack_errors() == [] and editor.page_errors() == []
