// One SSE client from npm, driven by tests/compat.rs: it connects to a URL and prints, as one
// JSON line each, everything the client hands the application. All assertions are made in
// Rust; this script only reports.
//
//   node client.mjs <node_modules dir> <client> <scenario> <url>
//
// client: eventsource4 | eventsource5 | fetch-event-source | eventsource-parser
// scenario: events | typewriter | blocks | chat (chat: eventsource-parser only, POSTs JSON)
//
// Lines: {"kind":"open"} {"kind":"event",type,data,id,retry} {"kind":"comment",text}
// {"kind":"retry",ms} {"kind":"error",message} {"kind":"closed"} {"kind":"end"}
import { createRequire } from "node:module";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [nodeModules, client, scenario, url] = process.argv.slice(2);
const report = (line) => process.stdout.write(JSON.stringify(line) + "\n");
// eventsource 5 unref()s its reconnect timer: keep this process alive for the test to end it.
setInterval(() => {}, 1 << 30);

const load = (entry) => import(pathToFileURL(join(nodeModules, entry)).href);
// Every type the demo sends, for the clients that dispatch by type (EventTarget).
const TYPES = ["message", "custom", "connections", "token", "end", "gap", "bye"];

async function eventSource(entry) {
  const { EventSource } = await load(entry);
  const es = new EventSource(url);
  es.onopen = () => report({ kind: "open" });
  es.onerror = (e) => {
    report({ kind: "error", message: String(e.message ?? e.code ?? "error") });
    if (es.readyState === 2) report({ kind: "closed" });
  };
  for (const type of TYPES) {
    es.addEventListener(type, (ev) =>
      report({ kind: "event", type, data: ev.data, id: ev.lastEventId, retry: null }),
    );
  }
}

// The pattern from fetch-event-source's README: reconnect on a clean end by throwing from
// onclose, stop for good on a 4xx, retry otherwise.
async function fetchEventSourceClient() {
  globalThis.window = globalThis; // window.setTimeout, window.fetch
  globalThis.document = { hidden: false, addEventListener() {}, removeEventListener() {} };
  const require = createRequire(join(nodeModules, "package.json"));
  const { fetchEventSource, EventStreamContentType } = require("@microsoft/fetch-event-source");
  class RetriableError extends Error {}
  class FatalError extends Error {}
  await fetchEventSource(url, {
    openWhenHidden: true,
    async onopen(response) {
      if (response.ok && response.headers.get("content-type") === EventStreamContentType) {
        report({ kind: "open" });
        return;
      }
      report({ kind: "error", message: `status ${response.status}` });
      if (response.status >= 400 && response.status < 500 && response.status !== 429) {
        throw new FatalError();
      }
      throw new RetriableError();
    },
    onmessage(ev) {
      report({ kind: "event", type: ev.event || "message", data: ev.data, id: ev.id, retry: ev.retry ?? null });
    },
    onclose() {
      report({ kind: "end" });
      throw new RetriableError();
    },
    onerror(err) {
      if (err instanceof FatalError) {
        report({ kind: "closed" });
        throw err;
      }
      // undefined: retry after the library's interval (the server's `retry`, once seen).
    },
  }).catch(() => {});
}

// eventsource-parser over fetch, as the Vercel AI SDK uses it: no reconnection of its own.
async function parserClient() {
  const { createParser } = await load("eventsource-parser/dist/index.js");
  const parser = createParser({
    onEvent: (ev) => report({ kind: "event", type: ev.event || "message", data: ev.data, id: ev.id ?? null, retry: null }),
    onRetry: (ms) => report({ kind: "retry", ms }),
    onComment: (text) => report({ kind: "comment", text }),
  });
  const init =
    scenario === "chat"
      ? {
          method: "POST",
          headers: { "content-type": "application/json", accept: "text/event-stream" },
          body: JSON.stringify({ model: "demo", stream: true, messages: [{ role: "user", content: "Hello" }] }),
        }
      : { headers: { accept: "text/event-stream" } };
  const response = await fetch(url, init);
  report({ kind: "open", status: response.status });
  const decoder = new TextDecoder();
  for await (const chunk of response.body) {
    parser.feed(decoder.decode(chunk, { stream: true }));
  }
  report({ kind: "end" });
}

try {
  switch (client) {
    case "eventsource4":
      await eventSource("eventsource4/dist/index.js");
      break;
    case "eventsource5":
      await eventSource("eventsource5/dist/index.js");
      break;
    case "fetch-event-source":
      await fetchEventSourceClient();
      break;
    case "eventsource-parser":
      await parserClient();
      break;
    default:
      throw new Error(`unknown client ${client}`);
  }
} catch (e) {
  report({ kind: "error", message: String((e && e.stack) || e) });
}
