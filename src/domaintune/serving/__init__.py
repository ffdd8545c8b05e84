"""An OpenAI-compatible server: routes (app), models and batching (engine), keys and limits (auth),
Prometheus metrics (metrics), what to serve (sources), and the hand-over to vLLM (vllm)."""
