// Page logic: load the WASM core, describe the adapter, run the kernel self-check.
// With ?report=PATH the verdict is also POSTed to PATH (the browser test reads it there).
import init, { self_check } from './pkg/convrec_wasm.js';

const params = new URLSearchParams(location.search);

function showAdapter(a) {
  const l = a.limits;
  document.getElementById('adapter').textContent =
    `${a.name} (${a.backend}, ${a.device_type}) driver ${a.driver} ${a.driver_info}\n` +
    `shader-f16 ${a.shader_f16}, subgroups ${a.subgroups}, timestamp queries ${a.timestamp_queries}\n` +
    `max storage binding ${l.max_storage_buffer_binding_size} B, ${l.max_storage_buffers_per_shader_stage} storage buffers/stage, ` +
    `${l.max_compute_workgroup_storage_size} B workgroup memory, ${l.max_compute_invocations_per_workgroup} invocations/workgroup`;
}

function showCases(cases) {
  const body = document.querySelector('#checks tbody');
  for (const c of cases) {
    const row = body.insertRow();
    for (const text of [c.op, c.shape, c.rel_err.toExponential(2), c.pass ? 'ok' : 'FAIL']) row.insertCell().textContent = text;
    row.lastChild.className = c.pass ? 'pass' : 'fail';
  }
}

async function main() {
  let verdict;
  try {
    if (!navigator.gpu) throw new Error('this browser has no WebGPU (navigator.gpu is missing)');
    await init();
    const report = JSON.parse(await self_check());
    showAdapter(report.adapter);
    showCases(report.cases);
    verdict = report;
  } catch (e) {
    verdict = { pass: false, error: String(e && e.message ? e.message : e) };
    document.getElementById('adapter').textContent = verdict.error;
  }
  const el = document.getElementById('verdict');
  el.textContent = verdict.pass ? 'all kernels match their CPU references' : `FAILED: ${verdict.error ?? 'a kernel disagrees with its reference'}`;
  el.className = verdict.pass ? 'pass' : 'fail';
  document.body.dataset.verdict = verdict.pass ? 'pass' : 'fail';
  if (params.has('report')) {
    await fetch(params.get('report'), { method: 'POST', body: JSON.stringify(verdict) });
  }
}

main();
