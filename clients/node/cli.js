#!/usr/bin/env node
'use strict';
/**
 * Command line over admitd.js; prints one JSON object on stdout, so scripts and tests can
 * drive it (tests/test_node_client.py runs it against a real admitd).
 *
 *   node cli.js acquire --target HOST:PORT --tenant T --pool P [--input-tokens N | --prompt TEXT]
 *                       [--max-output-tokens N] [--wait-timeout SECONDS] [--priority HIGH]
 *                       [--fallback-pools P2,P3] [--dedup-key KEY]
 *   node cli.js release --target HOST:PORT --lease-id ID [--tenant T]
 *                       [--used-input-tokens N --used-output-tokens N]
 *                       [--outcome OK|PROVIDER_RATE_LIMITED|PROVIDER_ERROR|TIMEOUT|CANCELLED]
 *                       [--provider-retry-after SECONDS] [--result TEXT]
 *   node cli.js demo    --target HOST:PORT --tenant T --pool P [acquire's and release's options]
 *       acquire, acquire the same again (on a pool with max_concurrency 1: rejected), release
 *   node cli.js stream  [acquire's options]      a streamed wait (AcquireStream)
 *   node cli.js enqueue [acquire's options]      a ticket (--wait-timeout: how long it may wait)
 *   node cli.js get-ticket    --ticket-id ID [--tenant T]
 *   node cli.js wait-ticket   --ticket-id ID [--tenant T] [--wait-timeout SECONDS]
 *   node cli.js cancel-ticket --ticket-id ID [--tenant T]
 *   node cli.js usage   [--from-day YYYY-MM-DD] [--to-day YYYY-MM-DD] [--tenant T] [--pool P]
 *   node cli.js reserve --request JSON [--api openai.chat|openai.responses|anthropic.messages]
 *       what a provider request reserves (no call to admitd)
 *   node cli.js lease   [acquire's options] [release's options]
 *       acquire, print {"lease": ...}, wait for a line on stdin, then release (retried until
 *       the lease expires) and print the result
 *
 * acquire, stream, enqueue and lease take --request JSON (and --api) instead of
 * --input-tokens: the provider call's arguments, from which the reservation and the pool
 * (<provider>/<model> unless --pool) are derived.
 *
 * Output: {"ok": true, "lease": {...}} / {"ok": true, "release": {...}} /
 * {"ok": true, "ticket": {...}} / {"ok": true, "cancelled": true|false} /
 * {"ok": true, "rows": [...]} /
 * {"ok": false, "error": {"codeName", "reason", "retryAfterSeconds", "metadata", ...}}.
 * A dedup follower's lease.shared_result is printed in base64.
 * `stream` first prints a line {"queued": {"position", "depth", "estimated_wait_seconds"}} for
 * each update as it arrives, then {"ok": true, "updates": [...], "lease": {...}}.
 * Exit status: 0 done, 2 rejected (RESOURCE_EXHAUSTED, or ABORTED, with a reason), 1 any other
 * failure.
 */

const { parseArgs } = require('node:util');
const { AdmitdClient, AdmitdError, reserve } = require('./admitd');

const OPTIONS = {
  target: { type: 'string', default: 'localhost:50051' },
  tenant: { type: 'string', default: '' },
  pool: { type: 'string' },
  'input-tokens': { type: 'string' },
  'used-input-tokens': { type: 'string' },
  'used-output-tokens': { type: 'string' },
  'max-output-tokens': { type: 'string' },
  prompt: { type: 'string', default: '' },
  'wait-timeout': { type: 'string', default: '0' },
  priority: { type: 'string', default: 'NORMAL' },
  'lease-id': { type: 'string' },
  'ticket-id': { type: 'string' },
  outcome: { type: 'string', default: 'OK' },
  'fallback-pools': { type: 'string', default: '' },
  'dedup-key': { type: 'string', default: '' },
  'provider-retry-after': { type: 'string', default: '0' },
  result: { type: 'string' },
  'from-day': { type: 'string', default: '' },
  'to-day': { type: 'string', default: '' },
  'timeout-ms': { type: 'string', default: '10000' },
  request: { type: 'string' },
  api: { type: 'string' },
};

function count(value, name) {
  if (value === undefined) return undefined;
  const number = Number(value);
  if (!Number.isInteger(number)) throw new Error(`--${name}: an integer, not ${value}`);
  return number;
}

function errorObject(error) {
  if (!(error instanceof AdmitdError)) return { message: error.message };
  const { name, code, codeName, message, reason, domain, metadata, retryAfterSeconds, fieldViolations } = error;
  return { name, code, codeName, message, reason, domain, metadata, retryAfterSeconds, fieldViolations };
}

function acquireArgs(values) {
  const provider = values.request === undefined ? {} : { request: JSON.parse(values.request), api: values.api };
  return {
    ...provider,
    pool: values.pool,
    inputTokens: count(values['input-tokens'], 'input-tokens'),
    maxOutputTokens: count(values['max-output-tokens'], 'max-output-tokens'),
    prompt: values.prompt,
    waitTimeoutSeconds: Number(values['wait-timeout']),
    priority: values.priority,
    fallbackPools: values['fallback-pools'].split(',').filter((name) => name !== ''),
    dedupKey: values['dedup-key'],
  };
}

function releaseArgs(values) {
  return {
    inputTokens: count(values['used-input-tokens'], 'used-input-tokens'),
    outputTokens: count(values['used-output-tokens'], 'used-output-tokens'),
    outcome: values.outcome,
    providerRetryAfterSeconds: Number(values['provider-retry-after']),
    result: values.result === undefined ? null : values.result,
  };
}

/** JSON.stringify replacer: a Buffer (a shared result) as base64 rather than a byte array. */
function base64Buffers(key, value) {
  const raw = this[key]; // before Buffer's own toJSON
  return Buffer.isBuffer(raw) ? raw.toString('base64') : value;
}

function ticketId(values) {
  if (!values['ticket-id']) throw new Error('this command needs --ticket-id');
  return values['ticket-id'];
}

async function run(command, values, client) {
  if (command === 'acquire') {
    return { ok: true, lease: await client.acquire(acquireArgs(values)) };
  }
  if (command === 'release') {
    if (!values['lease-id']) throw new Error('release needs --lease-id');
    return { ok: true, release: await client.release(values['lease-id'], releaseArgs(values)) };
  }
  if (command === 'demo') {
    const lease = await client.acquire(acquireArgs(values));
    let rejection = null;
    try {
      const second = await client.acquire(acquireArgs(values));
      await client.release(second.lease_id); // it fit after all: give it back
    } catch (error) {
      if (!(error instanceof AdmitdError) || !error.rejected) throw error;
      rejection = errorObject(error);
    }
    const release = await client.release(lease.lease_id, releaseArgs(values));
    return { ok: true, lease, rejection, release };
  }
  if (command === 'stream') {
    const updates = [];
    for await (const update of client.acquireStream(acquireArgs(values))) {
      if (update.lease) return { ok: true, updates, lease: update.lease };
      updates.push(update.queued);
      process.stdout.write(`${JSON.stringify(update)}\n`); // as it arrives
    }
  }
  if (command === 'enqueue') {
    return { ok: true, ticket: await client.enqueue(acquireArgs(values)) };
  }
  if (command === 'get-ticket') {
    return { ok: true, ticket: await client.getTicket(ticketId(values)) };
  }
  if (command === 'wait-ticket') {
    const waitTimeoutSeconds = Number(values['wait-timeout']);
    return { ok: true, ticket: await client.waitTicket(ticketId(values), { waitTimeoutSeconds }) };
  }
  if (command === 'cancel-ticket') {
    return { ok: true, cancelled: await client.cancelTicket(ticketId(values)) };
  }
  if (command === 'reserve') {
    return { ok: true, reservation: reserve(values.api || null, JSON.parse(values.request)) };
  }
  if (command === 'lease') {
    const lease = await client.acquire(acquireArgs(values));
    process.stdout.write(`${JSON.stringify({ lease })}\n`);
    await new Promise((resolve) => process.stdin.once('data', resolve));
    process.stdin.pause();
    return { ok: true, lease, release: await client.release(lease, releaseArgs(values)) };
  }
  if (command === 'usage') {
    const { tenant, pool } = values;
    const range = { fromDay: values['from-day'], toDay: values['to-day'] };
    return { ok: true, rows: await client.getUsage({ ...range, tenant, pool: pool || '' }) };
  }
  const commands =
    'acquire, release, demo, stream, enqueue, get-ticket, wait-ticket, cancel-ticket, usage, reserve, lease';
  throw new Error(`unknown command ${JSON.stringify(command)}: ${commands}`);
}

async function main(argv) {
  let result;
  let status = 0;
  let client = null;
  try {
    const { values, positionals } = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true });
    client = new AdmitdClient(values.target, {
      tenant: values.tenant,
      timeoutMs: count(values['timeout-ms'], 'timeout-ms'),
    });
    result = await run(positionals[0], values, client);
  } catch (error) {
    result = { ok: false, error: errorObject(error) };
    status = error instanceof AdmitdError && error.rejected ? 2 : 1;
  } finally {
    if (client !== null) client.close();
  }
  process.stdout.write(`${JSON.stringify(result, base64Buffers)}\n`);
  return status;
}

if (require.main === module) {
  main(process.argv.slice(2)).then((status) => {
    process.exitCode = status;
  });
}

module.exports = { main };
