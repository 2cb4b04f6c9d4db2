"""The admin port: /health, /metrics, the HTTP/JSON API, the dashboard; the only HTTP server."""
