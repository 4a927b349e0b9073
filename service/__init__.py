"""The loraswap inference service: FastAPI app, scheduler and multi-adapter engine."""
