// Helpers shared by the browser tests: a static file server for a built web app, and JSON
// requests to the homeserver under test.

import fs from "node:fs";
import http from "node:http";
import path from "node:path";

const CONTENT_TYPES = {
  ".html": "text/html",
  ".js": "text/javascript",
  ".mjs": "text/javascript",
  ".json": "application/json",
  ".css": "text/css",
  ".wasm": "application/wasm",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".webp": "image/webp",
  ".ico": "image/x-icon",
  ".woff2": "font/woff2",
  ".woff": "font/woff",
  ".ttf": "font/ttf",
  ".mp3": "audio/mpeg",
  ".ogg": "audio/ogg",
};

/** A static file server on loopback; resolves to its base URL and a close function. */
export async function serve(root) {
  const server = http.createServer((request, response) => {
    let file = decodeURIComponent(new URL(request.url, "http://localhost").pathname);
    if (file.endsWith("/")) file += "index.html";
    const full = path.join(root, path.normalize(file));
    if (!full.startsWith(root)) {
      response.writeHead(403);
      return response.end();
    }
    fs.readFile(full, (error, data) => {
      if (error) {
        response.writeHead(404);
        return response.end();
      }
      response.writeHead(200, { "Content-Type": CONTENT_TYPES[path.extname(full)] ?? "application/octet-stream" });
      response.end(data);
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => server.close() };
}

/** A function making requests with a JSON body to the homeserver at `base`; each resolves to
 * status and JSON. */
export function apiAt(base) {
  return async function api(method, apiPath, token, body) {
    const response = await fetch(base + apiPath, {
      method,
      headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = { unparsed: text };
    }
    return { status: response.status, body: json };
  };
}
