"""The embedded model server: small GGUF models run by llama.cpp, served on loopback with an
OpenAI-compatible API so the gateway reaches them like any other upstream (the `local` adapter).

- `catalog`: where the model files come from (PyPI packages, operator drops) and what each can do,
- `pool`: llama.cpp instances per model, a core budget shared by all of them, a bounded queue,
- `engine`: one generation on one instance, in a worker thread,
- `server`: the ASGI app (`asgi.application`), served by daphne (`manage.py serve_local_llm`).
"""
