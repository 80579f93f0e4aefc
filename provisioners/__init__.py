"""The GPU LLM machine deployer's library.

Everything the behave steps do lives here: catalog loading, the Proxmox VE VM lifecycle,
the guest components (driver, CUDA, vLLM, Ollama), verification, diagnosis and reports.
"""
