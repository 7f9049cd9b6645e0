// A minimal MCP Apps host for the browser test, built on the ext-apps SDK's host side (app-bridge).
// Its MCP connection is the test's Python client, which declared io.modelcontextprotocol/ui; the page
// reaches it through window.gkMcp(method, params). Bundled by esbuild from the npm package at test time.
import {
  AppBridge,
  PostMessageTransport,
  getToolUiResourceUri,
  isToolVisibilityAppOnly,
} from "@modelcontextprotocol/ext-apps/app-bridge";

const mcp = (method, params) => window.gkMcp(method, params);
window.hostLog = [];

// What a chat host does when the model calls a tool: call it, and if the tool links a UI resource, read it and
// render it in a sandboxed iframe, handing it the call's input and result over the bridge.
async function modelCalls(name, args) {
  const tools = await mcp("tools/list", {});
  window.modelTools = tools.filter((t) => !isToolVisibilityAppOnly(t)).map((t) => t.name);
  const tool = tools.find((t) => t.name === name);
  const uri = tool ? getToolUiResourceUri(tool) : undefined;
  const result = await mcp("tools/call", { name, arguments: args });
  window.lastResult = result;
  const turn = document.createElement("section");
  turn.className = "turn";
  const said = document.createElement("p");
  said.className = "model";
  said.textContent = "The agent called " + name + ":";
  turn.append(said);
  document.getElementById("chat").append(turn);
  if (!uri) return;
  const read = await mcp("resources/read", { uri });
  const content = read.contents[0];
  const iframe = document.createElement("iframe");
  iframe.setAttribute("sandbox", "allow-scripts");
  iframe.id = "card";
  iframe.title = "decision card";
  iframe.srcdoc = content.text;
  turn.append(iframe);
  const bridge = new AppBridge(
    null,
    { name: "gatekeeper-test-host", version: "1.0.0" },
    { serverTools: {}, openLinks: {}, message: { text: {} } },
  );
  bridge.oncalltool = async (params) => {
    window.hostLog.push({ kind: "tools/call", name: params.name });
    return await mcp("tools/call", params);
  };
  bridge.onopenlink = async ({ url }) => {
    window.hostLog.push({ kind: "open-link", url });
    return {};
  };
  bridge.onmessage = async (params) => {
    window.hostLog.push({ kind: "message", text: params.content.map((c) => c.text).join(" ") });
    return {};
  };
  bridge.onsizechange = ({ height }) => {
    if (height) iframe.style.height = height + "px";
  };
  bridge.oninitialized = async () => {
    await bridge.sendToolInput({ arguments: args });
    await bridge.sendToolResult(result);
    window.cardFed = true;
  };
  await bridge.connect(new PostMessageTransport(iframe.contentWindow, iframe.contentWindow));
}

window.modelCalls = modelCalls;
window.hostReady = true;
