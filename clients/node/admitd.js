'use strict';
/**
 * A tiny admitd client for Node.js: acquire a lease, read a rejection's rich details, release.
 *
 *   const { AdmitdClient } = require('./admitd');
 *   const admitd = new AdmitdClient('localhost:50051', { tenant: 'search' });
 *   const lease = await admitd.acquire({ pool: 'openai/gpt-4o', inputTokens: 1200, maxOutputTokens: 512 });
 *   try { ... call the provider ... } finally {
 *     await admitd.release(lease.lease_id, { inputTokens: 1187, outputTokens: 231 });
 *   }
 *
 * Waits in admitd's queue can be watched, `for await (const update of admitd.acquireStream(...))`
 * ({ queued: {...} } updates, then { lease: {...} }), or deferred: `enqueue` returns a ticket at
 * once, and `getTicket` / `waitTicket` / `cancelTicket` follow it until it holds a lease.
 *
 * An acquire may name `fallbackPools` (lease.pool says which granted) and a `dedupKey`: an
 * identical call in flight is joined (lease.dedup_role 'FOLLOWER', lease.shared_result: the
 * leader's result; nothing to release) instead of reserving. Release reports the outcome, a
 * provider's retry-after (`providerRetryAfterSeconds`: admitd pauses the pool for everyone)
 * and a leader's `result` for its followers. `getUsage` reads the cost ledger.
 *
 * Options are strict: an unknown key throws a TypeError naming what was meant. `acquire` takes
 * the provider request as it stands (`request`: the arguments of OpenAI's
 * chat.completions.create / responses.create or Anthropic's messages.create; `api` names
 * which) and reserves what it may use (reserve.js); the pool is `modelPools[model]`, else
 * `<provider>/<model>`. Calls admitd does not answer are retried until their deadline
 * (calls.js): Acquire within the caller's, Release until the lease expires.
 *
 * The service is loaded at run time from the repository's contract,
 * protos/admitd/v1/admission.proto, with @grpc/proto-loader, so it cannot drift from the
 * server. A rejection is RESOURCE_EXHAUSTED (ABORTED for a dedup follower that gets no result:
 * DEDUP_LEADER_FAILED, DEDUP_IN_FLIGHT) with a google.rpc.Status in the
 * grpc-status-details-bin trailer; it is decoded with protobufjs from the genuine googleapis
 * definitions vendored in protos/google/rpc (README.md there says why and from where).
 */

const crypto = require('node:crypto');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { AdmitdError, decodeStatus, duration, durationSeconds } = require('./status');
const {
  RECONNECT_OPTIONS,
  checkOptions,
  outcomeFor,
  providerRetryAfterSeconds,
  retryPolicy,
  withRetries,
} = require('./calls');
const { poolFor, reserve } = require('./reserve');

const REPO_PROTOS = path.resolve(__dirname, '..', '..', 'protos');
const OUTCOMES = ['OK', 'PROVIDER_RATE_LIMITED', 'PROVIDER_ERROR', 'TIMEOUT', 'CANCELLED'];
const PRIORITIES = ['CRITICAL', 'HIGH', 'NORMAL', 'LOW'];
const CLIENT_OPTIONS = ['tenant', 'credentials', 'metadata', 'timeoutMs', 'protoDir', 'modelPools',
  'retry', 'channelOptions', 'sleep', 'random', 'now']; // prettier-ignore
const ACQUIRE_OPTIONS = ['pool', 'fallbackPools', 'dedupKey', 'inputTokens', 'maxOutputTokens',
  'prompt', 'waitTimeoutSeconds', 'priority', 'idempotencyKey', 'labels', 'tenant', 'timeoutMs',
  'request', 'api']; // prettier-ignore
const RELEASE_OPTIONS = ['inputTokens', 'outputTokens', 'outcome', 'tenant',
  'providerRetryAfterSeconds', 'result']; // prettier-ignore
const RENAMED = {
  maxTokens: "admitd calls it 'maxOutputTokens' (or pass the provider request as request)",
  max_tokens: "admitd calls it 'maxOutputTokens' (or pass the provider request as request)",
  tools: 'pass the whole provider request as request to reserve for it',
  messages: 'pass the whole provider request as request to reserve for it',
};

/** The Admission service constructor, from admission.proto under `protoDir`. */
function loadAdmission(protoDir = REPO_PROTOS) {
  const definition = protoLoader.loadSync('admitd/v1/admission.proto', {
    includeDirs: [protoDir],
    keepCase: true, // field names as in the .proto: lease_id, reserved_tokens, ...
    longs: String, // int64 arrives as a string; converted to Number below
    enums: String,
    defaults: true,
    oneofs: true, // AcquireStreamResponse.update names the member that is set
  });
  return grpc.loadPackageDefinition(definition).admitd.v1.Admission;
}

function isoTime(timestamp) {
  return new Date(Number(timestamp.seconds) * 1000 + Math.floor(timestamp.nanos / 1e6)).toISOString();
}

const DEDUP_ROLES = { DEDUP_ROLE_LEADER: 'LEADER', DEDUP_ROLE_FOLLOWER: 'FOLLOWER' };

/**
 * A Lease. With a dedupKey: dedup_role 'LEADER' (release it with a `result` to share) or
 * 'FOLLOWER' (no lease_id, nothing to release; shared_result: the leader's result, a Buffer),
 * and dedup_leader_id; without: null, null and ''.
 */
function leaseObject(lease) {
  const role = DEDUP_ROLES[lease.dedup_role] || null;
  return {
    lease_id: lease.lease_id,
    tenant: lease.tenant,
    pool: lease.pool,
    input_tokens: Number(lease.input_tokens),
    reserved_tokens: Number(lease.reserved_tokens),
    reserved_usd: lease.reserved_usd,
    expires_at: isoTime(lease.expires_at),
    queued_for_seconds: durationSeconds(lease.queued_for),
    dedup_role: role,
    dedup_leader_id: lease.dedup_leader_id,
    shared_result: role === 'FOLLOWER' ? Buffer.from(lease.shared_result) : null,
  };
}

/** A QueuePosition: waiters ahead (0: next), waiters in the pool's queue, estimated wait. */
function positionObject(position) {
  return {
    position: Number(position.position),
    depth: Number(position.depth),
    estimated_wait_seconds: durationSeconds(position.estimated_wait),
  };
}

/**
 * A Ticket: { ticket_id, state: 'QUEUED' | 'GRANTED', position (while queued, else null),
 * wait_deadline (while queued: when it leaves the queue unserved, ISO time; else null),
 * lease (once granted, else null) }.
 */
function ticketObject(ticket) {
  const granted = ticket.state === 'TICKET_STATE_GRANTED';
  return {
    ticket_id: ticket.ticket_id,
    state: granted ? 'GRANTED' : 'QUEUED',
    position: granted ? null : positionObject(ticket.position),
    wait_deadline: granted ? null : isoTime(ticket.wait_deadline),
    lease: granted ? leaseObject(ticket.lease) : null,
  };
}

class AdmitdClient {
  /**
   * @param {string} target host:port of admitd
   * @param {object} [options]
   * @param {string} [options.tenant] tenant the calls are made for
   * @param {grpc.ChannelCredentials} [options.credentials] default: plaintext
   * @param {Object<string,string>} [options.metadata] sent with every call, e.g.
   *   { authorization: 'Bearer <key>' }
   * @param {number} [options.timeoutMs] deadline of each call (Acquire: plus its wait)
   * @param {string} [options.protoDir] folder holding admitd/v1/admission.proto
   * @param {Object<string,string>} [options.modelPools] the pool of each model, for an acquire
   *   with `request` (default `<provider>/<model>`)
   * @param {object} [options.retry] { maxAttempts (null: until the call's deadline),
   *   initialBackoffMs: 100, maxBackoffMs: 1000, multiplier: 2 }
   * @param {object} [options.channelOptions] gRPC channel options (the reconnect backoff is
   *   capped at 1 s unless these set it)
   */
  constructor(target, options = {}) {
    checkOptions('AdmitdClient', options, CLIENT_OPTIONS);
    const Admission = loadAdmission(options.protoDir);
    this.tenant = options.tenant || '';
    this.timeoutMs = options.timeoutMs || 10000;
    this.modelPools = options.modelPools || {};
    this.retry = retryPolicy(options.retry);
    this.clock = {
      sleep: options.sleep || ((ms) => new Promise((resolve) => setTimeout(resolve, ms))),
      random: options.random || Math.random,
      now: options.now || Date.now,
    };
    this.metadata = new grpc.Metadata();
    for (const [key, value] of Object.entries(options.metadata || {})) this.metadata.set(key, value);
    const channel = { ...RECONNECT_OPTIONS, ...(options.channelOptions || {}) };
    this.stub = new Admission(target, options.credentials || grpc.credentials.createInsecure(), channel);
  }

  /** The one path of every unary call: deadline, metadata, retries (calls.js). */
  _call(method, request, timeoutMs = this.timeoutMs, budgetMs = timeoutMs) {
    const once = (each) =>
      new Promise((resolve, reject) => {
        const deadline = new Date(this.clock.now() + each);
        this.stub[method](request, this.metadata, { deadline }, (error, response) => {
          if (error) reject(new AdmitdError(error));
          else resolve(response);
        });
      });
    return withRetries(this.retry, once, timeoutMs, budgetMs, this.clock);
  }

  /**
   * Acquire a lease. Rejects with an AdmitdError whose `rejected` is true (and `reason`,
   * `retryAfterSeconds`, `metadata` set) when admitd refuses the call.
   */
  async acquire(args) {
    const { request, budgetMs } = this._acquireRequest(args, 'acquire');
    return leaseObject(await this._call('Acquire', request, budgetMs));
  }

  /**
   * Acquire, telling a waiting caller where it stands: an async iterator of
   * `{ queued: { position, depth, estimated_wait_seconds } }` whenever the place in the queue
   * or the estimate changes, then `{ lease: {...} }` (the last item). A rejection is thrown
   * as for acquire; leaving the loop early cancels the wait (the caller leaves the queue).
   *
   *   for await (const update of admitd.acquireStream({ pool, inputTokens, waitTimeoutSeconds: 60 })) {
   *     if (update.queued) console.log(`${update.queued.position} ahead`);
   *     else lease = update.lease;
   *   }
   */
  async *acquireStream(args) {
    const { request, budgetMs } = this._acquireRequest(args, 'acquireStream');
    const deadline = new Date(Date.now() + budgetMs);
    const call = this.stub.AcquireStream({ acquire: request }, this.metadata, { deadline });
    let done = false;
    try {
      for await (const message of call) {
        if (message.update === 'lease') {
          done = true;
          yield { lease: leaseObject(message.lease) };
          return;
        }
        if (message.update === 'queued') yield { queued: positionObject(message.queued) };
      }
    } catch (error) {
      done = true; // the call already ended
      throw error.code === undefined ? error : new AdmitdError(error);
    } finally {
      if (!done) {
        call.on('error', () => {}); // the CANCELLED status that cancel() causes
        call.cancel();
      }
    }
    throw new Error('AcquireStream ended without a lease');
  }

  /**
   * Deferred admission: take a place in the fair queue and get a ticket at once (see
   * ticketObject; already GRANTED when the call fits now). Takes acquire's arguments;
   * `waitTimeoutSeconds` bounds how long the ticket may wait (0: the server's
   * queue.ticket_max_wait). Rejects like acquire when the call can never fit or the queue is full.
   */
  async enqueue(args) {
    const { request } = this._acquireRequest(args, 'enqueue');
    return ticketObject(await this._call('Enqueue', { acquire: request }, args.timeoutMs));
  }

  /**
   * The ticket now; a granted ticket's lease is claimed by this call (release it as usual).
   * A ticket that left the queue unserved rejects like acquire (reason QUEUE_TIMEOUT, ...);
   * a cancelled or unknown one with NOT_FOUND.
   */
  async getTicket(ticketId, { tenant = this.tenant } = {}) {
    return ticketObject(await this._call('GetTicket', { ticket_id: ticketId, tenant }));
  }

  /** Like getTicket, after waiting up to waitTimeoutSeconds for the grant. */
  async waitTicket(ticketId, { waitTimeoutSeconds = 0, tenant = this.tenant } = {}) {
    const request = { ticket_id: ticketId, tenant, wait_timeout: duration(waitTimeoutSeconds) };
    const budget = this.timeoutMs + waitTimeoutSeconds * 1000;
    return ticketObject(await this._call('WaitTicket', request, budget));
  }

  /** Leave the queue. False when there was nothing left to cancel (a claimed lease: release it). */
  async cancelTicket(ticketId, { tenant = this.tenant } = {}) {
    return (await this._call('CancelTicket', { ticket_id: ticketId, tenant })).cancelled;
  }

  _acquireRequest(args, where) {
    checkOptions(where, args, ACQUIRE_OPTIONS, RENAMED);
    const given = ['request', 'prompt', 'inputTokens'].filter((key) => args[key] !== undefined && args[key] !== '');
    if (given.length > 1) throw new TypeError(`${where}(): one of request, prompt, inputTokens; got ${given.join(', ')}`);
    let { pool, inputTokens = 0, maxOutputTokens } = args;
    if (args.request !== undefined) {
      const reservation = reserve(args.api || null, args.request);
      inputTokens = reservation.inputTokens;
      if (maxOutputTokens === undefined) maxOutputTokens = reservation.maxOutputTokens;
      if (!pool) pool = poolFor(reservation.api, reservation.model, this.modelPools);
    }
    if (!pool) throw new TypeError(`${where}(): needs pool (or request naming the model)`);
    const {
      fallbackPools = [],
      dedupKey = '',
      prompt = '',
      waitTimeoutSeconds = 0,
      priority = 'NORMAL',
      idempotencyKey = crypto.randomBytes(16).toString('hex'),
      labels = {},
      tenant = this.tenant,
      timeoutMs,
    } = args;
    if (!PRIORITIES.includes(priority)) throw new Error(`priority: one of ${PRIORITIES}`);
    const request = {
      tenant,
      pool,
      fallback_pools: fallbackPools,
      dedup_key: dedupKey,
      input_tokens: String(inputTokens),
      max_output_tokens: String(maxOutputTokens || 0),
      prompt,
      priority: `PRIORITY_${priority}`,
      idempotency_key: idempotencyKey,
      labels,
    };
    if (waitTimeoutSeconds > 0) request.wait_timeout = duration(waitTimeoutSeconds);
    return { request, budgetMs: (timeoutMs || this.timeoutMs) + waitTimeoutSeconds * 1000 };
  }

  /**
   * Release `lease` (a lease from acquire: retried until it expires; or its lease_id) with
   * the tokens actually used: both counts, or neither (then admitd charges the full
   * reservation). `outcome`: how the provider call ended, one of OUTCOMES (it feeds the
   * pool's circuit breaker and adaptive limits). `providerRetryAfterSeconds`: the provider's
   * retry-after (e.g. from a 429's `retry-after` header): admitd pauses the pool that long for
   * every caller. `result` (a Buffer or a string): a dedup leader's result for the calls that
   * joined it (with outcome OK; at most the server's lease.max_shared_result, 64 KiB by default).
   * A lease that had expired: rejects with an AdmitdError whose `leaseEnded` is true (reason
   * LEASE_EXPIRED); admitd recorded the usage all the same, and its metadata says what was
   * charged (charged_tokens, charged_usd).
   */
  async release(lease, options = {}) {
    checkOptions('release', options, RELEASE_OPTIONS);
    const {
      inputTokens,
      outputTokens,
      outcome = 'OK',
      tenant = this.tenant,
      providerRetryAfterSeconds = 0,
      result = null,
    } = options;
    // A lease object: retried until it expires (Release is idempotent); an id: timeoutMs.
    const leaseId = typeof lease === 'string' ? lease : lease.lease_id;
    const expiry = typeof lease === 'string' ? 0 : Date.parse(lease.expires_at);
    if (!OUTCOMES.includes(outcome)) throw new Error(`outcome: one of ${OUTCOMES}`);
    if ((inputTokens === undefined) !== (outputTokens === undefined)) {
      throw new Error('release: give both inputTokens and outputTokens, or neither');
    }
    const request = { lease_id: leaseId, outcome: `OUTCOME_${outcome}`, tenant };
    if (inputTokens !== undefined) {
      request.usage = { input_tokens: String(inputTokens), output_tokens: String(outputTokens) };
    }
    if (providerRetryAfterSeconds > 0) {
      request.provider_retry_after = duration(providerRetryAfterSeconds);
    }
    if (result !== null) request.result = Buffer.isBuffer(result) ? result : Buffer.from(result);
    const reply = await this._call('Release', request, this.timeoutMs, expiry - this.clock.now());
    return {
      charged_tokens: Number(reply.charged_tokens),
      refunded_tokens: Number(reply.refunded_tokens),
      already_released: reply.already_released,
      charged_usd: reply.charged_usd,
    };
  }

  /**
   * The cost ledger: tokens and USD charged per UTC day, tenant and pool, as rows { day
   * ('YYYY-MM-DD'), tenant, pool, calls, input_tokens, output_tokens, usd }, by day, then
   * tenant, then pool. fromDay defaults to today (UTC), toDay to fromDay; tenant '' means every
   * tenant the caller may see, pool '' every pool.
   */
  async getUsage({ fromDay = '', toDay = '', tenant = '', pool = '' } = {}) {
    const request = { from_day: fromDay, to_day: toDay, tenant, pool };
    const reply = await this._call('GetUsage', request);
    return reply.rows.map((row) => ({
      day: row.day,
      tenant: row.tenant,
      pool: row.pool,
      calls: Number(row.calls),
      input_tokens: Number(row.input_tokens),
      output_tokens: Number(row.output_tokens),
      usd: row.usd,
    }));
  }

  /** Extend a lease (0: by the server's lease TTL). An expired one: LEASE_EXPIRED (see release). */
  async renew(leaseId, { extendBySeconds = 0, tenant = this.tenant } = {}) {
    const request = { lease_id: leaseId, tenant };
    if (extendBySeconds > 0) request.extend_by = duration(extendBySeconds);
    return leaseObject(await this._call('Renew', request));
  }

  close() {
    this.stub.close();
  }
}

module.exports = {
  AdmitdClient,
  AdmitdError,
  decodeStatus,
  loadAdmission,
  OUTCOMES,
  reserve,
  providerRetryAfterSeconds,
  outcomeFor,
};
