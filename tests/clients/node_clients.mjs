// The Node clients of the client matrix (tests/test_clients.py): Node's own fetch, undici's
// request() and axios, each running every case as an app using it would and printing what it
// saw as JSON, by client. Usage: node node_clients.mjs '{"base": ..., "proxy": ...}' [CLIENT...]
// (all three by default; each under the path prefix /CLIENT). The CA of an intercepting proxy
// comes from NODE_EXTRA_CA_CERTS, as `replayproxy run` sets it.
import { createHash } from "node:crypto";
import { gunzipSync } from "node:zlib";
import { ProxyAgent, request, setGlobalDispatcher } from "undici";
import axios from "axios";
import { HttpsProxyAgent } from "https-proxy-agent";

const [raw, ...wanted] = process.argv.slice(2);
const cfg = JSON.parse(raw);
let base = cfg.base;
const QUERY = "?tag=a&tag=b&%C3%BCber=%E2%9C%93&%E9%8D%B5=2";
const TITLE = "Résumé";
const NOTES = Buffer.from("hello\n".repeat(100));

let upload;
function uploadBody() {  // 5 MiB of CSV lines "00000000,widget,3,ok\n", as every client builds it
  if (upload) return upload;
  const size = 5 * 1024 * 1024, line = Buffer.from("00000000,widget,3,ok\n");
  const out = Buffer.alloc(Math.ceil(size / line.length) * line.length);
  for (let i = 0, at = 0; at < size; i++, at += line.length) {
    line.copy(out, at);
    for (let d = 7, n = i; d >= 0; d--, n = Math.floor(n / 10)) out[at + d] = 48 + (n % 10);
  }
  return (upload = out.subarray(0, size));
}

function view(status, reason, headers, body, path, jar) {
  const out = {
    status,
    reason,
    headers: headers.map(([k, v]) => [k.toLowerCase(), String(v)]).sort(cmp),
    body_len: body.length,
    body_sha256: createHash("sha256").update(body).digest("hex"),
  };
  if (body.length <= 4096) {
    const text = new TextDecoder("utf-8", { fatal: true });
    try { out.text = text.decode(body); } catch { /* not text */ }
  }
  if (path !== undefined) out.path = path;
  if (jar !== undefined) out.jar = jar;
  return out;
}

function cmp(a, b) {
  const x = JSON.stringify(a), y = JSON.stringify(b);
  return x < y ? -1 : x > y ? 1 : 0;
}

function pairs(headers) {  // a {name: value | [values]} object as [name, value] pairs
  const out = [];
  for (const [k, v] of Object.entries(headers)) {
    for (const one of Array.isArray(v) ? v : [v]) out.push([k, one]);
  }
  return out;
}

const pathOf = (url) => { const u = new URL(url); return u.pathname + u.search; };

const plans = {
  async fetch() {
    if (cfg.proxy) setGlobalDispatcher(new ProxyAgent(cfg.proxy));
    const out = {};
    const see = async (name, url, init = {}) => {
      const r = await fetch(url, init);
      const body = Buffer.from(await r.arrayBuffer());
      out[name] = view(r.status, r.statusText, [...r.headers], body, pathOf(r.url));
    };
    const form = new FormData();
    form.append("title", TITLE);
    form.append("doc", new Blob([NOTES], { type: "text/plain" }), "notes.txt");
    await see("json", base + "/json", { headers: { Accept: "application/json" } });
    await see("post_201", base + "/items", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: "widget", qty: 3 }),
    });
    await see("gzip", base + "/gzip");
    await see("stream", base + "/stream");
    await see("binary", base + "/binary");
    await see("no_content", base + "/items/7", { method: "DELETE" });
    await see("etag", base + "/etag");
    await see("not_modified", base + "/etag", { headers: { "If-None-Match": '"v1"' } });
    await see("redirect_followed", base + "/redirect");
    await see("redirect_not_followed", base + "/redirect?n=2", { redirect: "manual" });
    await see("head", base + "/json", { method: "HEAD" });
    // undici refuses an Expect header ("expect header not supported"): the body goes at once
    await see("upload", base + "/upload", {
      method: "POST", headers: { "Content-Type": "text/csv" }, body: uploadBody(),
    });
    await see("multipart", base + "/multipart", { method: "POST", body: form });
    await see("query", base + "/query" + QUERY);
    await see("bare", base + "/bare");
    await see("set_cookie", base + "/cookie");
    return out;
  },

  async undici() {
    const dispatcher = cfg.proxy ? new ProxyAgent(cfg.proxy) : undefined;
    const out = {};
    const see = async (name, url, opts = {}) => {
      const r = await request(url, { dispatcher, ...opts });
      let body = Buffer.from(await r.body.arrayBuffer());
      if (r.headers["content-encoding"] === "gzip") body = gunzipSync(body);  // as the app must
      out[name] = view(r.statusCode, null, pairs(r.headers), body, pathOf(url));
    };
    await see("json", base + "/json", { headers: { accept: "application/json" } });
    await see("post_201", base + "/items", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ name: "widget", qty: 3 }),
    });
    await see("gzip", base + "/gzip", { headers: { "accept-encoding": "gzip" } });
    await see("stream", base + "/stream");
    await see("binary", base + "/binary");
    await see("no_content", base + "/items/7", { method: "DELETE" });
    await see("etag", base + "/etag");
    await see("not_modified", base + "/etag", { headers: { "if-none-match": '"v1"' } });
    // request() follows redirects only when asked to (maxRedirections)
    await see("redirect_followed", base + "/redirect", { maxRedirections: 3 });
    await see("redirect_not_followed", base + "/redirect?n=2");
    await see("head", base + "/json", { method: "HEAD" });
    await see("upload", base + "/upload", {
      method: "POST", headers: { "content-type": "text/csv" }, body: uploadBody(),
    });
    const form = new FormData();
    form.append("title", TITLE);
    form.append("doc", new Blob([NOTES], { type: "text/plain" }), "notes.txt");
    await see("multipart", base + "/multipart", { method: "POST", body: form });
    await see("query", base + "/query" + QUERY);
    await see("bare", base + "/bare");
    await see("set_cookie", base + "/cookie");
    return out;
  },

  async axios() {
    const https = base.startsWith("https:");
    const options = { responseType: "arraybuffer", validateStatus: () => true, proxy: false };
    if (cfg.proxy && https) options.httpsAgent = new HttpsProxyAgent(cfg.proxy);
    if (cfg.proxy && !https) {
      const p = new URL(cfg.proxy);
      options.proxy = { protocol: "http", host: p.hostname, port: Number(p.port) };
    }
    const ax = axios.create(options);
    const out = {};
    const see = async (name, config) => {
      const r = await ax.request(config);
      const body = Buffer.from(r.data ?? []);
      const path = r.request?.res?.responseUrl ? pathOf(r.request.res.responseUrl) : undefined;
      out[name] = view(r.status, r.statusText, pairs(r.headers.toJSON()), body, path);
    };
    await see("json", { url: base + "/json", headers: { Accept: "application/json" } });
    await see("post_201", { url: base + "/items", method: "POST", data: { name: "widget", qty: 3 } });
    await see("gzip", { url: base + "/gzip" });
    await see("stream", { url: base + "/stream" });
    await see("binary", { url: base + "/binary" });
    await see("no_content", { url: base + "/items/7", method: "DELETE" });
    await see("etag", { url: base + "/etag" });
    await see("not_modified", { url: base + "/etag", headers: { "If-None-Match": '"v1"' } });
    await see("redirect_followed", { url: base + "/redirect" });
    await see("redirect_not_followed", { url: base + "/redirect?n=2", maxRedirects: 0 });
    await see("head", { url: base + "/json", method: "HEAD" });
    await see("upload", {
      url: base + "/upload", method: "POST", data: uploadBody(), maxBodyLength: Infinity,
      headers: { "Content-Type": "text/csv", Expect: "100-continue" },
    });
    const form = new FormData();
    form.append("title", TITLE);
    form.append("doc", new Blob([NOTES], { type: "text/plain" }), "notes.txt");
    await see("multipart", { url: base + "/multipart", method: "POST", data: form });
    await see("query", { url: base + "/query" + QUERY });
    await see("bare", { url: base + "/bare" });
    await see("set_cookie", { url: base + "/cookie" });
    return out;
  },
};

const seen = {};
for (const client of wanted.length ? wanted : Object.keys(plans)) {
  base = cfg.base + "/" + client;
  seen[client] = await plans[client]();
}
process.stdout.write(JSON.stringify(seen));
