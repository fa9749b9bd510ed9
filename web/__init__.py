"""The Litestar app: console, REST API, webhooks and health checks."""
