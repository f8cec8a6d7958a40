// talkback (npm) as a replay-only server for the benchmark's peer column (bench/peers.py).
// Usage: node bench/talkback_server.js TALKBACK_PACKAGE_DIR TAPES_DIR
//
// Uses talkback's library mode, talkback.requestHandler(options), behind node's own http server,
// because talkback's standalone server listens on every interface and on a fixed port; here it
// listens on 127.0.0.1 port 0, and the first stdout line names the URL (as the other bench
// servers do). The request handling mirrors talkback's own server: read the body, hand
// {url, method, headers, body} to the handler, write its status, headers and body.
"use strict";

const http = require("http");
const path = require("path");

const [pkgDir, tapes] = process.argv.slice(2);
if (!pkgDir || !tapes) {
  console.error("usage: node talkback_server.js TALKBACK_PACKAGE_DIR TAPES_DIR");
  process.exit(2);
}
const talkback = require(path.resolve(pkgDir));
const version = require(path.join(path.resolve(pkgDir), "package.json")).version;

async function main() {
  const handler = await talkback.requestHandler({
    host: "http://127.0.0.1:9", // never contacted: recording is off and the fallback is a 404
    path: tapes,
    record: talkback.Options.RecordMode.DISABLED,
    fallbackMode: talkback.Options.FallbackMode.NOT_FOUND,
    allowHeaders: [], // match on method, URL and body (as mitmproxy's peer column does)
    silent: true,
    summary: false,
    name: "bench",
  });
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", async () => {
      try {
        const answer = await handler.handle({
          headers: req.headers, url: req.url, method: req.method, body: Buffer.concat(chunks),
        });
        res.writeHead(answer.status, answer.headers);
        res.end(answer.body);
      } catch (err) {
        console.error("talkback_server: error handling a request", err);
        res.statusCode = 500;
        res.end();
      }
    });
  });
  server.listen(0, "127.0.0.1", () => {
    const { port } = server.address();
    console.log(`talkback ${version} on http://127.0.0.1:${port}`);
  });
  const stop = () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error("talkback_server:", err);
  process.exit(1);
});
