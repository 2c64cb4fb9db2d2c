"""The official Python SDK (azure-keyvault-secrets) against the agent's Key Vault API, with
nothing changed but the vault URL and the credential: run by `tests/vault_api.rs` with KV_URL
(the agent's https://127.0.0.1:PORT), KV_CA (the agent's CA) and KV_TOKEN (the bearer: the agent's token, or an
Entra ID token in mode `entra`),
and one of the modes below as its argument. Prints one line per check; exits 1 on the first
that fails."""

import os
import sys
import time

from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.keyvault.secrets import SecretClient


class AgentToken:
    """A static-token credential: the agent's token as the bearer."""

    def __init__(self, token):
        self.token = token

    def get_token(self, *scopes, **kwargs):
        return AccessToken(self.token, int(time.time()) + 3600)


def check(what, ok):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok and sys.exc_info()[1] is not None:
        print(repr(sys.exc_info()[1])[:300], flush=True)
    if not ok:
        sys.exit(1)


def typed_ok(s):
    p = s.properties
    return (
        s.value == "typed-value"
        and p.content_type == "text/plain"
        and p.tags == {"owner": "billing"}
        and p.expires_on is not None
        and p.expires_on.year == 2096
        and p.created_on is not None
        and p.enabled is True
    )


mode = sys.argv[1]
client = SecretClient(
    os.environ["KV_URL"],
    AgentToken(os.environ["KV_TOKEN"]),
    verify_challenge_resource=False,
    connection_verify=os.environ["KV_CA"],
    retry_total=0,
)

if mode == "healthy":
    s = client.get_secret("db-password")
    check("get", s.value == "db-value-1" and bool(s.properties.version))
    check("get a version", client.get_secret("db-password", s.properties.version).value == "db-value-1")
    names = [p.name for p in client.list_properties_of_secrets(max_page_size=2)]
    check("a paged listing through nextLink", sorted(names) == ["api-key", "db-password", "tls-key", "typed-secret"])
    client.get_secret("api-key")
    patched = client.update_secret_properties("api-key", content_type="text/x-key", tags={"rotated-by": "ops"})
    check("a PATCH of properties", patched.content_type == "text/x-key" and patched.tags == {"rotated-by": "ops"})
    again = client.get_secret("api-key")
    check(
        "the held value carries the new properties",
        again.value == "k" and again.properties.content_type == "text/x-key",
    )
    typed = client.get_secret("typed-secret")
    check("the vault's properties: content type, tags, exp, created", typed_ok(typed))
    written = client.set_secret("written-by-sdk", "w-value")
    check("a write through the client", written.value == "w-value" and bool(written.properties.version))
    check("the write reads back", client.get_secret("written-by-sdk").value == "w-value")
    second = client.set_secret("written-by-sdk", "w-value-2")
    versions = [p.version for p in client.list_properties_of_secret_versions("written-by-sdk", max_page_size=1)]
    check(
        "a secret's versions, paged through nextLink",
        sorted(versions) == sorted([written.properties.version, second.properties.version]),
    )
    try:
        client.get_secret("no-such-secret")
        check("404 SecretNotFound", False)
    except ResourceNotFoundError as e:
        check("404 SecretNotFound", e.status_code == 404)
    try:
        client.get_deleted_secret("db-password")
        check("what the agent does not serve: 501", False)
    except HttpResponseError as e:
        check("what the agent does not serve: 501", e.status_code == 501)
elif mode == "primary-down":
    check("the primary refused: read from the secondary", client.get_secret("db-password").value == "db-value-1")
elif mode in ("all-down", "all-down-typed"):
    check("every vault down: the held value", client.get_secret("db-password").value == "db-value-1")
    if mode == "all-down-typed":
        check("every vault down: the held value keeps its properties", typed_ok(client.get_secret("typed-secret")))
        try:
            client.update_secret_properties("api-key", content_type="never-sent")
            check("a PATCH is refused (403 read-only, or 503)", False)
        except HttpResponseError as e:
            check("a PATCH is refused (403 read-only, or 503)", e.status_code in (403, 503))
    try:
        client.set_secret("db-password", "never-sent")
        check("a write is refused (403 read-only, or 503 when the primary could not be reached)", False)
    except HttpResponseError as e:
        check(
            "a write is refused (403 read-only, or 503 when the primary could not be reached)",
            e.status_code in (403, 503),
        )
elif mode == "entra":
    check("an Entra ID token: read", client.get_secret("db-password").value == "db-value-1")
    try:
        client.get_secret("api-key")
        check("a secret outside the caller's globs: 403", False)
    except HttpResponseError as e:
        check("a secret outside the caller's globs: 403", e.status_code == 403)
    names = [p.name for p in client.list_properties_of_secrets()]
    check("the listing holds what the caller may read", names == ["db-password"])
elif mode == "wrong-token":
    try:
        client.get_secret("db-password")
        check("a wrong token: 401", False)
    except ClientAuthenticationError as e:
        check("a wrong token: 401", e.status_code == 401)
else:
    check(f"mode {mode}", False)
print("agent vault api: all checks passed")
