"""The model side of the server: the HF engine with continuous batching (`hf_backend.HFBackend`), and vLLM's
async engine (`vllm.VLLMBackend`), both taking and returning the job types of `jobs`."""
