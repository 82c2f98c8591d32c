"""Huawei Pangu: IAM token (password flow) or AK/SK signing, project-scoped inference paths."""

from __future__ import annotations

from models_registry.providers.base import ConnectionCheckFailed, ProviderAdapter, describe_status


class PanguAdapter(ProviderAdapter):
    kind = "pangu"

    def iam_password_body(self) -> dict[str, object]:
        scope_name = self.config.get("iam_project", "")
        return {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": self.config.get("iam_username", ""),
                            "password": self.secrets.get("iam_password", ""),
                            "domain": {"name": self.config.get("iam_domain", "")},
                        }
                    },
                },
                "scope": {"project": {"name": scope_name}}
                if scope_name
                else {"domain": {"name": self.config.get("iam_domain", "")}},
            }
        }

    async def fetch_token(self) -> str:
        endpoint = self.config.get("iam_endpoint", "").rstrip("/")
        response = await self.client.post(
            f"{endpoint}/v3/auth/tokens", json=self.iam_password_body(), timeout=self.timeout
        )
        token = response.headers.get("X-Subject-Token")
        if response.status_code != 201 or not token:
            raise ConnectionCheckFailed(f"IAM login failed: {describe_status(response)}.")
        return token

    async def _probe(self) -> str:
        base = self.provider.base_url.rstrip("/")
        if not base:
            raise ConnectionCheckFailed("No base URL (the Pangu endpoint) is set.")
        if not self.config.get("project_id"):
            raise ConnectionCheckFailed("No project id is set: Pangu inference URLs need one.")
        parts = []
        if self.config.get("iam_endpoint") and self.secrets.get("iam_password"):
            await self.fetch_token()
            parts.append("IAM token obtained")
        elif not (self.secrets.get("api_key") or (self.config.get("access_key") and self.secrets.get("secret_key"))):
            raise ConnectionCheckFailed("No credentials: set an IAM user and password, a token, or AK/SK.")
        response = await self.client.get(base + "/", timeout=self.timeout)
        if response.status_code >= 500:
            raise ConnectionCheckFailed(f"The endpoint is unhealthy: {describe_status(response)}.")
        parts.append(f"endpoint reachable (HTTP {response.status_code})")
        return "; ".join(parts).capitalize() + "."
