"""Any server speaking the OpenAI wire format: OpenAI, vLLM, Ollama, DeepSeek, Hunyuan, ...

`base_url` includes the version prefix, as with the OpenAI SDK: https://api.example.com/v1.
"""

from __future__ import annotations

from models_registry.providers.base import ConnectionCheckFailed, ProviderAdapter, describe_status


class OpenAICompatibleAdapter(ProviderAdapter):
    kind = "openai_compatible"

    def headers(self) -> dict[str, str]:
        key = self.secrets.get("api_key", "")
        return {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def base_url(self) -> str:
        return self.provider.base_url.rstrip("/")

    async def _probe(self) -> str:
        if not self.base_url:
            raise ConnectionCheckFailed("No base URL is set.")
        response = await self.client.get(f"{self.base_url}/models", headers=self.headers(), timeout=self.timeout)
        if response.status_code != 200:
            raise ConnectionCheckFailed(describe_status(response).capitalize() + ".")
        try:
            models = response.json().get("data", [])
        except ValueError:
            raise ConnectionCheckFailed("The upstream answered 200 but not with JSON.") from None
        return f"Connected; the upstream lists {len(models)} model(s)."
