// The page's worker: owns the WASM core and the WebGPU device, so that loading a model,
// sampling and benchmarks never block the page. Protocol: the page posts {id, cmd, args}; the
// worker answers {id, kind: 'event' | 'done' | 'error', data} (events stream progress and text).
import init, { self_check, adapter_info, benchmark, ModelFiles, Session } from './pkg/convrec_wasm.js';

const ready = init();
let session = null;
let catalog = null; // {name, text}: kept so that it survives loading another model

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

const commands = {
  adapter: async () => JSON.parse(await adapter_info()),
  selfcheck: async () => JSON.parse(await self_check()),
  // files: [{name, url} | {name, bytes: ArrayBuffer}]
  load: async ({ name, files }, emit) => {
    if (session) { session.free(); session = null; }
    const mf = new ModelFiles(name);
    for (const f of files) {
      emit({ stage: 'reading', file: f.name });
      const bytes = f.url ? await fetchBytes(f.url) : new Uint8Array(f.bytes);
      mf.add(f.name, bytes);
    }
    emit({ stage: 'uploading weights to the GPU' });
    session = await Session.load(mf);
    if (catalog) session.set_catalog(catalog.name, catalog.text);
    return JSON.parse(session.info());
  },
  catalog: async ({ name, text, url }) => {
    const body = url ? await (await fetch(url)).text() : text;
    catalog = { name, text: body };
    return { titles: session ? session.set_catalog(name, body) : null };
  },
  info: async () => JSON.parse(requireSession().info()),
  recommend: async ({ conversation, temperature, maxNewTokens, seed }, emit) =>
    JSON.parse(await requireSession().recommend(conversation, temperature, maxNewTokens, seed,
      (text) => emit({ text: JSON.parse(text) }))),
  evaluate: async ({ source, text, url, limit, batchSize, maxNewTokens }, emit) => {
    const rows = url ? await (await fetch(url)).text() : text;
    return JSON.parse(await requireSession().evaluate(source, rows, limit, batchSize, maxNewTokens,
      (p) => emit(JSON.parse(p))));
  },
  // Training: the page owns the loop (one `trainStep` per optimiser step) so it can stop any time.
  startSft: async ({ source, text, url, settings }) =>
    JSON.parse(await requireSession().start_sft(source, await rowsText(text, url), JSON.stringify(settings))),
  startRl: async ({ source, text, url, settings }) =>
    JSON.parse(await requireSession().start_rl(source, await rowsText(text, url), JSON.stringify(settings))),
  trainStep: async () => JSON.parse(await requireSession().train_step()),
  finishTraining: async () => JSON.parse(await requireSession().finish_training()),
  adapterFiles: async () => {
    const s = requireSession();
    return { config: s.adapter_config(), weights: s.adapter_weights() };
  },
  benchmark: async ({ model, tokens, group, budgetMs }, emit) =>
    JSON.parse(await benchmark(model, tokens, group, budgetMs, (c) => emit(JSON.parse(c)))),
};

async function rowsText(text, url) {
  return url ? await (await fetch(url)).text() : text;
}

function requireSession() {
  if (!session) throw new Error('load a model first');
  return session;
}

// One command at a time: the core's session is not re-entrant.
let queue = Promise.resolve();
self.onmessage = (e) => {
  const { id, cmd, args } = e.data;
  queue = queue.then(async () => {
    const emit = (data) => self.postMessage({ id, kind: 'event', data });
    try {
      await ready;
      const run = commands[cmd];
      if (!run) throw new Error(`unknown command ${cmd}`);
      self.postMessage({ id, kind: 'done', data: await run(args ?? {}, emit) });
    } catch (err) {
      self.postMessage({ id, kind: 'error', data: String(err && err.message ? err.message : err) });
    }
  });
};
