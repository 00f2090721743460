// Page logic. Everything heavy runs in worker.js (the WASM core on WebGPU); this file only talks
// to it and draws. Query parameters:
//   ?report=PATH            run the kernel self-check and POST its report to PATH (browser test)
//   ?auto=full&report=PATH  also load the server's model, recommend, evaluate `rows` rows with
//                           `max_new_tokens`, run one benchmark, and POST everything to PATH
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

// --- the worker -------------------------------------------------------------------------------
const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
const pending = new Map();
let nextId = 1;
worker.onmessage = (e) => {
  const { id, kind, data } = e.data;
  const p = pending.get(id);
  if (!p) return;
  if (kind === 'event') { p.onEvent?.(data); return; }
  pending.delete(id);
  kind === 'done' ? p.resolve(data) : p.reject(new Error(data));
};
worker.onerror = (e) => {
  for (const p of pending.values()) p.reject(new Error(`the worker failed: ${e.message}`));
  pending.clear();
};
function call(cmd, args, onEvent) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, onEvent });
    worker.postMessage({ id, cmd, args });
  });
}
const message = (e) => String(e && e.message ? e.message : e);

// --- adapter and self-check ----------------------------------------------------------------------
function showAdapter(a) {
  const l = a.limits;
  $('adapter').textContent =
    `${a.name || '(name withheld by the browser)'} (${a.backend}, ${a.device_type})${a.driver ? ` driver ${a.driver} ${a.driver_info}` : ''}\n` +
    `shader-f16 ${a.shader_f16}, subgroups ${a.subgroups}, timestamp queries ${a.timestamp_queries}\n` +
    `max storage binding ${l.max_storage_buffer_binding_size} B, max buffer ${l.max_buffer_size} B, ` +
    `${l.max_storage_buffers_per_shader_stage} storage buffers/stage, ` +
    `${l.max_compute_workgroup_storage_size} B workgroup memory, ${l.max_compute_invocations_per_workgroup} invocations/workgroup`;
}

async function selfCheck() {
  try {
    const report = await call('selfcheck');
    showAdapter(report.adapter);
    const body = document.querySelector('#checks tbody');
    body.textContent = '';
    // A non-finite error (an output left unwritten, NaN) arrives as null.
    const num = (x) => (x === null ? 'not finite' : x === 0 ? '0' : x.toExponential(2));
    for (const c of report.cases) {
      const row = body.insertRow();
      for (const text of [c.family, c.op, c.shape, num(c.rel_err), c.bound === 0 ? 'exact' : num(c.bound), c.pass ? 'ok' : 'FAIL']) row.insertCell().textContent = text;
      row.lastChild.className = c.pass ? 'pass' : 'fail';
    }
    $('families').textContent = 'Families: ' + report.families
      .map((f) => `${f.name} ${f.error ? `FAILED to run (${f.error})` : f.pass ? `ok (${f.cases} cases)` : 'FAIL'}`).join(' · ');
    return report;
  } catch (e) {
    $('adapter').textContent = message(e);
    return { pass: false, error: message(e) };
  } finally {
    document.body.dataset.verdict = 'done';
  }
}

function showVerdict(v) {
  const el = $('verdict');
  el.textContent = v.pass ? `all ${v.families.length} kernel families match their CPU references` : `FAILED: ${v.error ?? 'a kernel disagrees with its reference'}`;
  el.className = v.pass ? 'pass' : 'fail';
}

// --- model ---------------------------------------------------------------------------------------
let serverFiles = null; // /api/files.json from `convrec serve`, when the page came from it

function showModel(info) {
  const m = info.model;
  const lora = info.lora ? `LoRA r=${info.lora.r} α=${info.lora.alpha} on ${info.lora.targets.join(', ')} (${info.lora.parameters} parameters, merged)` : 'no adapter';
  const cat = info.catalog ? `${info.catalog.titles} catalog titles (${info.catalog.name})` : 'no catalog';
  $('model').textContent = `${m.name}: ${m.architecture}, ${m.layers} layers, hidden ${m.hidden}, ${m.heads}/${m.kv_heads} heads, vocab ${m.vocab}\n${lora}\n${cat}`;
  for (const id of ['recommend', 'evaluate']) $(id).disabled = false;
}

async function load(name, files) {
  $('model').textContent = `loading ${name}…`;
  try {
    await call('load', { name, files }, (p) => { $('model').textContent = `${p.stage} ${p.file ?? ''}…`; });
    if (serverFiles?.catalog) {
      await call('catalog', { name: serverFiles.catalog.name, url: serverFiles.catalog.url });
      $('catalog-name').textContent = serverFiles.catalog.name;
    }
    const info = await call('info');
    showModel(info);
    return info;
  } catch (e) {
    $('model').textContent = `could not load ${name}: ${message(e)}`;
    throw e;
  }
}

$('load-server').onclick = () => load(serverFiles.model.name, serverFiles.model.files.concat(serverFiles.adapter ?? []));
$('model-files').onchange = async (e) => {
  const picked = [...e.target.files];
  if (!picked.length) return;
  const files = await Promise.all(picked.map(async (f) => ({ name: f.name, bytes: await f.arrayBuffer() })));
  load(picked.map((f) => f.name).join(', '), files).catch(() => {});
};
$('catalog-file').onchange = async (e) => {
  const f = e.target.files[0];
  if (!f) return;
  try {
    const r = await call('catalog', { name: f.name, text: await f.text() });
    $('catalog-name').textContent = r.titles === null ? `${f.name} (read when a model loads)` : `${f.name} (${r.titles} titles)`;
  } catch (err) { $('catalog-name').textContent = message(err); }
};

// --- recommend -----------------------------------------------------------------------------------
async function recommend({ conversation, temperature, maxNewTokens, seed = 0 }) {
  const list = $('recommendations');
  list.textContent = '';
  $('rec-text').textContent = '';
  const result = await call('recommend', { conversation, temperature, maxNewTokens, seed }, (e) => {
    $('rec-text').textContent = e.text;
    // Lines as they arrive; marks come with the final parse.
    const lines = e.text.split('\n').filter((l) => l.trim());
    while (list.children.length < lines.length) list.appendChild(document.createElement('li'));
    lines.forEach((l, i) => { list.children[i].textContent = l; });
  });
  list.textContent = '';
  if (!result.items.length) list.appendChild(document.createElement('li')).textContent = '(no “Title (Year)” line in the answer: see the raw text)';
  for (const it of result.items) {
    const li = list.appendChild(document.createElement('li'));
    li.textContent = `${it.title} (${it.year})`;
    const tag = li.appendChild(document.createElement('span'));
    tag.className = 'tag';
    if (it.in_catalog === null) tag.textContent = '';
    else { li.className = it.in_catalog ? 'in' : 'out'; tag.textContent = it.in_catalog ? 'in catalog' : 'not in catalog'; }
  }
  return result;
}

$('greedy').onchange = () => { $('temperature').disabled = $('greedy').checked; };
$('temperature').disabled = true;
$('recommend').onclick = () => recommend({
  conversation: $('conversation').value,
  temperature: $('greedy').checked ? 0 : Number($('temperature').value),
  maxNewTokens: Number($('rec-tokens').value),
  seed: Math.floor(Math.random() * 2 ** 31),
}).catch((e) => { $('rec-text').textContent = message(e); });

// --- evaluate ------------------------------------------------------------------------------------
let pickedRows = null;
$('data-file').onchange = async (e) => {
  const f = e.target.files[0];
  if (!f) return;
  pickedRows = { source: f.name, text: await f.text() };
  $('data-name').textContent = f.name;
};

function drawChart(summary) {
  const svg = $('eval-chart');
  const ks = [5, 10, 15, 20];
  const series = [['recall', '#3b6ea8'], ['ndcg', '#c77c1e']];
  const max = Math.max(1e-9, ...ks.flatMap((k) => series.map(([m]) => summary[`${m}@${k}`].mean)));
  const W = 480, H = 180, pad = 30, bw = 18;
  let out = `<line x1="${pad}" y1="${H - pad}" x2="${W}" y2="${H - pad}" stroke="#888"/>`;
  ks.forEach((k, i) => {
    const x0 = pad + 20 + i * 110;
    series.forEach(([m, color], j) => {
      const v = summary[`${m}@${k}`].mean, h = (H - 2 * pad) * v / max;
      out += `<rect x="${x0 + j * (bw + 4)}" y="${H - pad - h}" width="${bw}" height="${h}" fill="${color}"><title>${m}@${k} ${v.toFixed(4)}</title></rect>`;
    });
    out += `<text x="${x0}" y="${H - 10}" font-size="12">@${k}</text>`;
  });
  out += `<text x="${pad}" y="14" font-size="12" fill="#3b6ea8">■ Recall</text><text x="${pad + 70}" y="14" font-size="12" fill="#c77c1e">■ NDCG</text>` +
    `<text x="${W - 4}" y="14" font-size="12" text-anchor="end">max ${max.toFixed(4)}</text>`;
  svg.innerHTML = out;
}

async function evaluate({ limit, maxNewTokens, batchSize = 8 }) {
  const rows = pickedRows ?? (serverFiles?.data ? { source: serverFiles.data.name, url: serverFiles.data.url } : null);
  if (!rows) throw new Error('pick a JSONL file of rows first');
  const bar = $('eval-progress');
  const result = await call('evaluate', { ...rows, limit, batchSize, maxNewTokens }, (p) => {
    bar.max = p.prompts;
    bar.value = p.prompts_done + Math.min(1, p.step / p.max_steps) * Math.min(batchSize, p.prompts - p.prompts_done);
    $('eval-status').textContent = `${p.prompts_done}/${p.prompts} prompts`;
  });
  const s = result.summary;
  bar.value = bar.max;
  $('eval-status').textContent = `${s.rows} rows · in-catalog ${s.in_catalog_rate.toFixed(3)} · valid format ${s.valid_format_rate.toFixed(3)} · mean list length ${s.mean_list_length.toFixed(1)}`;
  const body = document.querySelector('#eval-table tbody');
  body.textContent = '';
  for (const k of [5, 10, 15, 20]) for (const m of ['recall', 'ndcg']) {
    const r = body.insertRow();
    r.insertCell().textContent = `${m}@${k}`;
    for (const v of [s[`${m}@${k}`].mean, s[`${m}@${k}`].se]) { const c = r.insertCell(); c.className = 'num'; c.textContent = v.toFixed(4); }
  }
  drawChart(s);
  return result;
}
$('evaluate').onclick = () => evaluate({ limit: Number($('eval-rows').value), maxNewTokens: Number($('eval-tokens').value) })
  .catch((e) => { $('eval-status').textContent = message(e); });

// --- benchmark -----------------------------------------------------------------------------------
async function runBenchmark({ model, tokens, group, budgetMs = 300 }) {
  const body = document.querySelector('#bench-table tbody');
  body.textContent = '';
  const fmt = (v, p) => (v === null || v === undefined ? '–' : v.toFixed(p));
  const result = await call('benchmark', { model, tokens, group, budgetMs }, (c) => {
    const r = body.insertRow();
    for (const [t, num] of [[c.op, false], [c.shape, false], [fmt(c.secs * 1e3, 3), true], [fmt(c.gflops, 1), true], [fmt(c.gbps, 1), true]]) {
      const cell = r.insertCell(); cell.textContent = t; if (num) cell.className = 'num';
    }
  });
  return result;
}
$('benchmark').onclick = () => {
  $('benchmark').disabled = true;
  runBenchmark({ model: $('bench-model').value, tokens: Number($('bench-tokens').value), group: $('bench-group').value })
    .catch((e) => { document.querySelector('#bench-table tbody').textContent = message(e); })
    .finally(() => { $('benchmark').disabled = false; });
};

// --- start -----------------------------------------------------------------------------------------
async function main() {
  if (!navigator.gpu) {
    const v = { pass: false, error: 'this browser has no WebGPU (navigator.gpu is missing)' };
    $('adapter').textContent = v.error;
    showVerdict(v);
    if (params.has('report')) await post(v);
    return;
  }
  try {
    const r = await fetch('api/files.json');
    if (r.ok) {
      serverFiles = await r.json();
      if (serverFiles.model) {
        $('load-server').disabled = false;
        $('load-server').textContent = `Load ${serverFiles.model.name}${serverFiles.adapter ? ' + adapter' : ''}`;
      }
      if (serverFiles.data) $('data-name').textContent = serverFiles.data.name;
    }
  } catch { /* a plain static server: file pickers only */ }

  const check = await selfCheck();
  showVerdict(check);
  if (params.get('auto') === 'full') return post(await automatic(check));
  if (params.has('report')) await post(check);
}

// The browser test's script: every section once, one combined report.
async function automatic(check) {
  const report = { selfcheck: check };
  const step = async (name, f) => {
    try { report[name] = await f(); } catch (e) { report[name] = { error: message(e) }; }
  };
  const maxNewTokens = Number(params.get('max_new_tokens') ?? 64);
  $('rec-tokens').value = $('eval-tokens').value = maxNewTokens;
  $('eval-rows').value = params.get('rows') ?? 2;
  await step('load', () => load(serverFiles.model.name, serverFiles.model.files.concat(serverFiles.adapter ?? [])));
  if (params.has('conversation')) $('conversation').value = params.get('conversation');
  await step('recommend', () => recommend({ conversation: $('conversation').value, temperature: 0, maxNewTokens }));
  await step('evaluate', () => evaluate({ limit: Number(params.get('rows') ?? 2), maxNewTokens, batchSize: Number(params.get('batch') ?? 8) }));
  await step('benchmark', () => runBenchmark({ model: 'smollm2', tokens: Number(params.get('bench_tokens') ?? 8), group: 'linear', budgetMs: 100 }));
  report.pass = check.pass && ['load', 'recommend', 'evaluate', 'benchmark'].every((k) => !report[k].error);
  document.body.dataset.verdict = report.pass ? 'pass' : 'fail';
  document.body.dataset.finished = 'yes'; // scripts/screenshot_page.py waits for this
  return report;
}

async function post(report) {
  if (params.has('report')) await fetch(params.get('report'), { method: 'POST', body: JSON.stringify(report) });
}

main();
