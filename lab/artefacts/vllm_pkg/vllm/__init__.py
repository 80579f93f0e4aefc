"""vLLM of the embedded lab: a stdlib-only stand-in for the real ``vllm`` distribution.

Built into a wheel by ``lab/artefacts/pipindex.py`` and served from the lab's PEP 503 index. Only
``vllm serve`` exists (see ``vllm.entrypoints.cli.main``). Not the real vLLM: it loads no model.
"""
__version__ = "@@VLLM_VERSION@@"
