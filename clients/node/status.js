'use strict';
/**
 * A failed admitd call as the Node client reports it: an AdmitdError with the rich details
 * of its google.rpc.Status (grpc-status-details-bin), decoded with protobufjs from the
 * genuine googleapis definitions vendored in protos/google/rpc.
 */

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protobuf = require('protobufjs');

const RPC_PROTOS = path.join(__dirname, 'protos', 'google', 'rpc');
const DETAILS_KEY = 'grpc-status-details-bin';
// Status codes of a refusal with a reason: a limit, or a dedup follower without a result.
const REFUSALS = ['RESOURCE_EXHAUSTED', 'ABORTED'];

let rpcRoot = null;

/** google.rpc Status, ErrorInfo, RetryInfo, BadRequest, ... (loaded once). */
function rpcTypes() {
  if (rpcRoot === null) {
    const files = ['status.proto', 'error_details.proto'].map((name) => path.join(RPC_PROTOS, name));
    // google/protobuf/{any,duration}.proto are bundled with protobufjs.
    rpcRoot = new protobuf.Root().loadSync(files, { keepCase: true });
  }
  return rpcRoot;
}

/** Seconds as a google.protobuf.Duration. */
function duration(seconds) {
  const whole = Math.floor(seconds);
  return { seconds: String(whole), nanos: Math.round((seconds - whole) * 1e9) };
}

function durationSeconds(value) {
  return value ? Number(value.seconds) + Number(value.nanos) / 1e9 : 0;
}

/**
 * The rich details of a failed call: { code, codeName, message, reason, domain, metadata,
 * retryAfterSeconds (null when absent: no retry can succeed), fieldViolations }.
 */
function decodeStatus(error) {
  const codeName = Object.keys(grpc.status).find((name) => grpc.status[name] === error.code);
  const decoded = {
    code: error.code,
    codeName: codeName || String(error.code),
    message: error.details || error.message,
    reason: null,
    domain: null,
    metadata: {},
    retryAfterSeconds: null,
    fieldViolations: [],
  };
  const [raw] = error.metadata ? error.metadata.get(DETAILS_KEY) : [];
  if (!raw) return decoded;
  const root = rpcTypes();
  const status = root.lookupType('google.rpc.Status').decode(raw);
  for (const any of status.details) {
    // type_url is "type.googleapis.com/google.rpc.ErrorInfo": the type is named after the /.
    const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    const type = root.lookup(typeName);
    if (!(type instanceof protobuf.Type)) continue; // a detail type this client does not know
    const detail = type.toObject(type.decode(any.value), { longs: Number, defaults: true });
    if (typeName === 'google.rpc.ErrorInfo') {
      decoded.reason = detail.reason;
      decoded.domain = detail.domain;
      decoded.metadata = detail.metadata;
    } else if (typeName === 'google.rpc.RetryInfo') {
      decoded.retryAfterSeconds = durationSeconds(detail.retry_delay);
    } else if (typeName === 'google.rpc.BadRequest') {
      decoded.fieldViolations = detail.field_violations.map((v) => ({
        field: v.field,
        description: v.description,
      }));
    }
  }
  return decoded;
}

/**
 * A failed admitd call, with its decoded status (see decodeStatus) as properties. `rejected`:
 * a refusal with a reason (name 'Rejected'). `leaseEnded`: NOT_FOUND with a reason (name
 * 'LeaseEnded'): a Release or Renew of a lease that ended, e.g. after it expired (reason
 * LEASE_EXPIRED; never retried); metadata says what it stands charged (reserved_tokens, charged_tokens,
 * charged_usd; settled 'true' once a Release after the expiry recorded the usage it reported).
 */
class AdmitdError extends Error {
  constructor(error) {
    const status = decodeStatus(error);
    super(`${status.codeName}: ${status.message}`);
    this.rejected = REFUSALS.includes(status.codeName) && status.reason !== null;
    this.leaseEnded = status.codeName === 'NOT_FOUND' && status.reason !== null;
    this.name = this.rejected ? 'Rejected' : this.leaseEnded ? 'LeaseEnded' : 'AdmitdError';
    Object.assign(this, status);
  }
}

module.exports = { AdmitdError, decodeStatus, duration, durationSeconds };
