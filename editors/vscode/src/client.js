'use strict';
// One completion round trip with the global fetch(): node 18+, so VS Code 1.82+ (Electron 25,
// node 18.15), the minimum package.json's engines declares. No `vscode` import.

const { buildContext, buildRequest, errorMessage, parseResponse, postProcess } = require('./prompt');

/**
 * Ask the server for the text to insert at `offset` of `text` (a file named `fileName`).
 * Returns {text, raw, context, request}; throws an Error whose message is meant for the user.
 * `signal` cancels the request (VS Code's cancellation token or a timeout).
 */
async function complete({ text, offset, fileName, settings, signal, fetchImpl = globalThis.fetch }) {
  const context = buildContext(text, offset, fileName, settings);
  const request = buildRequest(context, settings);
  const endpoint = settings.endpoint || 'infill';
  let response;
  try {
    response = await fetchImpl(request.url, { ...request.init, signal });
  } catch (err) {
    if (err && err.name === 'AbortError') throw err;
    const cause = err && err.cause && err.cause.code ? ` (${err.cause.code})` : '';
    throw new Error(
      `Csound Assistant: cannot reach ${request.url}${cause}. Start the server with ` +
        '`csound-assistant serve MODEL.gguf` or fix csoundAssistant.serverUrl.'
    );
  }
  const bodyText = await response.text();
  if (!response.ok) {
    const headers = {};
    response.headers.forEach((value, key) => {
      headers[key.toLowerCase()] = value;
    });
    throw new Error(errorMessage(response.status, bodyText, headers));
  }
  let json;
  try {
    json = JSON.parse(bodyText);
  } catch (_) {
    throw new Error(`Csound Assistant: ${request.url} answered with non-JSON: ${bodyText.slice(0, 120)}`);
  }
  const raw = parseResponse(endpoint, json);
  return { text: postProcess(raw.text, context.suffix, { truncated: raw.truncated }), raw, context, request };
}

module.exports = { complete };
