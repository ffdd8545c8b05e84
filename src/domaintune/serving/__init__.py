"""An OpenAI-compatible server: the app and its parts (app, state, schemas, middleware, error_handlers, accounting,
generation_routes, generation_replies, encoder_routes), models and batching (engine, encoders), keys and limits (auth),
Prometheus metrics (prometheus), what to serve (sources), and the hand-over to vLLM (vllm)."""
