'use strict';
// What to send for a completion at the cursor, and how to read the answer. No `vscode` import:
// node's test runner checks this module directly (editors/vscode/test/).
//
// In a .csd file the cursor is in <CsInstruments> (orchestra code), <CsScore> (score
// statements) or elsewhere (<CsOptions>, between sections). The prefix and suffix are cut to
// the enclosing section so the model's context budget goes to what matters, and keep the CSD
// tags so the model knows where it is. <CsOptions> (short; it says how the piece runs: -odac,
// MIDI flags) is kept before the section, as in the file. In the score, an outline of the
// orchestra (header and instr/endin lines) goes before <CsScore>: score lines name instruments
// defined there.

const SECTIONS = {
  CsInstruments: 'instruments',
  CsScore: 'score',
  CsOptions: 'options',
};
const TAG_RE = /<(\/?)(CsoundSynthesizer|CsInstruments|CsScore|CsOptions|CsLicense|CsLicence|CsShortLicense|CsFileB|CsSampleB|CsMidifileB|Cabbage|bsbPanel|bsbPresets)\b[^>]*>/g;
const OUTLINE_RE = /^\s*(instr|endin|opcode|endop|sr|kr|ksmps|nchnls|nchnls_i|0dbfs|A4)\b/;

const DEFAULTS = {
  maxPrefixChars: 6000,
  maxSuffixChars: 2000,
};
const MAX_OPTIONS_CHARS = 400; // a <CsOptions> longer than this is cut at a line end

function fileKind(fileName) {
  const m = /\.([A-Za-z]+)$/.exec(fileName || '');
  const ext = m ? m[1].toLowerCase() : '';
  return ['csd', 'orc', 'udo', 'sco', 'inc'].includes(ext) ? ext : 'other';
}

// Every CSD tag with its offsets, in document order.
function scanTags(text) {
  const tags = [];
  TAG_RE.lastIndex = 0;
  let m;
  while ((m = TAG_RE.exec(text)) !== null) {
    tags.push({ name: m[2], close: m[1] === '/', start: m.index, end: m.index + m[0].length });
  }
  return tags;
}

// The section around `offset`: {name, kind, open, close} with `open` the offset just after the
// opening tag and `close` the offset of the closing tag (text.length when it is missing).
function findSection(text, offset) {
  const tags = scanTags(text);
  let current = null;
  for (const tag of tags) {
    if (tag.name === 'CsoundSynthesizer') continue;
    if (tag.start >= offset) break;
    if (!tag.close) {
      if (offset >= tag.end) current = { name: tag.name, openTag: tag };
    } else if (current && current.name === tag.name && tag.end <= offset) {
      current = null;
    }
  }
  if (!current) return { name: null, kind: 'outside', open: 0, close: text.length };
  const closeTag = tags.find((t) => t.close && t.name === current.name && t.start >= offset);
  return {
    name: current.name,
    kind: SECTIONS[current.name] || 'other',
    open: current.openTag.end,
    openStart: current.openTag.start,
    close: closeTag ? closeTag.start : text.length,
    closeEnd: closeTag ? closeTag.end : text.length,
  };
}

// Keep the last `max` characters, starting at a line boundary when one is near.
function keepTail(text, max) {
  if (text.length <= max) return text;
  const cut = text.slice(text.length - max);
  const nl = cut.indexOf('\n');
  return nl >= 0 && nl < max / 2 ? cut.slice(nl + 1) : cut;
}

// Keep the first `max` characters, ending at a line boundary when one is near.
function keepHead(text, max) {
  if (text.length <= max) return text;
  const cut = text.slice(0, max);
  const nl = cut.lastIndexOf('\n');
  return nl >= max / 2 ? cut.slice(0, nl + 1) : cut;
}

function orchestraOutline(text) {
  const orc = findSectionByName(text, 'CsInstruments');
  if (!orc) return '';
  return text
    .slice(orc.open, orc.close)
    .split('\n')
    .filter((line) => OUTLINE_RE.test(line))
    .map((line) => line.replace(/\s+$/, ''))
    .join('\n');
}

// The file's <CsOptions> block (tags included, newline after), or '' when it has none or it
// is not closed yet.
function optionsBlock(text) {
  const tags = scanTags(text);
  const open = tags.find((t) => !t.close && t.name === 'CsOptions');
  const close = open && tags.find((t) => t.close && t.name === 'CsOptions' && t.start >= open.end);
  if (!close) return '';
  return `<CsOptions>${keepHead(text.slice(open.end, close.start), MAX_OPTIONS_CHARS)}</CsOptions>\n`;
}

function findSectionByName(text, name) {
  const tags = scanTags(text);
  const open = tags.find((t) => !t.close && t.name === name);
  if (!open) return null;
  const close = tags.find((t) => t.close && t.name === name && t.start >= open.end);
  return { open: open.end, close: close ? close.start : text.length };
}

/**
 * The FIM context for a completion at `offset` of `text`.
 * Returns {prefix, suffix, section, kind} where `section` is 'instruments', 'score',
 * 'options', 'outside' (a .csd outside any section) or 'file' (.orc/.udo/.sco/other).
 */
function buildContext(text, offset, fileName, options = {}) {
  const opts = { ...DEFAULTS, ...options };
  if (offset < 0 || offset > text.length) throw new RangeError(`offset ${offset} is outside the text`);
  const kind = fileKind(fileName);
  let prefix;
  let suffix;
  let section = 'file';
  if (kind === 'csd') {
    const s = findSection(text, offset);
    section = s.kind;
    if (s.kind === 'instruments' || s.kind === 'score') {
      const tag = s.kind === 'instruments' ? 'CsInstruments' : 'CsScore';
      let head = `<CsoundSynthesizer>\n${optionsBlock(text)}`;
      if (s.kind === 'score') {
        const outline = orchestraOutline(text);
        head += `<CsInstruments>\n${outline ? outline + '\n' : ''}</CsInstruments>\n`;
      }
      head += `<${tag}>`;
      const body = text.slice(s.open, offset);
      const budget = Math.max(0, opts.maxPrefixChars - head.length);
      prefix = head + keepTail(body, budget);
      const tail = s.close < text.length ? `</${tag}>\n</CsoundSynthesizer>\n` : '';
      suffix = keepHead(text.slice(offset, s.close), Math.max(0, opts.maxSuffixChars - tail.length)) + tail;
    }
  }
  if (prefix === undefined) {
    prefix = keepTail(text.slice(0, offset), opts.maxPrefixChars);
    suffix = keepHead(text.slice(offset), opts.maxSuffixChars);
  }
  return { prefix, suffix, section, kind };
}

function trimSlash(url) {
  return String(url || '').replace(/\/+$/, '');
}

/**
 * The HTTP request for `context` with `settings` ({serverUrl, apiKey, maxTokens, endpoint,
 * model, temperature}). Returns {url, init} for fetch().
 */
function buildRequest(context, settings) {
  const endpoint = settings.endpoint || 'infill';
  const base = trimSlash(settings.serverUrl || 'http://127.0.0.1:8080').replace(/\/v1$/, '');
  const headers = { 'Content-Type': 'application/json', Accept: 'application/json' };
  if (settings.apiKey) headers.Authorization = `Bearer ${settings.apiKey}`;
  const maxTokens = Math.max(1, Math.floor(settings.maxTokens || 128));
  const temperature = settings.temperature ?? 0.2;
  let url;
  // A record, not the first literal's shape: `seed` is added below for either endpoint.
  /** @type {Record<string, unknown>} */
  let body;
  if (endpoint === 'infill') {
    url = `${base}/infill`;
    body = {
      input_prefix: context.prefix,
      input_suffix: context.suffix,
      input_extra: [],
      n_predict: maxTokens,
      temperature,
      cache_prompt: true,
      stream: false,
    };
  } else if (endpoint === 'completions') {
    url = `${base}/v1/completions`;
    body = {
      model: settings.model || 'csound-assistant',
      prompt: context.prefix,
      suffix: context.suffix,
      max_tokens: maxTokens,
      temperature,
      stream: false,
    };
  } else {
    throw new Error(`unknown endpoint "${endpoint}": use "infill" or "completions"`);
  }
  if (settings.seed !== undefined) body.seed = settings.seed;
  return { url, init: { method: 'POST', headers, body: JSON.stringify(body) } };
}

// The server's error message from an error body (OpenAI, Ollama and llama.cpp shapes).
function errorMessage(status, bodyText, headers = {}) {
  let detail = bodyText;
  try {
    const j = JSON.parse(bodyText);
    if (j && typeof j.error === 'string') detail = j.error;
    else if (j && j.error && j.error.message) detail = j.error.message;
    else if (j && j.message) detail = j.message;
  } catch (_) {
    // not JSON: keep the text
  }
  const retry = headers['retry-after'];
  let hint = '';
  if (status === 401 || status === 403) hint = ' (check csoundAssistant.apiKey)';
  else if (status === 429 || status === 503) hint = retry ? ` (server busy; retry after ${retry} s)` : ' (server busy)';
  else if (status === 404) hint = ' (is csoundAssistant.serverUrl a csound-assistant server? try endpoint "completions")';
  return `Csound Assistant: HTTP ${status}: ${String(detail).trim().slice(0, 300)}${hint}`;
}

/** The completion text (and the prompt's token count, when the server says) from a parsed
 * JSON response of either endpoint. */
function parseResponse(endpoint, json) {
  if (!json || typeof json !== 'object') throw new Error('Csound Assistant: the server sent no JSON object');
  if (endpoint === 'infill') {
    if (typeof json.content !== 'string') throw new Error('Csound Assistant: /infill answer has no "content"');
    return {
      text: json.content,
      truncated: json.stopped_limit === true || json.stop_type === 'limit',
      promptTokens: json.tokens_evaluated,
    };
  }
  const choice = Array.isArray(json.choices) ? json.choices[0] : undefined;
  if (!choice || typeof choice.text !== 'string') {
    throw new Error('Csound Assistant: /v1/completions answer has no choices[0].text');
  }
  return {
    text: choice.text,
    truncated: choice.finish_reason === 'length',
    promptTokens: json.usage ? json.usage.prompt_tokens : undefined,
  };
}

/**
 * Tidy a completion for insertion: drop end/FIM tokens that leaked, stop where the model starts
 * repeating the text after the cursor, and drop a trailing partial line when cut by the limit.
 */
function postProcess(text, suffix, { truncated = false, stop = [] } = {}) {
  let out = text;
  for (const token of ['<|endoftext|>', '<|im_end|>', '<EOT>', '</s>', ...stop]) {
    const i = out.indexOf(token);
    if (i >= 0) out = out.slice(0, i);
  }
  const nextLine = (suffix || '').split('\n').map((l) => l.trim()).find((l) => l.length > 0);
  if (nextLine && nextLine.length >= 4) {
    const lines = out.split('\n');
    const k = lines.findIndex((l) => l.trim() === nextLine);
    // k == 0: the completion starts with the text after the cursor (the embedded model answers
    // `endin` at the start of an `endin` line): inserting it would double that line.
    if (k === 0) out = '';
    else if (k > 0) out = lines.slice(0, k).join('\n') + '\n';
  }
  if (truncated && out.includes('\n')) out = out.slice(0, out.lastIndexOf('\n') + 1);
  return out;
}

module.exports = {
  DEFAULTS,
  buildContext,
  buildRequest,
  errorMessage,
  fileKind,
  findSection,
  optionsBlock,
  orchestraOutline,
  parseResponse,
  postProcess,
};
