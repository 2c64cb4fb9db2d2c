// The official JavaScript SDK (@azure/keyvault-secrets) against the emulator: what a service
// written against Key Vault does, unchanged. Run by `tests/sdk_conformance.rs` with KV_URL (the
// vault, as https://127.0.0.1:PORT) and NODE_EXTRA_CA_CERTS (the emulator's CA). Prints one
// line per check; exits 1 on the first that fails.
import { SecretClient } from "@azure/keyvault-secrets";

// A credential of a few lines: the emulator accepts any bearer token.
const credential = {
  async getToken(scopes) {
    const s = Array.isArray(scopes) ? scopes : [scopes];
    if (s[0] !== "https://vault.azure.net/.default") throw new Error(`scope ${s}`);
    return { token: "emulator-token", expiresOnTimestamp: Date.now() + 3600_000 };
  },
};

function check(what, ok) {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) process.exit(1);
}

const client = new SecretClient(process.env.KV_URL, credential, {
  // The vault is reached through 127.0.0.1:PORT, not a host under vault.azure.net.
  disableChallengeResourceVerification: true,
  retryOptions: { maxRetries: 0 },
});

const first = await client.setSecret("js-secret", "value-1", { contentType: "text/plain" });
check("set answers the value and a version", first.value === "value-1" && !!first.properties.version);
check("get", (await client.getSecret("js-secret")).value === "value-1");
const second = await client.setSecret("js-secret", "value-2");
check("a new version", second.properties.version !== first.properties.version);
check(
  "get a version",
  (await client.getSecret("js-secret", { version: first.properties.version })).value === "value-1",
);
const updated = await client.updateSecretProperties("js-secret", second.properties.version, {
  tags: { team: "payments" },
});
check(
  "update reports the version it updated",
  updated.version === second.properties.version && updated.tags.team === "payments",
);
for (let i = 0; i < 5; i++) await client.setSecret(`js-page-${i}`, `p${i}`);
const names = [];
for await (const page of client.listPropertiesOfSecrets().byPage({ maxPageSize: 2 })) {
  for (const p of page) names.push(p.name);
}
check(
  "a paged listing (nextLink) returns every secret once",
  new Set(names).size === names.length && names.includes("js-secret") && names.includes("js-page-4"),
);
const versions = [];
for await (const v of client.listPropertiesOfSecretVersions("js-secret")) versions.push(v);
check("versions", versions.length === 2);
try {
  await client.getSecret("js-missing");
  check("404 SecretNotFound", false);
} catch (e) {
  check("404 SecretNotFound", e.statusCode === 404 && e.code === "SecretNotFound");
}
try {
  await client.setSecret("bad name!", "x");
  check("400 BadParameter", false);
} catch (e) {
  check("400 BadParameter", e.statusCode === 400);
}
const poller = await client.beginDeleteSecret("js-page-0");
const deleted = await poller.pollUntilDone();
check("delete", deleted.name === "js-page-0" && !!deleted.recoveryId);
const rec = await client.beginRecoverDeletedSecret("js-page-0");
await rec.pollUntilDone();
check("recover", (await client.getSecret("js-page-0")).value === "p0");
console.log("js sdk: all checks passed");
