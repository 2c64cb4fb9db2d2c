"""The official Python SDK (azure-keyvault-secrets) against the emulator: what a service written
against Key Vault does, unchanged. Run by `tests/sdk_conformance.rs` with KV_URL (the vault, as
https://127.0.0.1:PORT) and KV_CA (the emulator's CA, PEM). Prints one line per check; exits 1
on the first that fails."""

import os
import sys
import time

from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.secrets import SecretClient


class StaticToken:
    """A credential of a few lines: the emulator accepts any bearer token."""

    def get_token(self, *scopes, **kwargs):
        assert scopes == ("https://vault.azure.net/.default",), scopes
        return AccessToken("emulator-token", int(time.time()) + 3600)


def check(what, ok):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        sys.exit(1)


client = SecretClient(
    os.environ["KV_URL"],
    StaticToken(),
    # The vault is reached through 127.0.0.1:PORT, not a host under vault.azure.net.
    verify_challenge_resource=False,
    connection_verify=os.environ["KV_CA"],
    retry_total=0,
)

first = client.set_secret("py-secret", "value-1", content_type="text/plain")
check("set answers the value and a version", first.value == "value-1" and bool(first.properties.version))
check("get", client.get_secret("py-secret").value == "value-1")
second = client.set_secret("py-secret", "value-2")
check("a new version", second.properties.version != first.properties.version)
check("get a version", client.get_secret("py-secret", first.properties.version).value == "value-1")
updated = client.update_secret_properties("py-secret", tags={"team": "payments"}, enabled=True)
check(
    "update reports the version it updated",
    updated.version == second.properties.version and updated.tags == {"team": "payments"},
)
for i in range(5):
    client.set_secret(f"py-page-{i}", f"p{i}")
names = [p.name for p in client.list_properties_of_secrets(max_page_size=2)]
check("a paged listing (nextLink) returns every secret once", sorted(names) == sorted(set(names)) and {"py-secret", "py-page-4"} <= set(names))
versions = list(client.list_properties_of_secret_versions("py-secret"))
check("versions", len(versions) == 2)
try:
    client.get_secret("py-missing")
    check("404 SecretNotFound", False)
except ResourceNotFoundError as e:
    check("404 SecretNotFound", e.status_code == 404 and "SecretNotFound" in str(e))
try:
    client.set_secret("bad name!", "x")
    check("400 BadParameter", False)
except HttpResponseError as e:
    check("400 BadParameter", e.status_code == 400)
deleted = client.begin_delete_secret("py-page-0").result()
check("delete", deleted.name == "py-page-0" and deleted.recovery_id is not None)
try:
    client.get_secret("py-page-0")
    check("a deleted secret is not served", False)
except ResourceNotFoundError:
    check("a deleted secret is not served", True)
recovered = client.begin_recover_deleted_secret("py-page-0").result()
check("recover", recovered.name == "py-page-0" and client.get_secret("py-page-0").value == "p0")
print("python sdk: all checks passed")
