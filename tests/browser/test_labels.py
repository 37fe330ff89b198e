"""The labels on the pack's nodes: the sampler's run time and its note on queued prompts sampled together in
one UNet call (queue_batch), drawn by the classic renderer and shown by the Vue one."""

from devkit import host
from devkit.client import ComfyClient
from tests.browser.helpers import LAST_RUN, WAIT_S, expect_label_shown, live_workflow, set_widgets

BLOCKER_SIZES = (512, 1024, 2048)  # a longer run first, so the editor's three prompts wait in the queue together

# Each run's note and time label on a node as the run ends: the note as the run left it (the next run's
# start clears it), the time once live mode's own end handler has set it.
RECORD_LABELS = """(id) => {
  const api = window.comfyAPI.api.api;
  const record = { labels: {} };
  record.onEnd = (event) => {
    const node = window.addTurboTest.node(id), note = node.addTurboNote ?? null;
    setTimeout(() => { record.labels[event.detail.prompt_id] = [node.addTurboLastRun, note]; }, 0);
  };
  api.addEventListener('execution_success', record.onEnd);
  window.addTurboLabelRecord = record;
}"""
STOP_LABELS = """() => {
  const record = window.addTurboLabelRecord;
  window.comfyAPI.api.api.removeEventListener('execution_success', record.onEnd);
  delete window.addTurboLabelRecord;
  return record.labels;
}"""


def _queue_from_editor(editor):
    """Queue the graph as the editor's Queue button does."""
    editor.js("async () => { await window.app.extensionManager.command.execute('Comfy.QueuePrompt'); }")


def test_sampler_label_says_which_queued_prompts_shared_one_unet_call(editor, frontend_server, tiny_models):
    """Queued three times from the editor with other seeds, behind a longer run, with queue_batch on: the
    sampler's note says the first sampled all three in one UNet call and the others took their latents,
    next to each run's time (drawn above the node in both renderers); the next lone run has no note."""
    server = frontend_server
    editor.load_workflow(live_workflow(tiny_models))
    loader_id, sample_id = editor.find_node("ADDTurboLoader"), editor.find_node("ADDTurboSample")
    set_widgets(editor, loader_id, {"engine": "on"})
    set_widgets(editor, sample_id, {"steps": 2, "queue_batch": 4})
    set_widgets(editor, editor.find_node("EmptyLatentImage"), {"width": 64, "height": 64})
    editor.fit_view()
    seeds = (11, 12, 13)
    with ComfyClient(server.url, events=False) as client:
        for size in BLOCKER_SIZES:
            blocker = editor.js("async () => (await window.app.graphToPrompt()).output")
            blocker[sample_id]["inputs"].update(queue_batch=1, seed=99)
            latent_id = blocker[sample_id]["inputs"]["latent_image"][0]
            blocker[latent_id]["inputs"].update(width=size, height=size)
            editor.js(RECORD_LABELS, sample_id)
            blocker_id = client.queue(blocker)
            for seed in seeds:
                set_widgets(editor, sample_id, {"seed": seed})
                _queue_from_editor(editor)
            queue = client.get_json("/queue")
            waited = [item[1] for item in queue["queue_running"]] == [blocker_id] and len(queue["queue_pending"]) == 3
            ids = [item[1] for item in sorted(queue["queue_pending"])]
            # Each run's label is recorded a moment after its end event (the blocker's go to its own client).
            editor.wait("(ids) => ids.every(i => i in window.addTurboLabelRecord.labels)", ids, timeout=300)
            labels = editor.js(STOP_LABELS)
            if waited:
                break
        else:
            raise AssertionError(f"the editor's prompts never waited together behind a blocker of up to {size} px")
        # Each entry is written just after the run's end event, which the labels waited for: wait for each.
        history = {i: client.history(i) for i in ids}

    assert [history[i]["prompt"][2][sample_id]["inputs"]["seed"] for i in ids] == list(seeds)
    notes = [history[i]["outputs"][sample_id]["text"][0] for i in ids]
    assert notes[0] == "sampled with 2 queued prompt(s) in one UNet call (seeds 11, 12, 13)", notes
    assert all(LAST_RUN.match(labels[i][0]) for i in ids), labels
    assert [labels[i][1] for i in ids] == ["3 prompts in one UNet call"] + ["sampled ahead in a queued batch"] * 2
    last_run, note = labels[ids[-1]]
    expect_label_shown(editor, "classic", sample_id, note)
    expect_label_shown(editor, "classic", sample_id, last_run)
    editor.screenshot(f"queue_batch_{host.HOST}_{frontend_server.frontend}_classic.png")
    editor.set_vue_nodes(True)
    try:
        expect_label_shown(editor, "vue", sample_id, f"{last_run} · {note}")
        editor.screenshot(f"queue_batch_{host.HOST}_{frontend_server.frontend}_vue.png")
    finally:
        editor.set_vue_nodes(False)

    # The next run, alone, shows its time only: a note belongs to the run that sent it.
    set_widgets(editor, sample_id, {"queue_batch": 1, "seed": 14})
    editor.js(RECORD_LABELS, sample_id)
    _queue_from_editor(editor)
    editor.wait("() => Object.keys(window.addTurboLabelRecord.labels).length === 1", timeout=WAIT_S)
    (alone,) = editor.js(STOP_LABELS).values()
    assert LAST_RUN.match(alone[0]) and alone[1] is None, alone
    print(f"\nQUEUE BATCH LABELS {frontend_server.frontend}: {[' · '.join(labels[i]) for i in ids]}")
    assert editor.pack_errors() == [] and editor.page_errors() == []
