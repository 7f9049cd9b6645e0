#!/usr/bin/env node
// A scripted agent on the official TypeScript SDK client, default options, driven line by line.
//   node ts_agent.mjs NAME -- CMD [ARGS...]
// stdin: one JSON command per line  {"tool": "...", "args": {...}, "timeout": MS, "progress": bool}
// stdout: one JSON line per command {"ok": true, "result": {...}} | {"ok": false, "error": {"code", "message"}}
// The SDK is resolved from MCP_SDK_DIR (a directory holding node_modules/@modelcontextprotocol/sdk).
import { createRequire } from "node:module";
import path from "node:path";
import readline from "node:readline";
import { pathToFileURL } from "node:url";

const sdkDir = process.env.MCP_SDK_DIR;
const req = createRequire(path.join(sdkDir, "noop.js"));
const load = (sub) => import(pathToFileURL(req.resolve(`@modelcontextprotocol/sdk/${sub}`)).href);
const { Client } = await load("client/index.js");
const { StdioClientTransport } = await load("client/stdio.js");

const argv = process.argv.slice(2);
const name = argv[0];
const cmd = argv.slice(argv.indexOf("--") + 1);
const transport = new StdioClientTransport({ command: cmd[0], args: cmd.slice(1), env: { ...process.env }, stderr: "inherit" });
const client = new Client({ name, version: "1.0.0" });
await client.connect(transport);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
out({ ready: true, server: client.getServerVersion() });

const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  const c = JSON.parse(line);
  const options = {};
  if (c.timeout) options.timeout = c.timeout;
  if (c.progress) {
    options.onprogress = (p) => process.stderr.write(`progress ${p.progress} ${p.message ?? ""}\n`);
    options.resetTimeoutOnProgress = true;
  }
  try {
    const result = await client.callTool({ name: c.tool, arguments: c.args }, undefined, options);
    out({ ok: true, result });
  } catch (e) {
    out({ ok: false, error: { code: e.code ?? null, message: String(e.message ?? e) } });
  }
}
await client.close();
