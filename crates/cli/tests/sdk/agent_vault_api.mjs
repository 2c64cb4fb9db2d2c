// The official JavaScript SDK (@azure/keyvault-secrets) against the agent's Key Vault API,
// unchanged but for the vault URL and a static-token credential: run by `tests/vault_api.rs`
// with KV_URL, KV_TOKEN and NODE_EXTRA_CA_CERTS (the agent's CA). Prints one line per check;
// exits 1 on the first that fails.
import { SecretClient } from "@azure/keyvault-secrets";

const credential = {
  async getToken() {
    return { token: process.env.KV_TOKEN, expiresOnTimestamp: Date.now() + 3600_000 };
  },
};

function check(what, ok) {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) process.exit(1);
}

const client = new SecretClient(process.env.KV_URL, credential, {
  disableChallengeResourceVerification: true,
  retryOptions: { maxRetries: 0 },
});

const s = await client.getSecret("db-password");
check("get", s.value === "db-value-1" && !!s.properties.version);
check(
  "get a version",
  (await client.getSecret("db-password", { version: s.properties.version })).value === "db-value-1",
);
const names = [];
for await (const page of client.listPropertiesOfSecrets().byPage({ maxPageSize: 2 })) {
  for (const p of page) names.push(p.name);
}
check("a paged listing through nextLink", names.includes("db-password") && new Set(names).size === names.length);
const w = await client.setSecret("written-by-js", "js-value");
check("a write through the client", w.value === "js-value" && !!w.properties.version);
try {
  await client.getSecret("no-such-secret");
  check("404 SecretNotFound", false);
} catch (e) {
  check("404 SecretNotFound", e.statusCode === 404 && e.code === "SecretNotFound");
}
console.log("agent vault api (js): all checks passed");
