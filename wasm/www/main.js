// Page logic. Everything heavy runs in worker.js (the WASM core on WebGPU); this file only talks
// to it and draws. Query parameters:
//   ?report=PATH            run the kernel self-check and POST its report to PATH (browser test)
//   ?auto=full&report=PATH  also load the server's model, recommend, evaluate `rows` rows with
//                           `max_new_tokens`, run one benchmark, and POST everything to PATH
//   ?auto=train&sft_steps=N&rl_steps=M&report=PATH
//                           load the server's model, train N SFT steps then M RL steps on the
//                           server's rows and catalog (settings: sft_rows, sft_batch, sft_lr, sft_r,
//                           sft_length, sft_epochs, seed, algo, group, rl_prompts, rl_lr, rl_tokens), and POST the
//                           per-step numbers and the adapter (SHA-256 and files) to PATH
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
  for (const id of ['recommend', 'evaluate', 'sft-start', 'rl-start']) $(id).disabled = false;
  $('adapter-download').disabled = !info.lora;
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

// The rows Evaluate and Train read: a picked file, else the server's.
function currentRows() {
  const rows = pickedRows ?? (serverFiles?.data ? { source: serverFiles.data.name, url: serverFiles.data.url } : null);
  if (!rows) throw new Error('pick a JSONL file of rows first');
  return rows;
}

async function evaluate({ limit, maxNewTokens, batchSize = 8 }) {
  const rows = currentRows();
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

// --- train ---------------------------------------------------------------------------------------
let stopRequested = false;

// Lines of one or more series on a shared y axis; `series`: [{label, color, points: [[x, y]]}].
function drawLines(svg, series, xLabel) {
  const all = series.flatMap((s) => s.points);
  if (!all.length) { svg.innerHTML = ''; return; }
  const W = Number(svg.getAttribute('width')), H = Number(svg.getAttribute('height')), pad = 36;
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1)];
  const [y0, y1] = [Math.min(0, ...ys), Math.max(...ys, 1e-9)];
  const X = (x) => pad + (W - 2 * pad) * (x - x0) / (x1 - x0), Y = (y) => H - pad - (H - 2 * pad) * (y - y0) / (y1 - y0);
  let out = `<line x1="${pad}" y1="${H - pad}" x2="${W - pad}" y2="${H - pad}" stroke="#888"/>` +
    `<text x="${W - pad}" y="${H - 8}" font-size="11" text-anchor="end">${xLabel} ${x1}</text>` +
    `<text x="4" y="${pad - 4}" font-size="11">${y1.toPrecision(3)}</text><text x="4" y="${H - pad}" font-size="11">${y0.toPrecision(3)}</text>`;
  series.forEach((s, i) => {
    if (!s.points.length) return;
    out += `<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${s.points.map(([x, y]) => `${X(x)},${Y(y)}`).join(' ')}"/>`;
    const last = s.points[s.points.length - 1][1];
    out += `<text x="${pad + 4 + i * 170}" y="14" font-size="12" fill="${s.color}">■ ${s.label} ${last.toPrecision(4)}</text>`;
  });
  svg.innerHTML = out;
}

function drawTraining(stage, steps) {
  const pts = (key) => steps.filter((s) => Number.isFinite(s[key])).map((s) => [s.step, s[key]]);
  const series = stage === 'sft'
    ? [{ label: 'SFT loss', color: '#3b6ea8', points: pts('loss') }]
    : [{ label: 'mean reward per rank', color: '#1a7f37', points: pts('mean_reward') },
       { label: 'sampled NDCG@20', color: '#c77c1e', points: pts('ndcg20') },
       { label: 'loss', color: '#3b6ea8', points: pts('loss') }];
  drawLines($('train-chart'), series, 'step');
}

// One run: start it, step it until `steps` (or its end, or Stop), then make its adapter the session's.
async function train(stage, settings, steps) {
  const rows = currentRows();
  stopRequested = false;
  for (const id of ['sft-start', 'rl-start', 'adapter-download']) $(id).disabled = true;
  $('train-stop').disabled = false;
  try {
    const info = await call(stage === 'sft' ? 'startSft' : 'startRl', { ...rows, settings });
    const history = [];
    $('train-status').textContent = `${stage}: started (${JSON.stringify(info)})`;
    for (let i = 0; i < steps && !stopRequested; i++) {
      const s = await call('trainStep');
      history.push(s);
      drawTraining(stage, history);
      $('train-status').textContent = stage === 'sft'
        ? `SFT step ${s.step}/${Math.min(steps, info.steps)} · loss ${s.loss.toFixed(4)} · ${s.step_s.toFixed(1)} s/step`
        : `${info.algo} step ${s.step} · mean reward ${s.mean_reward.toFixed(3)} · NDCG@20 ${s.ndcg20.toFixed(3)} · loss ${s.loss.toExponential(2)} · ${s.step_s.toFixed(1)} s/step`;
      if (s.done) break;
    }
    const adapter = await call('finishTraining');
    $('train-status').textContent += stopRequested ? ' · stopped; adapter kept' : ' · done; adapter kept';
    showModel(await call('info'));
    return { info, steps: history, adapter };
  } finally {
    for (const id of ['sft-start', 'rl-start']) $(id).disabled = false;
    $('train-stop').disabled = true;
  }
}

function sftSettings() {
  const q = (id) => Number($(id).value);
  return { limit: q('sft-rows'), batch_size: q('sft-batch'), lr: q('sft-lr'), lora_r: q('sft-r'), lora_alpha: 2 * q('sft-r'), max_length: q('sft-length') };
}
function rlSettings() {
  return { algo: $('rl-algo').value, group_size: Number($('rl-group').value), prompts_per_step: Number($('rl-prompts').value),
    lr: Number($('rl-lr').value), max_new_tokens: Number($('rl-tokens').value) };
}
const trainFailed = (e) => { $('train-status').textContent = message(e); };
$('sft-start').onclick = () => train('sft', sftSettings(), Number($('sft-steps').value)).catch(trainFailed);
$('rl-start').onclick = () => train('rl', rlSettings(), Number($('rl-steps').value)).catch(trainFailed);
$('train-stop').onclick = () => { stopRequested = true; $('train-stop').disabled = true; };

async function adapterFiles() {
  const { config, weights } = await call('adapterFiles');
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', weights));
  return { config, weights, sha256: [...digest].map((b) => b.toString(16).padStart(2, '0')).join('') };
}
$('adapter-download').onclick = async () => {
  try {
    const { config, weights } = await adapterFiles();
    for (const [name, body, type] of [['adapter_config.json', config, 'application/json'], ['adapter_model.safetensors', weights, 'application/octet-stream']]) {
      const a = document.createElement('a');
      a.href = URL.createObjectURL(new Blob([body], { type }));
      a.download = name;
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    }
  } catch (e) { trainFailed(e); }
};

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
  if (params.get('auto') === 'train') return post(await automaticTraining(check));
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

// The browser test's training script: SFT, then RL, on the server's files; numbers and adapter.
async function automaticTraining(check) {
  const report = { selfcheck: check };
  const num = (key, fallback) => Number(params.get(key) ?? fallback);
  try {
    report.load = await load(serverFiles.model.name, serverFiles.model.files.concat(serverFiles.adapter ?? []));
    const seed = num('seed', 0);
    const sft = await train('sft', {
      limit: num('sft_rows', 0), batch_size: num('sft_batch', 2), lr: num('sft_lr', 1e-3), lora_r: num('sft_r', 16),
      lora_alpha: 2 * num('sft_r', 16), max_length: num('sft_length', 512), epochs: num('sft_epochs', 1), seed,
    }, num('sft_steps', 2));
    report.sft = { info: sft.info, losses: sft.steps.map((s) => s.loss), grad_norms: sft.steps.map((s) => s.grad_norm) };
    if (num('rl_steps', 0) > 0) {
      const rl = await train('rl', {
        algo: params.get('algo') ?? 'rank-grpo', group_size: num('group', 2), prompts_per_step: num('rl_prompts', 1),
        lr: num('rl_lr', 1e-5), max_new_tokens: num('rl_tokens', 16), seed,
      }, num('rl_steps', 1));
      report.rl = { info: rl.info, losses: rl.steps.map((s) => s.loss), mean_rewards: rl.steps.map((s) => s.mean_reward),
        grad_norms: rl.steps.map((s) => s.grad_norm), kl: rl.steps.map((s) => s.kl) };
    }
    const files = await adapterFiles();
    let binary = '';
    for (const b of files.weights) binary += String.fromCharCode(b);
    report.adapter = { sha256: files.sha256, config: files.config, weights_base64: btoa(binary) };
    report.pass = check.pass;
  } catch (e) {
    report.error = message(e);
    report.pass = false;
  }
  document.body.dataset.verdict = report.pass ? 'pass' : 'fail';
  document.body.dataset.finished = 'yes';
  return report;
}

async function post(report) {
  if (params.has('report')) await fetch(params.get('report'), { method: 'POST', body: JSON.stringify(report) });
}

main();
