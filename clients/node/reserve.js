'use strict';
/**
 * A reservation derived from a provider request, as the caller hands it to the SDK: the
 * arguments of OpenAI's chat.completions.create / responses.create or Anthropic's
 * messages.create. The same rules as the Python client's (clients/python/admitd_client/
 * _reserve.py), so both reserve the same for the same request
 * (tests/test_node_client_requests.py compares them):
 *
 * - OpenAI chat: messages with the cookbook's overhead (3 per message, 1 per name, 3 priming
 *   the reply), image parts by OpenAI's 512 px tile formula (sized from base64 data; by URL
 *   the largest bill), tools/functions by the cookbook's function formula, a json_schema
 *   response format as its JSON; output max_completion_tokens or max_tokens (else the
 *   model's ceiling), times n.
 * - OpenAI Responses: instructions and every input item as chat messages; max_output_tokens.
 * - Anthropic: system, messages (text, tool_use, tool_result, images at w x h / 750, at most
 *   1600), tools (their JSON plus the documented 346-token tool prompt) and a structured
 *   output's schema (output_config.format or output_format) as its JSON, counted with
 *   cl100k_base x 1.3 (Claude has no public tokenizer: the estimate errs high); max_tokens.
 *
 * Tokens are counted with js-tiktoken (its encodings ship in the package: no download).
 */

const { Tiktoken } = require('js-tiktoken/lite');

const APIS = ['openai.chat', 'openai.responses', 'anthropic.messages'];
const CLAUDE_TOKEN_FACTOR = 1.3;
const DEFAULT_MAX_OUTPUT = 16384;
const MAX_OUTPUT = [
  ['gpt-5', 128000], ['o1-mini', 65536], ['o1', 100000], ['o3', 100000], ['o4', 100000],
  ['gpt-4.1', 32768], ['gpt-4o', 16384], ['chatgpt-4o', 16384], ['gpt-4-turbo', 4096],
  ['gpt-4', 8192], ['gpt-3.5', 4096],
]; // prettier-ignore
const PER_MESSAGE = 3;
const PER_NAME = 1;
const PRIMING = 3;
const FUNC_INIT = { o200k_base: 7, cl100k_base: 10 };
const [PROP_INIT, PROP_KEY, ENUM_INIT, ENUM_ITEM, FUNC_END] = [3, 3, -3, 3, 12];
const TOOL_PROMPT = 346;
const encodings = {};
const warned = new Set();

function encoding(name) {
  if (!encodings[name]) encodings[name] = new Tiktoken(require(`js-tiktoken/ranks/${name}`));
  return encodings[name];
}

function baseName(model) {
  return model.slice(model.lastIndexOf('/') + 1);
}

function isClaude(model) {
  return baseName(model).startsWith('claude');
}

/** The encoding tiktoken uses for a model (OpenAI's families), cl100k_base for Claude. */
function encodingFor(model) {
  const name = baseName(model);
  if (isClaude(name)) return 'cl100k_base';
  if (/^(gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|o1|o3|o4|ft:gpt-4o)/.test(name)) return 'o200k_base';
  if (/^(gpt-4|gpt-3\.5|gpt-35|ft:gpt-4|ft:gpt-3\.5|text-embedding)/.test(name)) return 'cl100k_base';
  if (!warned.has(model)) {
    warned.add(model);
    process.emitWarning(`no tokenizer known for model ${JSON.stringify(model)}: counting with o200k_base`);
  }
  return 'o200k_base';
}

function defaultMaxOutput(model) {
  const name = baseName(model);
  const found = MAX_OUTPUT.find(([prefix]) => name.startsWith(prefix));
  return found ? found[1] : DEFAULT_MAX_OUTPUT;
}

class Counter {
  constructor(name) {
    this.name = name;
    this.enc = encoding(name);
  }

  text(text) {
    return this.enc.encode(text, [], []).length; // special-token text counts as plain text
  }

  json(value) {
    return typeof value === 'string' ? this.text(value) : this.text(pyJson(value));
  }

  chat(messages, images) {
    let total = PRIMING;
    for (const message of messages) total += this.message(message, images);
    return total;
  }

  message(message, images) {
    let total = PER_MESSAGE;
    for (const [key, value] of Object.entries(message)) {
      total += this.value(key, value, images);
      if (key === 'name') total += PER_NAME;
    }
    return total;
  }

  value(key, value, images) {
    if (value === null || value === undefined) return 0;
    if (typeof value === 'string') return this.text(value);
    if (key === 'content' && Array.isArray(value)) {
      return value.reduce((sum, part) => sum + this.part(part, images), 0);
    }
    return this.json(value);
  }

  part(part, images) {
    const image = images(part);
    if (image !== null) return image;
    return typeof part.text === 'string' ? this.text(part.text) : 0;
  }

  tools(tools) {
    if (!tools.length) return 0;
    let total = FUNC_END;
    for (const tool of tools) {
      const fn = tool.function || tool;
      if (typeof fn.name !== 'string') {
        total += this.json(tool);
        continue;
      }
      total += FUNC_INIT[this.name] || FUNC_INIT.cl100k_base;
      total += this.text(`${fn.name}:${String(fn.description || '').replace(/\.$/, '')}`);
      const properties = (fn.parameters || {}).properties || {};
      if (Object.keys(properties).length) total += PROP_INIT;
      for (const [key, schema] of Object.entries(properties)) {
        total += PROP_KEY;
        if ('enum' in schema) {
          total += ENUM_INIT + schema.enum.reduce((sum, item) => sum + ENUM_ITEM + this.text(String(item)), 0);
        }
        const description = String(schema.description || '').replace(/\.$/, '');
        total += this.text(`${key}:${schema.type || ''}:${description}`);
        const nested = Object.fromEntries(
          Object.entries(schema).filter(([k]) => !['type', 'description', 'enum'].includes(k)),
        );
        if (Object.keys(nested).length) total += this.json(nested);
      }
    }
    return total;
  }
}

/** JSON as Python's json.dumps(value, separators=(",", ":")) writes it (non-ASCII escaped). */
function pyJson(value) {
  return JSON.stringify(value).replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function imageSize(base64) {
  const raw = Buffer.from(base64.slice(0, 87384), 'base64');
  if (raw.length >= 24 && raw.subarray(0, 8).equals(Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]))) {
    return [raw.readUInt32BE(16), raw.readUInt32BE(20)];
  }
  const head = raw.subarray(0, 6).toString('latin1');
  if ((head === 'GIF87a' || head === 'GIF89a') && raw.length >= 10) return [raw.readUInt16LE(6), raw.readUInt16LE(8)];
  if (raw[0] === 0xff && raw[1] === 0xd8) {
    for (let at = 2; at + 9 < raw.length; ) {
      if (raw[at] !== 0xff) return null;
      const marker = raw[at + 1];
      if (marker === 0xd8 || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
        at += 2;
        continue;
      }
      if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
        return [raw.readUInt16BE(at + 7), raw.readUInt16BE(at + 5)];
      }
      at += 2 + raw.readUInt16BE(at + 2);
    }
  }
  return null; // WebP and others: the largest bill
}

function dataUrlSize(url) {
  const comma = url.indexOf(',');
  const head = url.slice(0, comma);
  if (comma < 0 || !head.startsWith('data:') || !head.endsWith(';base64')) return null;
  return imageSize(url.slice(comma + 1));
}

function openaiImageTokens(size, detail, mini) {
  const [base, tile] = mini ? [2833, 5667] : [85, 170];
  if (detail === 'low') return base;
  let [width, height] = size || [768, 2048];
  if (Math.max(width, height) > 2048) {
    const scale = 2048 / Math.max(width, height);
    [width, height] = [Math.floor(width * scale), Math.floor(height * scale)];
  }
  if (Math.min(width, height) > 768) {
    const scale = 768 / Math.min(width, height);
    [width, height] = [Math.floor(width * scale), Math.floor(height * scale)];
  }
  return base + tile * Math.ceil(width / 512) * Math.ceil(height / 512);
}

function anthropicImageTokens(size) {
  if (!size) return 1600;
  let [width, height] = size;
  if (Math.max(width, height) > 1568) {
    const scale = 1568 / Math.max(width, height);
    [width, height] = [Math.floor(width * scale), Math.floor(height * scale)];
  }
  return Math.min(Math.ceil((width * height) / 750), 1600);
}

function openaiImages(mini) {
  return (part) => {
    let url;
    let detail;
    if (part.type === 'image_url') {
      const image = part.image_url;
      url = typeof image === 'object' && image !== null ? image.url : image;
      detail = typeof image === 'object' && image !== null ? image.detail : undefined;
    } else if (part.type === 'input_image') {
      [url, detail] = [part.image_url, part.detail];
    } else {
      return null;
    }
    return openaiImageTokens(typeof url === 'string' ? dataUrlSize(url) : null, detail || 'auto', mini);
  };
}

function scale(model, tokens) {
  return isClaude(model) ? Math.ceil(tokens * CLAUDE_TOKEN_FACTOR) : tokens;
}

function firstInt(request, ...names) {
  for (const name of names) {
    const value = request[name];
    if (Number.isInteger(value)) {
      if (value < 0) throw new RangeError(`${name} must not be negative, got ${value}`);
      return value;
    }
  }
  return null;
}

function responseFormat(counter, format) {
  if (!format || typeof format !== 'object') return 0;
  const schema = format.json_schema !== undefined ? format.json_schema : format.schema;
  return schema === undefined ? 0 : counter.json(schema);
}

/** The provider call a request is for, from its shape (as the Python client guesses it). */
function apiOf(request) {
  if ('input' in request && !('messages' in request)) return 'openai.responses';
  if ('system' in request || String(request.model || '').startsWith('claude')) return 'anthropic.messages';
  return 'openai.chat';
}

/** { api, model, inputTokens, maxOutputTokens } for a provider request (api: guessed if null). */
function reserve(api, request) {
  if (!request || typeof request !== 'object') throw new TypeError('request: the provider call\'s arguments, an object');
  const { model } = request;
  if (typeof model !== 'string' || !model) throw new TypeError("request needs the provider call's model (a string)");
  const kind = api || apiOf(request);
  if (!APIS.includes(kind)) throw new TypeError(`api must be one of ${APIS.join(', ')}; got ${JSON.stringify(api)}`);
  const counter = new Counter(encodingFor(model));
  let tokens;
  let output;
  if (kind === 'openai.chat') {
    tokens = counter.chat(request.messages || [], openaiImages(model.includes('mini')));
    tokens += counter.tools([...(request.tools || []), ...(request.functions || [])]);
    tokens = scale(model, tokens + responseFormat(counter, request.response_format));
    const limit = firstInt(request, 'max_completion_tokens', 'max_tokens');
    output = (limit === null ? defaultMaxOutput(model) : limit) * Math.max(1, request.n || 1);
  } else if (kind === 'openai.responses') {
    const items = typeof request.instructions === 'string' ? [{ role: 'developer', content: request.instructions }] : [];
    const given = request.input;
    items.push(...(typeof given === 'string' ? [{ role: 'user', content: given }] : given || []));
    tokens = counter.chat(items, openaiImages(model.includes('mini'))) + counter.tools(request.tools || []);
    if (request.text && typeof request.text === 'object') tokens += responseFormat(counter, request.text.format);
    tokens = scale(model, tokens);
    const limit = firstInt(request, 'max_output_tokens');
    output = limit === null ? defaultMaxOutput(model) : limit;
  } else {
    [tokens, output] = anthropic(counter, model, request);
  }
  return { api: kind, model, inputTokens: tokens, maxOutputTokens: output };
}

function anthropic(counter, model, request) {
  let text = PRIMING;
  let images = 0;
  const noImage = () => null;
  const image = (part) => {
    if (part.type !== 'image') return null;
    const source = part.source || {};
    const size = source.type === 'base64' && typeof source.data === 'string' ? imageSize(source.data) : null;
    images += anthropicImageTokens(size);
    return 0;
  };
  const block = (b) => {
    if (b.type === 'text' || b.type === 'image') return counter.part(b, image);
    if (b.type === 'tool_use') return counter.text(String(b.name || '')) + counter.json(b.input === undefined ? {} : b.input);
    if (b.type === 'tool_result') {
      if (Array.isArray(b.content)) return b.content.reduce((sum, inner) => sum + block(inner), 0);
      return typeof b.content === 'string' ? counter.text(b.content) : 0;
    }
    if (b.type === 'thinking') return counter.text(String(b.thinking || ''));
    return counter.json(b);
  };
  const { system } = request;
  if (typeof system === 'string') text += PER_MESSAGE + counter.text(system);
  else if (system && system.length) text += PER_MESSAGE + system.reduce((sum, b) => sum + counter.part(b, noImage), 0);
  for (const message of request.messages || []) {
    text += PER_MESSAGE;
    for (const [key, value] of Object.entries(message)) {
      if (key === 'content' && Array.isArray(value)) text += value.reduce((sum, b) => sum + block(b), 0);
      else text += counter.value(key, value, image);
    }
  }
  const tools = request.tools || [];
  text += tools.reduce((sum, tool) => sum + counter.json(tool), 0);
  // Structured outputs: the schema is shown to the model (output_config.format, or the
  // older output_format).
  const config = request.output_config;
  text += responseFormat(counter, request.output_format);
  text += responseFormat(counter, config && typeof config === 'object' ? config.format : null);
  const tokens = scale(model, text) + images + (tools.length ? TOOL_PROMPT : 0);
  const limit = firstInt(request, 'max_tokens');
  return [tokens, limit === null ? defaultMaxOutput(model) : limit];
}

/** The pool a model's calls go to: modelPools[model], else `<provider>/<model>`. */
function poolFor(api, model, modelPools = {}) {
  return Object.prototype.hasOwnProperty.call(modelPools, model) ? modelPools[model] : `${api.split('.')[0]}/${model}`;
}

module.exports = { APIS, apiOf, reserve, poolFor, encodingFor };
