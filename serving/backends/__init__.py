"""The model side of the server: the HF engine behind a micro-batcher (`batcher.HFBackend`), and vLLM's
async engine (`vllm.VLLMBackend`), both taking and returning the job types of `jobs`."""
