'use strict';
/**
 * What every call of the Node client goes through: strict options, and retries of the calls
 * admitd did not answer; plus reading a provider's error (outcome, retry-after) the way the
 * Python client does, for the caller to report at release.
 *
 * Retries: UNAVAILABLE and a CANCELLED the server caused (a replica shutting down; the
 * caller's own cancellation never reaches here) are retried with full-jitter backoff, 0.1 s
 * doubling to 1 s (near gRPC's reconnect time, which the client's channel caps at 1 s too),
 * and a refusal for load (reason SERVER_OVERLOADED: nothing was reserved) after its
 * retry-after hint plus up to half of it, until the call's deadline: Acquire's is the caller's (timeoutMs + waitTimeoutSeconds),
 * Release's the lease's expiry (it is idempotent; an unreleased lease holds its slot), every
 * other call's timeoutMs. An attempt that ran out of time is retried while that deadline is
 * not spent.
 */

const RETRYABLE = ['UNAVAILABLE', 'CANCELLED', 'DEADLINE_EXCEEDED'];
const MIN_ATTEMPT_MS = 50;
// A SERVER_OVERLOADED refusal is retried after its hint plus up to this share of it, so the
// callers one overloaded replica turned away do not come back together.
const OVERLOAD_JITTER = 0.5;
const DEFAULT_RETRY = { maxAttempts: null, initialBackoffMs: 100, maxBackoffMs: 1000, multiplier: 2 };
// gRPC's reconnect backoff (1 s, growing 1.6x to 120 s by default) capped near a restart's length.
const RECONNECT_OPTIONS = {
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.min_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 1000,
};

/** Closest of `names` to `name` by edit distance, if close enough to be a typo. */
function closest(name, names) {
  const distance = (a, b) => {
    const row = Array.from({ length: b.length + 1 }, (_, j) => j);
    for (let i = 1; i <= a.length; i += 1) {
      let previous = row[0];
      row[0] = i;
      for (let j = 1; j <= b.length; j += 1) {
        const current = row[j];
        row[j] = Math.min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] === b[j - 1] ? 0 : 1));
        previous = current;
      }
    }
    return row[b.length];
  };
  // Against the whole name, or its start (a unit suffix left off: waitTimeout(Seconds)).
  const score = (candidate) => {
    const [a, b] = [name.toLowerCase(), candidate.toLowerCase()];
    return Math.min(distance(a, b), distance(a, b.slice(0, a.length + 1)));
  };
  const scored = names.map((candidate) => [score(candidate), candidate]);
  scored.sort((x, y) => x[0] - y[0]);
  return scored.length && scored[0][0] <= Math.max(2, Math.floor(name.length / 4)) ? scored[0][1] : null;
}

/** Throw a TypeError for any key of `given` not in `allowed`, naming what was meant. */
function checkOptions(where, given, allowed, renamed = {}) {
  for (const key of Object.keys(given || {})) {
    if (allowed.includes(key)) continue;
    let hint = '';
    if (renamed[key]) hint = `; ${renamed[key]}`;
    else if (closest(key, allowed)) hint = `; did you mean '${closest(key, allowed)}'?`;
    throw new TypeError(`${where}(): unknown option '${key}'${hint}`);
  }
}

function retryPolicy(given = {}) {
  checkOptions('retry', given, Object.keys(DEFAULT_RETRY));
  return { ...DEFAULT_RETRY, ...given };
}

function backoffMs(policy, attempt, uniform) {
  const growth = policy.multiplier ** Math.min(attempt - 1, 64);
  return Math.min(policy.maxBackoffMs, policy.initialBackoffMs * growth) * uniform;
}

/**
 * Call `once(timeoutMs)` until it succeeds, fails for good, or `budgetMs` (at least one
 * `timeoutMs`) is spent. `once` rejects with an AdmitdError (its codeName decides).
 */
async function withRetries(policy, once, timeoutMs, budgetMs, { sleep, random, now }) {
  const deadline = now() + Math.max(budgetMs || 0, timeoutMs);
  let each = timeoutMs;
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await once(each);
    } catch (error) {
      const overloaded = error.reason === 'SERVER_OVERLOADED' && error.rejected;
      if (!overloaded && !RETRYABLE.includes(error.codeName)) throw error;
      if (policy.maxAttempts !== null && attempt >= policy.maxAttempts) throw error;
      const delay = overloaded
        ? (error.retryAfterSeconds || 0) * 1000 * (1 + OVERLOAD_JITTER * random())
        : backoffMs(policy, attempt, random());
      if (now() + delay + MIN_ATTEMPT_MS > deadline) throw error;
      await sleep(delay);
      each = Math.min(timeoutMs, Math.max(deadline - now(), MIN_ATTEMPT_MS));
    }
  }
}

function header(headers, name) {
  if (!headers) return null;
  const value = typeof headers.get === 'function' ? headers.get(name) : headers[name];
  return value === undefined || value === null ? null : String(value).trim();
}

/**
 * Seconds a provider asked callers to wait, from a failed call's error (the openai and
 * @anthropic-ai/sdk errors carry `status` and `headers`): retry-after-ms, else retry-after in
 * seconds or as an HTTP date; only for 429, 503 and Anthropic's 529. null when none.
 */
function providerRetryAfterSeconds(error, nowMs = Date.now()) {
  const status = error && (error.status || error.statusCode);
  if (![429, 503, 529].includes(status)) return null;
  const millis = Number(header(error.headers, 'retry-after-ms'));
  if (header(error.headers, 'retry-after-ms') !== null && Number.isFinite(millis) && millis > 0) {
    return Math.min(millis / 1000, 86400);
  }
  const text = header(error.headers, 'retry-after');
  if (text === null) return null;
  const seconds = Number(text) || (Date.parse(text) - nowMs) / 1000;
  return Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds, 86400) : null;
}

/** How a provider call that threw `error` ended, as Release takes it (one of OUTCOMES). */
function outcomeFor(error) {
  if (!error) return 'OK';
  const status = error.status || error.statusCode;
  const name = error.constructor ? error.constructor.name : '';
  if (error.name === 'AbortError' || /UserAbort/.test(name)) return 'CANCELLED';
  if (status === 429 || status === 529 || /RateLimit/.test(name)) return 'PROVIDER_RATE_LIMITED';
  if (status === 408 || status === 504 || /Timeout/.test(name)) return 'TIMEOUT';
  return 'PROVIDER_ERROR';
}

module.exports = {
  RECONNECT_OPTIONS,
  checkOptions,
  retryPolicy,
  withRetries,
  providerRetryAfterSeconds,
  outcomeFor,
};
