// ADD Turbo editor extension: how live mode and continuous mode queue the graph. One request at a
// time; before each, the prompts live mode queued earlier are stale: the running one is interrupted,
// the waiting ones are deleted, so the queue never grows. A helper module (see shared.js): it only
// declares things.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { live, currentSignature } from "./shared.js";

async function dropStale() {
  for (const id of [...live.pending]) {
    if (id === live.running) {
      await api.interrupt(id);
      live.stats.interrupted++;
    } else {
      await api.deleteItem("queue", id);
      live.stats.dropped++;
    }
    live.pending.delete(id);
    live.queuedAt.delete(id);
  }
}

// The server's reason for refusing a prompt (newer frontends throw PromptExecutionError with the
// response; older ones an error with the same response or just a message).
function rejectionText(error) {
  const response = error?.response;
  const main = typeof response?.error === "string" ? response.error : response?.error?.message;
  const details = Object.values(response?.node_errors ?? {}).flatMap((nodeError) =>
    (nodeError.errors ?? []).map((e) => `${nodeError.class_type}: ${e.message}${e.details ? ` (${e.details})` : ""}`));
  return [main ?? error?.message ?? String(error), ...details].join("\n");
}

function reportRejected(error) {
  live.lastError = rejectionText(error);
  live.stats.rejected++;
  live.halted = true;
  // A refused prompt is the user's to fix (a missing file, a bad value): warn, and keep watching edits.
  console.warn(`[ADD Turbo] live mode: the server did not queue the prompt: ${live.lastError}`);
  app.extensionManager?.toast?.add?.({ severity: "error", summary: "ADD Turbo live mode", detail: live.lastError, life: 6000 });
}

async function queueLatest() {
  const signature = currentSignature();
  if (signature === null) return;
  live.signature = live.queuedSignature = signature;
  const requested = performance.now(); // a webcam's capture and upload are part of a frame's time
  try {
    await dropStale();
    const prompt = await app.graphToPrompt();
    const result = await api.queuePrompt(0, prompt);
    live.lastError = null;
    if (result?.prompt_id) {
      live.pending.add(result.prompt_id);
      live.queuedAt.set(result.prompt_id, requested);
      live.stats.queued++;
    }
  } catch (error) {
    reportRejected(error);
  }
}

// Queue the graph as it is when the request's turn comes; resolves when it was sent (or refused).
export function requestQueue() {
  // One request at a time, or a prompt still being sent could escape the next one's dropStale.
  const request = (live.queueing ?? Promise.resolve()).then(queueLatest);
  live.queueing = request;
  request.then(() => {
    if (live.queueing === request) live.queueing = null;
  });
  return request;
}
