"""The HTTP layer: the FastAPI app and its wiring, middleware, forms, problem details and routes. It parses
requests and renders results; the rules live in ``app.speakers``."""
