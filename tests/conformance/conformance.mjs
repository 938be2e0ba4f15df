// Conformance of canopy-graph-emulator with an independent client: Microsoft's
// own JavaScript Graph SDK (@microsoft/microsoft-graph-client) with a token
// from MSAL (@azure/msal-node), used the way a user's script uses them.
//
// Environment (set by tests/harness/run-with --emulator): CANOPY_TEST_GRAPH_URL,
// _TENANT, _CLIENT_ID, _SECRET_FILE; NODE_EXTRA_CA_CERTS = the test CA.
import { readFileSync } from "node:fs";
import assert from "node:assert/strict";
import { ConfidentialClientApplication } from "@azure/msal-node";
import {
  Client,
  PageIterator,
  BatchRequestContent,
  BatchResponseContent,
  GraphError,
} from "@microsoft/microsoft-graph-client";

const url = process.env.CANOPY_TEST_GRAPH_URL;
const tenant = process.env.CANOPY_TEST_GRAPH_TENANT;
const clientId = process.env.CANOPY_TEST_GRAPH_CLIENT_ID;
const secret = readFileSync(process.env.CANOPY_TEST_GRAPH_SECRET_FILE, "utf8");
const host = new URL(url).host; // 127.0.0.1:PORT
const hostname = new URL(url).hostname;

let checks = 0;
function check(cond, what) {
  assert.ok(cond, what);
  checks++;
}

async function admin(path, body) {
  const res = await fetch(`${url}${path}`, {
    method: body === undefined ? "GET" : "POST",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return res.status === 204 ? null : res.json();
}

// --- MSAL: the authority is the emulator; knownAuthorities makes MSAL trust
// it without instance discovery against login.microsoftonline.com.
const msal = new ConfidentialClientApplication({
  auth: {
    clientId,
    authority: `${url}/${tenant}`,
    clientSecret: secret,
    knownAuthorities: [host],
  },
  system: { loggerOptions: { logLevel: 0, piiLoggingEnabled: false, loggerCallback() {} } },
});

async function token() {
  const r = await msal.acquireTokenByClientCredential({ scopes: ["https://graph.microsoft.com/.default"] });
  return r.accessToken;
}

const tok = await token();
const claims = JSON.parse(Buffer.from(tok.split(".")[1], "base64url").toString());
check(claims.tid === tenant && claims.appid === clientId, "token claims tid/appid");
check(Array.isArray(claims.roles) && claims.roles.includes("User.ReadWrite.All"), "token roles");

// A wrong secret fails the way MSAL reports AAD errors.
{
  const bad = new ConfidentialClientApplication({
    auth: { clientId, authority: `${url}/${tenant}`, clientSecret: "wrong-secret", knownAuthorities: [host] },
  });
  let err;
  try {
    await bad.acquireTokenByClientCredential({ scopes: ["https://graph.microsoft.com/.default"] });
  } catch (e) {
    err = e;
  }
  check(err && err.errorCode === "invalid_client", `wrong secret -> invalid_client (${err && err.errorCode})`);
}

const client = Client.initWithMiddleware({
  baseUrl: `${url}/`,
  defaultVersion: "v1.0",
  customHosts: new Set([hostname]),
  authProvider: { getAccessToken: token },
});

await admin("/_emulator/reset", {});

// --- create
const N = 25;
const ids = [];
for (let i = 0; i < N; i++) {
  const u = await client.api("/users").post({
    accountEnabled: true,
    displayName: i === 0 ? "Ann O'Neil" : `Conformance User ${i}`,
    mailNickname: `conf${i}`,
    userPrincipalName: `conf${i}@canopy.test`,
    onPremisesImmutableId: `anchor-${i}`,
    passwordProfile: { password: "Conf!ormance-123", forceChangePasswordNextSignIn: false },
  });
  check(typeof u.id === "string" && u.id.length === 36, "created user id");
  ids.push(u.id);
}

// --- conflicts and errors surface as GraphError with Graph's fields
{
  let err;
  try {
    await client.api("/users").post({
      accountEnabled: true,
      displayName: "dup",
      mailNickname: "dup",
      userPrincipalName: "conf1@canopy.test",
      passwordProfile: { password: "Conf!ormance-123" },
    });
  } catch (e) {
    err = e;
  }
  check(err instanceof GraphError && err.statusCode === 400, "conflict is a GraphError 400");
  check(err.code === "Request_BadRequest", `conflict code ${err.code}`);
  const body = typeof err.body === "string" ? JSON.parse(err.body) : err.body;
  // The SDK keeps the inner "error" object of the body.
  check(body.details[0].code === "ObjectConflict", "conflict details");
  check(typeof err.requestId === "string" && err.requestId.length > 0, "GraphError.requestId");
}
{
  let err;
  try {
    await client.api(`/users/${"0".repeat(8)}-0000-0000-0000-000000000000`).get();
  } catch (e) {
    err = e;
  }
  check(err instanceof GraphError && err.statusCode === 404 && err.code === "Request_ResourceNotFound", "404");
}

// --- filter (a quote doubled by the caller) and select
{
  const r = await client
    .api("/users")
    .filter("displayName eq 'Ann O''Neil'")
    .select("id,displayName,onPremisesImmutableId")
    .get();
  check(r.value.length === 1 && r.value[0].onPremisesImmutableId === "anchor-0", "filter with a doubled quote");
  const r2 = await client.api("/users").filter("onPremisesImmutableId eq 'anchor-7'").select("id").get();
  check(r2.value.length === 1 && r2.value[0].id === ids[7], "hard match by onPremisesImmutableId");
  const r3 = await client.api("/users").filter("startswith(displayName,'Conformance')").top(5).get();
  check(r3.value.length === 5 && r3["@odata.nextLink"], "startswith with paging");
}

// --- paging with the SDK's PageIterator
{
  const first = await client.api("/users").top(7).select("id").get();
  let count = 0;
  const it = new PageIterator(client, first, () => {
    count++;
    return true;
  });
  await it.iterate();
  check(count === N, `PageIterator saw ${count} users`);
}

// --- groups, members ($ref and members@odata.bind), nested group
const group = await client.api("/groups").post({
  displayName: "Conformance Group",
  mailNickname: "confgroup",
  mailEnabled: false,
  securityEnabled: true,
});
const inner = await client.api("/groups").post({
  displayName: "Inner",
  mailNickname: "inner",
  mailEnabled: false,
  securityEnabled: true,
});
await client
  .api(`/groups/${group.id}/members/$ref`)
  .post({ "@odata.id": `https://graph.microsoft.com/v1.0/directoryObjects/${ids[0]}` });
await client.api(`/groups/${group.id}`).patch({
  "members@odata.bind": ids.slice(1, 21).map((id) => `https://graph.microsoft.com/v1.0/directoryObjects/${id}`),
});
await client.api(`/groups/${group.id}`).patch({
  "members@odata.bind": [`https://graph.microsoft.com/v1.0/groups/${inner.id}`],
});
{
  const first = await client.api(`/groups/${group.id}/members`).top(5).get();
  let count = 0,
    groups = 0;
  await new PageIterator(client, first, (m) => {
    count++;
    if (m["@odata.type"] === "#microsoft.graph.group") groups++;
    return true;
  }).iterate();
  check(count === 22 && groups === 1, `members ${count} (${groups} group)`);
}

// --- $batch through the SDK's batch helpers, with dependsOn
{
  const batch = new BatchRequestContent();
  const mk = (i) =>
    new Request(`${url}/v1.0/users`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        accountEnabled: true,
        displayName: `Batch ${i}`,
        mailNickname: `batch${i}`,
        userPrincipalName: `batch${i}@canopy.test`,
        passwordProfile: { password: "Conf!ormance-123" },
      }),
    });
  // A serial chain, one of the dependency shapes the SDK accepts.
  for (let i = 0; i < 5; i++)
    batch.addRequest({ id: `c${i}`, request: mk(i), dependsOn: i ? [`c${i - 1}`] : undefined });
  batch.addRequest({
    id: "check",
    request: new Request(`${url}/v1.0/users?$filter=startswith(displayName,'Batch')`, { method: "GET" }),
    dependsOn: ["c4"],
  });
  const content = await batch.getContent();
  const res = await client.api("/$batch").post(content);
  const out = new BatchResponseContent(res);
  for (let i = 0; i < 5; i++) check(out.getResponseById(`c${i}`).status === 201, `batch create c${i}`);
  const chk = await out.getResponseById("check").json();
  check(chk.value.length === 5, "batch dependsOn saw the creates");
}

// --- delete, deletedItems, restore
{
  await client.api(`/users/${ids[3]}`).delete();
  const del = await client.api("/directory/deletedItems/microsoft.graph.user").get();
  check(del.value.some((u) => u.id === ids[3]), "deleted user listed");
  const restored = await client.api(`/directory/deletedItems/${ids[3]}/restore`).post({});
  check(restored.id === ids[3], "restore returns the user");
  const u = await client.api(`/users/${ids[3]}`).get();
  check(u.userPrincipalName === "conf3@canopy.test", "restored user readable");
}

// --- delta: full round, then only what changed
{
  let page = await client.api("/users/delta").select("displayName").top(10).get();
  let seen = 0;
  for (;;) {
    seen += page.value.length;
    if (page["@odata.nextLink"]) page = await client.api(page["@odata.nextLink"]).get();
    else break;
  }
  const deltaLink = page["@odata.deltaLink"];
  check(seen === N + 5 && deltaLink, `initial delta saw ${seen}`);
  await client.api(`/users/${ids[5]}`).patch({ displayName: "Renamed" });
  await client.api(`/users/${ids[6]}`).delete();
  const d = await client.api(deltaLink).get();
  const byId = Object.fromEntries(d.value.map((v) => [v.id, v]));
  check(d.value.length === 2, `delta has ${d.value.length} changes`);
  check(byId[ids[5]].displayName === "Renamed", "delta change");
  check(byId[ids[6]]["@removed"].reason === "changed", "delta soft delete");
}

// --- the SDK's retry handler honours 429 and 503 with Retry-After
{
  await admin("/_emulator/faults", { failNext: 2, failStatus: 429, retryAfter: "int" });
  const r = await client.api("/users").top(1).get();
  check(r.value.length === 1, "429 retried by the SDK");
  await admin("/_emulator/faults", { failNext: 1, failStatus: 503, retryAfter: "int" });
  const r2 = await client.api(`/users/${ids[1]}`).get();
  check(r2.id === ids[1], "503 retried by the SDK");
  const st = await admin("/_emulator/stats");
  check(st.byStatus["429"] >= 2 && st.byStatus["503"] >= 1, "faults were served");
}

// --- the state the emulator exposes agrees with what the SDK saw
{
  const state = await admin("/_emulator/state");
  const g = state.groups.find((x) => x.id === group.id);
  check(g && g.members.length === 22, "state members");
  check(state.deletedUsers.some((u) => u.id === ids[6]), "state deleted users");
}

// --- certificate credentials: MSAL signs the client assertion (RS256 with a
// SHA-1 x5t, PS256 with x5t#S256) against a second emulator.
if (process.env.CONF_CERT_URL) {
  const certUrl = process.env.CONF_CERT_URL;
  const pem = readFileSync(process.env.CONF_CERT_PEM, "utf8");
  const key = readFileSync(process.env.CONF_CERT_KEY, "utf8");
  const der = Buffer.from(pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, ""), "base64");
  const { createHash } = await import("node:crypto");
  const sha1 = createHash("sha1").update(der).digest("hex");
  const sha256 = createHash("sha256").update(der).digest("hex");
  for (const cert of [
    { thumbprint: sha1, privateKey: key },
    { thumbprintSha256: sha256, privateKey: key },
  ]) {
    const app = new ConfidentialClientApplication({
      auth: {
        clientId: process.env.CONF_CERT_CLIENT,
        authority: `${certUrl}/${process.env.CONF_CERT_TENANT}`,
        clientCertificate: cert,
        knownAuthorities: [new URL(certUrl).host],
      },
    });
    const r = await app.acquireTokenByClientCredential({ scopes: ["https://graph.microsoft.com/.default"] });
    const c = Client.initWithMiddleware({
      baseUrl: `${certUrl}/`,
      customHosts: new Set([new URL(certUrl).hostname]),
      authProvider: { getAccessToken: async () => r.accessToken },
    });
    const users = await c.api("/users").get();
    check(Array.isArray(users.value), `certificate credential (${cert.thumbprint ? "x5t" : "x5t#S256"})`);
    let err;
    try {
      await c.api("/users").post({ accountEnabled: true });
    } catch (e) {
      err = e;
    }
    check(err && err.statusCode === 403 && err.code === "Authorization_RequestDenied", "User.Read.All cannot write");
  }
}

console.log(`conformance: ${checks} checks passed`);
